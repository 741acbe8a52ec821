"""Silences and maintenance windows: label matchers plus a time range during which matching alerts
notify nobody (they still change state, are written to InfluxDB and show in `alerts list`).

Silences come from the configuration (`alerts.silences`, read-only) or from the CLI / HTTP API
(persisted with the alert state). Maintenance windows (`alerts.maintenance_windows`) recur weekly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector.alerts.alert import iso
from collector.alerts.config import WEEKDAYS, MaintenanceWindowConfig, SilenceConfig
from collector.alerts.matchers import Matcher, matches_all, parse_matchers
from collector.formats import short_duration

# Expired API silences stay listed this long, then are forgotten.
EXPIRED_RETENTION = 24 * 3600.0


class SilenceError(ValueError):
    """A silence that cannot be added or removed."""


def check_length(starts_at: float, ends_at: float, max_duration: float) -> None:
    """Refuse a run-time silence longer than `alerts.max_silence_duration`: a silence set through the
    API (by a person, or by whoever got hold of the token) must run out by itself. Raises SilenceError."""
    if ends_at - starts_at > max_duration:
        raise SilenceError(f"a silence may last at most {short_duration(max_duration)} "
                           f"(alerts.max_silence_duration); this one would last {short_duration(ends_at - starts_at)}")


@dataclass(slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""
    created_at: float = 0.0
    source: str = "api"  # api or config

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def status(self, now: float) -> str:
        return "pending" if now < self.starts_at else "active" if now < self.ends_at else "expired"

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "matchers": [str(m) for m in self.matchers], "starts_at": self.starts_at,
            "ends_at": self.ends_at, "comment": self.comment, "created_by": self.created_by,
            "created_at": self.created_at, "source": self.source,
        }
        if now is not None:
            out["status"] = self.status(now)
            out["starts_at_iso"], out["ends_at_iso"] = iso(self.starts_at), iso(self.ends_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Silence:
        return cls(id=str(data["id"]), matchers=parse_matchers(data["matchers"]),
                   starts_at=float(data["starts_at"]), ends_at=float(data["ends_at"]),
                   comment=str(data.get("comment", "")), created_by=str(data.get("created_by", "")),
                   created_at=float(data.get("created_at", 0.0)), source=str(data.get("source", "api")))


@dataclass(slots=True)
class MaintenanceWindow:
    id: str
    name: str
    matchers: tuple[Matcher, ...]
    weekdays: frozenset[int]
    start: dt.time
    end: dt.time
    zone: zoneinfo.ZoneInfo
    comment: str = ""

    def active(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, self.zone)
        t, day = local.time(), local.weekday()
        if self.start < self.end:
            return day in self.weekdays and self.start <= t < self.end
        # Past midnight: the window belongs to the weekday it starts on.
        return (day in self.weekdays and t >= self.start) or ((day - 1) % 7 in self.weekdays and t < self.end)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "matchers": [str(m) for m in self.matchers],
            "weekdays": [WEEKDAYS[d] for d in sorted(self.weekdays)], "start": self.start.isoformat("minutes"),
            "end": self.end.isoformat("minutes"), "timezone": str(self.zone.key), "comment": self.comment,
            "source": "maintenance_window",
        }
        if now is not None:
            out["status"] = "active" if self.active(now) else "inactive"
        return out


def _config_id(prefix: str, payload: str) -> str:
    return f"{prefix}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


class SilenceBook:
    """Every silence and maintenance window, and the question they answer: is this alert muted now?"""

    def __init__(self, silences: Sequence[SilenceConfig] = (),
                 windows: Sequence[MaintenanceWindowConfig] = ()) -> None:
        self.api: dict[str, Silence] = {}
        self.configured: list[Silence] = []
        self.windows: list[MaintenanceWindow] = []
        self.configure(silences, windows)

    def configure(self, silences: Sequence[SilenceConfig], windows: Sequence[MaintenanceWindowConfig]) -> None:
        self.configured = []
        for cfg in silences:
            starts = cfg.starts_at.timestamp() if cfg.starts_at else 0.0
            ends = cfg.ends_at.timestamp()
            sid = _config_id("config", f"{cfg.matchers}|{starts}|{ends}")
            self.configured.append(Silence(sid, parse_matchers(cfg.matchers), starts, ends, cfg.comment,
                                           cfg.created_by, 0.0, "config"))
        self.windows = []
        for w in windows:
            wid = _config_id("window", f"{w.name}|{w.matchers}|{w.weekdays}|{w.start}|{w.end}|{w.timezone}")
            self.windows.append(MaintenanceWindow(wid, w.name, parse_matchers(w.matchers),
                                                  frozenset(WEEKDAYS.index(d) for d in w.weekdays), w.start,
                                                  w.end, zoneinfo.ZoneInfo(w.timezone), w.comment))

    def __bool__(self) -> bool:
        return bool(self.api or self.configured or self.windows)

    def silenced_by(self, labels: Mapping[str, str], now: float) -> str | None:
        """The id of a silence or window muting `labels` now, or None."""
        for s in self.configured:
            if s.active(now) and matches_all(s.matchers, labels):
                return s.id
        for s in self.api.values():
            if s.active(now) and matches_all(s.matchers, labels):
                return s.id
        for w in self.windows:
            if matches_all(w.matchers, labels) and w.active(now):
                return w.id
        return None

    def add(self, matchers: Iterable[str], starts_at: float, ends_at: float, comment: str, created_by: str,
            now: float) -> str:
        try:
            parsed = parse_matchers(list(matchers))
        except ValueError as exc:
            raise SilenceError(str(exc)) from None
        if not parsed:
            raise SilenceError("a silence needs at least one matcher")
        if ends_at <= starts_at:
            raise SilenceError("ends_at must be after starts_at")
        if ends_at <= now:
            raise SilenceError("the silence would already be over")
        sid = secrets.token_hex(6)
        self.api[sid] = Silence(sid, parsed, starts_at, ends_at, comment, created_by, now, "api")
        return sid

    def remove(self, sid: str) -> None:
        if sid in self.api:
            del self.api[sid]
            return
        if any(s.id == sid for s in self.configured) or any(w.id == sid for w in self.windows):
            raise SilenceError(f"silence {sid} is defined in the configuration: remove it there")
        raise KeyError(sid)

    def expire(self, now: float) -> bool:
        """Forget API silences expired for a day; True when something was removed."""
        old = [sid for sid, s in self.api.items() if now - s.ends_at > EXPIRED_RETENTION]
        for sid in old:
            del self.api[sid]
        return bool(old)

    def describe(self, now: float) -> list[dict[str, Any]]:
        out = [s.to_json(now) for s in self.configured]
        out += [s.to_json(now) for s in sorted(self.api.values(), key=lambda s: s.starts_at)]
        out += [w.to_json(now) for w in self.windows]
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.api.values()]

    def restore(self, data: Iterable[Mapping[str, Any]]) -> None:
        for item in data:
            try:
                silence = Silence.from_json(item)
            except (KeyError, TypeError, ValueError):
                continue
            self.api[silence.id] = silence
