"""Replay: a captured folder of a platform's raw answers served as the platform, by device number and
ICCID, so a user's real answers become a test double and a demo (`iot-collector simulate --replay DIR`).

The folder (written by `iot-collector capture`, format 1; docs/simulator.md):

    DIR/manifest.json              {"format": 1, "captured_at": <unix s>, "platform": {"flow_unit",
                                    "timezone", "api_version"}, "endpoints": {"<endpoint>": {"path",
                                    "param", "batch_limit"}}, "pseudonymised": bool}
    DIR/<endpoint>/<id>.json       the whole envelope answered for one device (device endpoints, id =
                                   device number) or one card (card endpoints, id = ICCID: the card's
                                   record wrapped in an envelope whose data is a one-record list)
    DIR/account_assets/account.json

A device answer is served as captured (code, message and data), with `timestamp` and `traceID`
renewed; an unknown device gets the not-found code. A card request gets the captured records of the
cards it names, in the order asked; unknown cards are left out. Requests are checked like the live
simulator's (appID, timestamp, signature with the configured recipe, batch limits). Paths are the
manifest's, with the configuration's `platform.endpoints` on top; an endpoint the folder has no
answers for answers 404, like an unknown path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.simulator.admin import AdminApi, AdminProblem
from collector.simulator.contract import (
    CARD_ENDPOINTS,
    CODE_OK,
    CODE_UNKNOWN_DEVICE,
    DEFAULT_ROUTES,
    DEVICE_ENDPOINTS,
    OK_MESSAGE,
    Endpoint,
    Route,
)
from collector.simulator.faults import FaultConfig
from collector.simulator.server import ApiFailure, Captured, PlatformServer
from collector.simulator.settings import PlatformSettings

FORMAT = 1
MANIFEST = "manifest.json"
ACCOUNT_ID = "account"


class CaptureError(ValueError):
    """A folder that is not a usable capture; the message names the file and what is wrong."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaptureError(f"{path}: not JSON ({exc})") from None


@dataclass
class Capture:
    """A capture folder, loaded and checked: per endpoint, the envelope captured for each id."""

    root: Path
    captured_at: float | None = None
    platform: dict[str, Any] = field(default_factory=dict)
    routes: dict[Endpoint, Route] = field(default_factory=dict)
    pseudonymised: bool = False
    answers: dict[Endpoint, dict[str, dict[str, Any]]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # endpoint names this simulator does not know

    @classmethod
    def load(cls, root: str | Path) -> Capture:
        """Read `root`. Raises CaptureError for a folder that is not a capture in the agreed layout."""
        root = Path(root)
        if not root.is_dir():
            raise CaptureError(f"{root}: not a folder")
        manifest = _read_json(root / MANIFEST) if (root / MANIFEST).exists() else None
        if not isinstance(manifest, dict):
            raise CaptureError(f"{root / MANIFEST}: missing or not a JSON object: {root} is not a capture folder")
        if manifest.get("format") != FORMAT:
            raise CaptureError(f"{root / MANIFEST}: format {manifest.get('format')!r} is not supported "
                               f"(this simulator replays format {FORMAT})")
        capture = cls(root, pseudonymised=bool(manifest.get("pseudonymised", False)))
        captured_at = manifest.get("captured_at")
        capture.captured_at = float(captured_at) if isinstance(captured_at, int | float) else None
        platform = manifest.get("platform")
        capture.platform = dict(platform) if isinstance(platform, dict) else {}
        capture.routes = capture._routes(manifest.get("endpoints"))
        for endpoint in Endpoint:
            folder = root / endpoint.value
            if folder.is_dir():
                capture.answers[endpoint] = {path.stem: capture._envelope(endpoint, path)
                                             for path in sorted(folder.glob("*.json"))}
        if not any(capture.answers.values()):
            raise CaptureError(f"{root}: no captured answers (expected <endpoint>/<id>.json files)")
        return capture

    def _routes(self, table: Any) -> dict[Endpoint, Route]:
        routes = dict(DEFAULT_ROUTES)
        if table is None:
            return routes
        if not isinstance(table, dict):
            raise CaptureError(f"{self.root / MANIFEST}: endpoints must be an object")
        for name, spec in table.items():
            if name not in Endpoint.__members__.values():
                self.ignored.append(name)
                continue
            endpoint = Endpoint(name)
            default = routes[endpoint]
            if not isinstance(spec, dict):
                raise CaptureError(f"{self.root / MANIFEST}: endpoints.{name} must be an object")
            path, param, limit = spec.get("path", default.path), spec.get("param", default.param), \
                spec.get("batch_limit", default.batch_limit)
            if not (isinstance(path, str) and path.startswith("/") and isinstance(param, str)
                    and isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0):
                raise CaptureError(f"{self.root / MANIFEST}: endpoints.{name}: need a path starting with '/', "
                                   f"a param and a batch_limit >= 0, got {spec!r}")
            routes[endpoint] = Route(path, param, limit)
        return routes

    def _envelope(self, endpoint: Endpoint, path: Path) -> dict[str, Any]:
        envelope = _read_json(path)
        if not isinstance(envelope, dict) or "code" not in envelope:
            raise CaptureError(f"{path}: not an envelope (a JSON object with a code)")
        if endpoint in CARD_ENDPOINTS and envelope.get("code") in (0, "0"):
            self._records(envelope.get("data"), path)
        return envelope

    @staticmethod
    def _records(data: Any, path: Path | None = None) -> tuple[str, list[Any]]:
        """(the key the records sit under, "" for a bare list; the records) of a card envelope's data."""
        if data is None:
            return "", []
        if isinstance(data, list):
            return "", data
        if isinstance(data, dict):
            lists = [(key, value) for key, value in data.items() if isinstance(value, list)]
            if len(lists) == 1:
                return lists[0]
        raise CaptureError(f"{path}: data of a card answer must be a list of records")

    def records(self, data: Any) -> tuple[str, list[Any]]:
        return self._records(data)

    def device_numbers(self) -> list[str]:
        return sorted({no for e in DEVICE_ENDPOINTS for no in self.answers.get(e, {})})

    def iccids_of(self, device_no: str) -> list[str]:
        """The ICCIDs a captured device answer lists (`data.sims[].iccid`)."""
        for endpoint in (Endpoint.DEVICE_FLOW, Endpoint.DEVICE_INFO):
            envelope = self.answers.get(endpoint, {}).get(device_no)
            data = envelope.get("data") if envelope else None
            sims = data.get("sims") if isinstance(data, dict) else None
            if isinstance(sims, list):
                return [str(s["iccid"]) for s in sims if isinstance(s, dict) and s.get("iccid")]
        return []

    def iccids(self) -> list[str]:
        found = {i for no in self.device_numbers() for i in self.iccids_of(no)}
        found.update(i for e in CARD_ENDPOINTS for i in self.answers.get(e, {}))
        return sorted(found)


class ReplayAdmin(AdminApi):
    server: ReplayServer

    def more(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        capture = self.server.capture
        if (method, parts) == ("GET", ["inventory"]):
            devices = [{"deviceNo": no, "iccids": capture.iccids_of(no)} for no in capture.device_numbers()]
            return {"devices": devices, "count": len(devices), "cards": capture.iccids()}
        if parts[:1] in (["devices"], ["sims"], ["time"], ["account"]):
            raise AdminProblem(404, "a replayed capture serves its answers as captured: "
                                    f"no {method} /_sim/{'/'.join(parts)}")
        return super().more(method, parts, body)


class ReplayServer(PlatformServer):
    """Serves a `Capture` through the platform's request path (see the module docstring)."""

    def __init__(self, capture: Capture | str | Path, platform: PlatformSettings | object | None = None,
                 faults: FaultConfig | None = None, *, seed: int = 1) -> None:
        self.capture = capture if isinstance(capture, Capture) else Capture.load(capture)
        super().__init__(platform, faults, seed=seed, routes=self.capture.routes)

    def served(self) -> frozenset[Endpoint]:
        return frozenset(e for e, answers in self.capture.answers.items() if answers)

    def admin_api(self) -> AdminApi:
        return ReplayAdmin(self)

    def device_numbers(self) -> list[str]:
        return self.capture.device_numbers()

    def iccids(self) -> list[str]:
        return self.capture.iccids()

    def state(self) -> dict[str, Any]:
        capture = self.capture
        return {"replay": str(capture.root), "captured_at": capture.captured_at, "platform": capture.platform,
                "pseudonymised": capture.pseudonymised,
                "answers": {e.value: len(a) for e, a in capture.answers.items()},
                "devices": len(capture.device_numbers()), "sims": len(capture.iccids()), **super().state()}

    def answer(self, endpoint: Endpoint, form: dict[str, str], route: Route) -> Any:
        answers = self.capture.answers[endpoint]
        if endpoint in DEVICE_ENDPOINTS:
            envelope = answers.get(self.device_id(form, route))
            if envelope is None:
                raise ApiFailure(CODE_UNKNOWN_DEVICE, "设备不存在", "unknown_device")
            return Captured(envelope)
        if endpoint == Endpoint.ACCOUNT_ASSETS:
            envelope = answers.get(ACCOUNT_ID)
            if envelope is None:
                raise ApiFailure(CODE_UNKNOWN_DEVICE, "账户不存在", "unknown_device")
            return Captured(envelope)
        if endpoint == Endpoint.CARD_MONTH_USAGE:
            self.month(form)
        key, rows, message = "", [], OK_MESSAGE
        for iccid in self.card_ids(form, route, endpoint):
            envelope = answers.get(iccid)
            if envelope is None or envelope.get("code") not in (CODE_OK, "0"):
                continue
            key, records = self.capture.records(envelope.get("data"))
            rows.extend(records)
            message = envelope.get("message", message)
        return Captured({"code": CODE_OK, "message": message, "data": {key: rows} if key else rows})
