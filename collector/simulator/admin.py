"""The simulator's admin endpoint under `/_sim/`: look inside, inject faults, steer the fleet.

Not signed and answered to loopback clients only (anything else gets 403). Every answer is JSON;
mistakes get 400 (bad body), 404 (unknown device, card or route) with `{"error": ...}`.

    GET    /_sim/state                        counts, simulated time, faults, overrides
    GET    /_sim/stats                        requests served, by endpoint and outcome
    DELETE /_sim/stats                        reset the counters (also POST /_sim/stats/reset)
    GET    /_sim/faults                       the current fault settings
    POST   /_sim/faults                       {"error_rate": 0.5, ...} merged in; {"clear": true, ...} first
                                              resets all; the whole result is validated
    DELETE /_sim/faults                       back to a healthy platform
    POST   /_sim/devices/{deviceNo}/offline   force offline now
    POST   /_sim/devices/{deviceNo}/online    end a forced offline period (back to its routine)
    POST   /_sim/devices/{deviceNo}/rssi      {"dbm": -110} pins the signal, {"dbm": null} unpins
    POST   /_sim/sims/{iccid}/exhaust         near-zero remaining data now ({"remaining_ratio": 0.001})
    POST   /_sim/sims/{iccid}/suspend         suspend the card (logged in querySimAction)
    POST   /_sim/sims/{iccid}/resume          resume it
    POST   /_sim/time                         {"advance": 3600} jumps ahead, {"speed": 60} changes pace
    GET    /_sim/inventory                    {"devices": [{"deviceNo", "iccids"}...]}
    POST   /_sim/reset                        clear overrides, faults and counters
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import ValidationError

if TYPE_CHECKING:
    from collector.simulator.server import Simulator


class _Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), headers={"Content-Type": "application/json"})


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


class AdminApi:
    """Routes `/_sim/...` requests to the simulator's fleet, clock, faults and counters."""

    def __init__(self, simulator: Simulator) -> None:
        self.sim = simulator

    async def handle(self, request: BaseRequest) -> web.Response:
        if not _loopback(request.remote):
            return _json({"error": "the admin endpoint answers loopback clients only"}, 403)
        parts = [p for p in request.path.split("/") if p][1:]
        try:
            body = await self._body(request)
            return _json(self._route(request.method, parts, body))
        except _Problem as problem:
            return _json({"error": problem.message}, problem.status)

    @staticmethod
    async def _body(request: BaseRequest) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Problem(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Problem(400, "the body must be a JSON object")
        return body

    def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        sim = self.sim
        match method, parts:
            case "GET", ["state"]:
                return self.state()
            case "GET", ["stats"]:
                return sim.stats.snapshot()
            case ("DELETE", ["stats"]) | ("POST", ["stats", "reset"]):
                sim.stats.reset()
                return sim.stats.snapshot()
            case "GET", ["faults"]:
                return sim.faults.config.model_dump(mode="json")
            case "POST", ["faults"]:
                changes = dict(body)
                clear = bool(changes.pop("clear", False))
                try:
                    return sim.faults.update(changes, clear=clear).model_dump(mode="json")
                except ValidationError as exc:
                    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: {e['msg']}" for e in exc.errors()]
                    raise _Problem(400, "; ".join(problems)) from None
            case "DELETE", ["faults"]:
                return sim.faults.update({}, clear=True).model_dump(mode="json")
            case "POST", ["devices", device_no, action]:
                return self._device(device_no, action, body)
            case "POST", ["sims", iccid, action]:
                return self._sim(iccid, action, body)
            case "POST", ["time"]:
                return self._time(body)
            case "GET", ["inventory"]:
                fleet, ids = sim.fleet, sim.fleet.ids
                return {"devices": [{"deviceNo": no, "iccids": ids.iccids[ids.sim_start[i]:ids.sim_start[i + 1]]}
                                    for i, no in enumerate(ids.device_nos)], "count": len(fleet)}
            case "POST", ["reset"]:
                sim.fleet.reset_overrides()
                sim.faults.update({}, clear=True)
                sim.stats.reset()
                return self.state()
        raise _Problem(404, f"no admin route {method} /_sim/{'/'.join(parts)}")

    def state(self) -> dict[str, Any]:
        sim = self.sim
        now = sim.now()
        return {
            "devices": len(sim.fleet), "sims": len(sim.fleet.ids.iccids), "seed": sim.seed,
            "speed": sim.clock.speed, "simulated_time": now, "simulated_local": sim.fleet.face.format(now),
            "started": sim.fleet.start, "app_id": sim.app_id, "base_url": sim.base_url,
            "faults": sim.faults.config.model_dump(mode="json"), "overrides": sim.fleet.override_counts(),
            "requests": sim.stats.total(),
        }

    def _device(self, device_no: str, action: str, body: dict[str, Any]) -> Any:
        sim = self.sim
        index = sim.fleet.find_device(device_no)
        if index is None:
            raise _Problem(404, f"unknown device {device_no!r}")
        now = sim.now()
        if action == "offline":
            sim.fleet.force_offline(index, now)
        elif action == "online":
            sim.fleet.end_forced_offline(index, now)
        elif action == "rssi":
            if "dbm" not in body:
                raise _Problem(400, 'body must be {"dbm": <int between -140 and 0, or null>}')
            dbm = body["dbm"]
            if dbm is not None and (not isinstance(dbm, int) or isinstance(dbm, bool) or not -140 <= dbm <= 0):
                raise _Problem(400, f"dbm must be an integer between -140 and 0, or null; got {dbm!r}")
            sim.fleet.pin_rssi(index, dbm, now)
        else:
            raise _Problem(404, f"no device action {action!r} (offline, online, rssi)")
        state = sim.fleet.device_state(index, now)
        return {"deviceNo": device_no, "onlineStatus": 1 if state.online else 0, "rssi": state.rssi}

    def _sim(self, iccid: str, action: str, body: dict[str, Any]) -> Any:
        sim = self.sim
        index = sim.fleet.find_sim(iccid)
        if index is None:
            raise _Problem(404, f"unknown card {iccid!r}")
        now = sim.now()
        changed = True
        if action == "exhaust":
            ratio = body.get("remaining_ratio", 0.001)
            if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 <= ratio < 1:
                raise _Problem(400, f"remaining_ratio must be a number in [0, 1), got {ratio!r}")
            sim.fleet.exhaust(index, now, float(ratio))
        elif action == "suspend":
            changed = sim.fleet.suspend(index, now)
        elif action == "resume":
            changed = sim.fleet.resume(index, now)
        else:
            raise _Problem(404, f"no card action {action!r} (exhaust, suspend, resume)")
        state = sim.fleet.sim_state(index, now)
        return {"iccid": iccid, "changed": changed, "simStatus": state.sim_status,
                "internetStatus": state.internet_status, "totalFlow": sim.wire.flow(state.total),
                "useFlow": sim.wire.flow(state.used)}

    def _time(self, body: dict[str, Any]) -> Any:
        clock = self.sim.clock
        unknown = set(body) - {"advance", "speed"}
        if unknown or not body:
            raise _Problem(400, 'body must be {"advance": seconds} and/or {"speed": factor}')
        for key in ("advance", "speed"):
            value = body.get(key)
            if key in body and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
                raise _Problem(400, f"{key} must be a number >= 0, got {value!r}")
        if "speed" in body:
            clock.set_speed(float(body["speed"]))
        if "advance" in body:
            clock.advance(float(body["advance"]))
            if self.sim.answers is not None:  # stale past their span anyway; free them at once
                self.sim.answers.clear()
        now = clock.now()
        return {"simulated_time": now, "simulated_local": self.sim.fleet.face.format(now), "speed": clock.speed}
