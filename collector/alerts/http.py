"""The alerting part of the collector's loopback HTTP API (mounted by the daemon's server):

- `GET /api/alerts[?state=firing|pending]` -> `{"alerts": [...]}` (see `Alert.public`)
- `GET /api/silences` -> `{"silences": [...]}` (API and configured silences, maintenance windows)
- `POST /api/silences` with `{"matchers": ["customer=acme"], "ends_at" | "duration", "starts_at"?,
  "comment", "created_by"}` -> 201 `{"id": ...}`; times are Unix seconds or RFC 3339, durations like
  `2h` or seconds
- `DELETE /api/silences/{id}` -> 204, 404 unknown, 409 defined in the configuration

Who may call them is the server's business (`collector.telemetry.ApiGuard`: the Host and Origin
checks, the API token for changes). Here: a silence lasts at most `alerts.max_silence_duration`, and
every change is logged at warning with the peer's address (the audit trail of who muted what).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from collector.alerts.alert import iso
from collector.alerts.silences import SilenceError, check_length
from collector.configtypes import parse_duration

if TYPE_CHECKING:
    from collector.alerts.engine import AlertEngine

log = structlog.get_logger("collector.alerts.http")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


def parse_time(value: Any) -> float:
    """Unix seconds or an RFC 3339 / ISO 8601 time (naive means UTC). Raises ValueError."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a time: {value!r} (use Unix seconds or 2025-01-31T18:00:00+08:00)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    raise ValueError(f"not a time: {value!r}")


def silence_times(body: dict[str, Any], now: float) -> tuple[float, float]:
    """(starts_at, ends_at) of a silence request: `ends_at`, or `duration` from the start."""
    starts = parse_time(body["starts_at"]) if body.get("starts_at") not in (None, "") else now
    if body.get("ends_at") not in (None, ""):
        return starts, parse_time(body["ends_at"])
    if body.get("duration") not in (None, ""):
        return starts, starts + parse_duration(body["duration"])
    raise ValueError("give ends_at or duration")


def alert_routes(engine: AlertEngine) -> list[web.RouteDef]:
    """The routes to mount on the collector's HTTP application."""

    async def list_alerts(request: web.Request) -> web.Response:
        state = request.query.get("state")
        alerts = engine.active()
        if state:
            alerts = [a for a in alerts if a["state"] == state]
        return _json({"alerts": alerts})

    async def list_silences(_request: web.Request) -> web.Response:
        return _json({"silences": engine.list_silences()})

    async def add_silence(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            return _error("the body must be a JSON object")
        if not isinstance(body, dict):
            return _error("the body must be a JSON object")
        matchers = body.get("matchers")
        if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
            return _error("matchers must be a list of strings like customer=acme")
        comment, created_by = str(body.get("comment") or ""), str(body.get("created_by") or "")
        try:
            starts, ends = silence_times(body, engine.clock())
            check_length(starts, ends, engine.config.max_silence_duration)
            when = {"starts_at": iso(starts), "ends_at": iso(ends)}
            sid = engine.add_silence(matchers, starts, ends, comment, created_by)
        except (OverflowError, OSError):
            return _error("starts_at or ends_at is out of range")
        except (ValueError, SilenceError) as exc:
            return _error(str(exc))
        log.warning("silence added through the API", peer=request.remote, id=sid, matchers=matchers, **when,
                    created_by=created_by, comment=comment)
        return _json({"id": sid}, 201)

    async def remove_silence(request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        try:
            engine.remove_silence(sid)
        except SilenceError as exc:
            return _error(str(exc), 409)
        except KeyError:
            return _error(f"no silence {sid}", 404)
        log.warning("silence removed through the API", peer=request.remote, id=sid)
        return web.Response(status=204)

    return [
        web.get("/api/alerts", list_alerts),
        web.get("/api/silences", list_silences),
        web.post("/api/silences", add_silence),
        web.delete("/api/silences/{id}", remove_silence),
    ]
