"""The simulator's admin endpoint under `/_sim/`: look inside, inject faults and incidents, steer time.

Not signed and answered to loopback clients only (anything else gets 403). Every answer is JSON;
mistakes get 400 (bad body), 404 (unknown device, card or route) with `{"error": ...}`.

Every simulated platform (`AdminApi`):

    GET    /_sim/state                        counts, clocks, sign recipe, paths, faults, overrides
    GET    /_sim/stats                        requests served, by endpoint and outcome
    DELETE /_sim/stats                        reset the counters (also POST /_sim/stats/reset)
    GET    /_sim/faults                       the current fault settings
    POST   /_sim/faults                       {"error_rate": 0.5, ...} merged in; {"clear": true, ...} first
                                              resets all; the whole result is validated
    DELETE /_sim/faults                       back to a healthy platform
    GET    /_sim/modules                      the collector modules loaded in this process
    GET    /_sim/inventory                    {"devices": [{"deviceNo", "iccids"}...], "count"}
    POST   /_sim/reset                        clear overrides, faults and counters

The simulated fleet (`FleetAdmin`), incidents dated at the current simulated time:

    POST   /_sim/devices/{deviceNo}/offline   force offline now
    POST   /_sim/devices/{deviceNo}/online    end a forced offline period (back to its routine)
    POST   /_sim/devices/{deviceNo}/rssi      {"dbm": -110} pins the signal, {"dbm": null} unpins
    POST   /_sim/devices/{deviceNo}/battery   {"level": 10, "rate": 30}: falls to 10 % at 30 %/simulated
                                              hour (at once without a rate); {"level": null} ends it
    POST   /_sim/devices/{deviceNo}/freeze    the platform stops refreshing it (it stays online)
    POST   /_sim/devices/{deviceNo}/unfreeze  the platform refreshes it again, at once
    POST   /_sim/sims/{iccid}/exhaust         near-zero remaining data now ({"remaining_ratio": 0.001})
    POST   /_sim/sims/{iccid}/top-up          data put back: usage restarts from zero ({"remaining_ratio": 1})
    POST   /_sim/sims/{iccid}/expire          {"at": TIME} or {"in": DURATION}: the package ends then;
                                              {"at": null}: it renews as before
    POST   /_sim/sims/{iccid}/suspend         suspend the card (logged in querySimAction)
    POST   /_sim/sims/{iccid}/resume          resume it
    GET    /_sim/account                      the account's balances now
    POST   /_sim/account                      {"balance": 50} pins the balance, {"balance": null} unpins
    POST   /_sim/time                         {"advance": 3600} jumps ahead, {"speed": 60} changes pace
"""

from __future__ import annotations

import ipaddress
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import ValidationError

from collector.configtypes import parse_duration

if TYPE_CHECKING:
    from collector.simulator.server import PlatformServer, Simulator


class AdminProblem(Exception):
    """A mistake in an admin request: answered with `status` and `{"error": message}`."""

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


def number(body: dict[str, Any], key: str, *, low: float | None = None, high: float | None = None,
           integer: bool = False) -> float:
    """`body[key]` as a number within [low, high], or a 400 naming the key."""
    value = body.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and (not integer or isinstance(value, int)) \
            and (low is None or value >= low) and (high is None or value <= high):
        return float(value)
    kind = "an integer" if integer else "a number"
    bounds = f" between {low:g} and {high:g}" if low is not None and high is not None else (
        f" >= {low:g}" if low is not None else "")
    raise AdminProblem(400, f"{key} must be {kind}{bounds}, got {value!r}")


class AdminApi:
    """The admin routes every simulated platform has; `more` is where a subclass adds its own."""

    def __init__(self, server: PlatformServer) -> None:
        self.server = server

    async def handle(self, request: BaseRequest) -> web.Response:
        if not _loopback(request.remote):
            return _json({"error": "the admin endpoint answers loopback clients only"}, 403)
        parts = [p for p in request.path.split("/") if p][1:]
        try:
            body = await self._body(request)
            return _json(self._route(request.method, parts, body))
        except AdminProblem as problem:
            return _json({"error": problem.message}, problem.status)

    @staticmethod
    async def _body(request: BaseRequest) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AdminProblem(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise AdminProblem(400, "the body must be a JSON object")
        return body

    def _route(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        server = self.server
        match method, parts:
            case "GET", ["state"]:
                return server.state()
            case "GET", ["stats"]:
                return server.stats.snapshot()
            case ("DELETE", ["stats"]) | ("POST", ["stats", "reset"]):
                server.stats.reset()
                return server.stats.snapshot()
            case "GET", ["faults"]:
                return server.faults.config.model_dump(mode="json")
            case "POST", ["faults"]:
                changes = dict(body)
                clear = bool(changes.pop("clear", False))
                try:
                    return server.faults.update(changes, clear=clear).model_dump(mode="json")
                except ValidationError as exc:
                    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'faults'}: {e['msg']}" for e in exc.errors()]
                    raise AdminProblem(400, "; ".join(problems)) from None
            case "DELETE", ["faults"]:
                return server.faults.update({}, clear=True).model_dump(mode="json")
            case "GET", ["modules"]:
                return {"collector": sorted(m for m in sys.modules if m == "collector" or m.startswith("collector."))}
            case "POST", ["reset"]:
                self.reset()
                server.faults.update({}, clear=True)
                server.stats.reset()
                return server.state()
        return self.more(method, parts, body)

    def reset(self) -> None:
        """Clear what a subclass's routes changed."""

    def more(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        raise AdminProblem(404, f"no admin route {method} /_sim/{'/'.join(parts)}")


class FleetAdmin(AdminApi):
    """The simulated fleet's routes: incidents on devices, cards and the account, and time."""

    server: Simulator

    def reset(self) -> None:
        self.server.fleet.reset_overrides()
        self.server.clock_changed()

    def more(self, method: str, parts: list[str], body: dict[str, Any]) -> Any:
        sim = self.server
        match method, parts:
            case "POST", ["devices", device_no, action]:
                return self._device(device_no, action, body)
            case "POST", ["sims", iccid, action]:
                return self._sim(iccid, action, body)
            case "GET", ["account"]:
                return self._account()
            case "POST", ["account"]:
                if set(body) != {"balance"}:
                    raise AdminProblem(400, 'body must be {"balance": <number >= 0, or null>}')
                balance = None if body["balance"] is None else number(body, "balance", low=0)
                sim.fleet.pin_balance(sim.now(), balance)
                return self._account()
            case "POST", ["time"]:
                return self._time(body)
            case "GET", ["inventory"]:
                fleet, ids = sim.fleet, sim.fleet.ids
                return {"devices": [{"deviceNo": no, "iccids": ids.iccids[ids.sim_start[i]:ids.sim_start[i + 1]]}
                                    for i, no in enumerate(ids.device_nos)], "count": len(fleet)}
        return super().more(method, parts, body)

    def _account(self) -> dict[str, Any]:
        balance, arrears, frozen = self.server.fleet.account(self.server.now())
        return {"balance": balance, "arrearsBalance": arrears, "frozenBalance": frozen}

    def _device(self, device_no: str, action: str, body: dict[str, Any]) -> Any:
        sim = self.server
        fleet = sim.fleet
        index = fleet.find_device(device_no)
        if index is None:
            raise AdminProblem(404, f"unknown device {device_no!r}")
        now = sim.now()
        if action == "offline":
            fleet.force_offline(index, now)
        elif action == "online":
            fleet.end_forced_offline(index, now)
        elif action == "rssi":
            if "dbm" not in body:
                raise AdminProblem(400, 'body must be {"dbm": <int between -140 and 0, or null>}')
            dbm = None if body["dbm"] is None else int(number(body, "dbm", low=-140, high=0, integer=True))
            fleet.pin_rssi(index, dbm, now)
        elif action == "battery":
            if "level" not in body or set(body) - {"level", "rate"}:
                raise AdminProblem(400, 'body must be {"level": <0..100, or null>, "rate": <percent per hour>}')
            level = None if body["level"] is None else int(number(body, "level", low=0, high=100, integer=True))
            rate = number(body, "rate", low=0) if body.get("rate") is not None else None
            fleet.drain_battery(index, now, level, rate)
        elif action == "freeze":
            fleet.freeze(index, now)
        elif action == "unfreeze":
            fleet.unfreeze(index, now)
        else:
            raise AdminProblem(404, f"no device action {action!r} (offline, online, rssi, battery, freeze, unfreeze)")
        state = fleet.device_state(index, now)
        return {"deviceNo": device_no, "onlineStatus": 1 if state.online else 0, "rssi": state.rssi,
                "electric": state.battery, "lastDeviceStatusAt": sim.wire.stamp(state.status_at)}

    def _sim(self, iccid: str, action: str, body: dict[str, Any]) -> Any:
        sim = self.server
        fleet = sim.fleet
        index = fleet.find_sim(iccid)
        if index is None:
            raise AdminProblem(404, f"unknown card {iccid!r}")
        now = sim.now()
        changed = True
        if action in ("exhaust", "top-up"):
            default = 0.001 if action == "exhaust" else 1.0
            if "remaining_ratio" not in body:
                body = {**body, "remaining_ratio": default}
            ratio = number(body, "remaining_ratio", low=0, high=1)
            if action == "exhaust" and ratio >= 1:
                raise AdminProblem(400, f"remaining_ratio must be below 1 to exhaust, got {ratio!r}")
            fleet.set_remaining(index, now, ratio)
        elif action == "expire":
            fleet.end_package(index, now, self._when(body))
        elif action == "suspend":
            changed = fleet.suspend(index, now)
        elif action == "resume":
            changed = fleet.resume(index, now)
        else:
            raise AdminProblem(404, f"no card action {action!r} (exhaust, top-up, expire, suspend, resume)")
        state = fleet.sim_state(index, now)
        return {"iccid": iccid, "changed": changed, "simStatus": state.sim_status,
                "internetStatus": state.internet_status, "totalFlow": sim.wire.flow(state.total),
                "useFlow": sim.wire.flow(state.used), "endAt": sim.wire.stamp(state.end_at)}

    def _when(self, body: dict[str, Any]) -> float | None:
        """The simulated instant of `{"at": TIME}` (Unix seconds or local `YYYY-MM-DD HH:MM:SS`, on the
        clock the answers report on; null: none) or `{"in": DURATION}` (simulated, from now)."""
        sim = self.server
        if len(body) != 1 or not set(body) <= {"at", "in"}:
            raise AdminProblem(400, 'body must be {"at": <Unix seconds or "YYYY-MM-DD HH:MM:SS", or null>} '
                                    'or {"in": <seconds or a duration like "2h">}')
        if "in" in body:
            try:
                seconds = parse_duration(body["in"])
            except ValueError as exc:
                raise AdminProblem(400, f"in: {exc}") from None
            if seconds < 0:
                raise AdminProblem(400, f"in must not be negative, got {body['in']!r}")
            return sim.now() + seconds
        at = body["at"]
        if at is None:
            return None
        if isinstance(at, str):
            try:
                moment = datetime.fromisoformat(at)
            except ValueError:
                raise AdminProblem(400, f"at: not 'YYYY-MM-DD HH:MM:SS' or Unix seconds: {at!r}") from None
            at = (moment if moment.tzinfo else moment.replace(tzinfo=sim.fleet.face.zone)).timestamp()
        elif not isinstance(at, int | float) or isinstance(at, bool):
            raise AdminProblem(400, f"at must be Unix seconds or 'YYYY-MM-DD HH:MM:SS', got {at!r}")
        return sim.clock.simulated(float(at))

    def _time(self, body: dict[str, Any]) -> Any:
        sim = self.server
        clock = sim.clock
        if set(body) - {"advance", "speed"} or not body:
            raise AdminProblem(400, 'body must be {"advance": seconds} and/or {"speed": factor}')
        for key in ("advance", "speed"):
            if key in body:
                number(body, key, low=0)
        if "speed" in body:
            clock.set_speed(float(body["speed"]))
        if "advance" in body:
            clock.advance(float(body["advance"]))
        sim.clock_changed()
        now = clock.now()
        return {"simulated_time": now, "simulated_local": sim.fleet.face.format(now), "speed": clock.speed,
                "reported_local": sim.wire.stamp(now)}
