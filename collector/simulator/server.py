"""The simulator as an HTTP server: the platform's agent open API v2.0.

Owns the request path every simulated platform shares (`PlatformServer`): routing by the endpoint
table of its settings (the simulator's own reading of the contract plus `platform.endpoints`), the
checks the platform makes (appID, timestamp window, signature with its own verifier of the configured
recipe, API version), the envelope, injected faults and per-endpoint request counts. `Simulator`
answers from the simulated fleet; `collector.simulator.replay.ReplayServer` from a captured folder.
The admin endpoint lives in `collector.simulator.admin`.

It is an aiohttp low-level server (no router, no middleware) answering with orjson, because it must
not be the bottleneck of our own benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from collector.simulator.admin import AdminApi, FleetAdmin
from collector.simulator.answers import ANSWER_CACHE, AnswerCache
from collector.simulator.clock import Reporting, SimClock
from collector.simulator.contract import (
    CODE_BAD_REQUEST,
    CODE_BAD_SIGN,
    CODE_NO_ENDPOINT,
    CODE_OK,
    CODE_RATE_LIMITED,
    CODE_STALE_TIMESTAMP,
    CODE_UNKNOWN_APP,
    CODE_UNKNOWN_DEVICE,
    MONTH_PARAM,
    OK_MESSAGE,
    Endpoint,
    Renamer,
    Route,
)
from collector.simulator.faults import FaultConfig, FaultInjector
from collector.simulator.fleet import (
    ACTION_DONE,
    ACTION_PENDING,
    ACTION_SUBMITTED,
    PROFILE_CACHE,
    DeviceState,
    Fleet,
)
from collector.simulator.settings import EMBEDDED_APP_ID, EMBEDDED_APP_SECRET, PlatformSettings
from collector.simulator.wire import WireFormat

__all__ = ["EMBEDDED_APP_ID", "EMBEDDED_APP_SECRET", "ApiFailure", "Captured", "PlatformServer", "Simulator"]

TIMESTAMP_WINDOW = 300.0  # seconds of clock skew accepted on the `timestamp` header (inferred)
_JSON = "application/json;charset=UTF-8"
_FORM = "application/x-www-form-urlencoded"
_MONTH = re.compile(r"(\d{4})(0[1-9]|1[0-2])")
# `{"code":0,"message":"操作成功","data":` exactly as orjson writes it, to splice a serialized `data` into.
_OK_HEAD = orjson.dumps({"code": CODE_OK, "message": OK_MESSAGE})[:-1] + b',"data":'


class ApiFailure(Exception):
    """An answer with a non-zero code (raised inside a handler, turned into an envelope)."""

    def __init__(self, code: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Captured:
    """A whole answer as the platform gave it (a replayed envelope): served as it is, only `timestamp`
    and `traceID` renewed."""

    envelope: dict[str, Any]

    def body(self, trace_id: str) -> bytes:
        # The standard library's JSON, not orjson: a captured integer may be wider than 64 bits.
        renewed = {**self.envelope, "timestamp": int(time.time()), "traceID": trace_id}
        return json.dumps(renewed, ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def outcome(self) -> str:
        return "ok" if self.envelope.get("code") in (CODE_OK, "0") else "replayed_error"


class Stats:
    """Requests served, by endpoint and outcome (`ok`, `bad_sign`, `fault_drop`...)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.cards: dict[str, int] = {}
        self.since = time.time()

    def count(self, endpoint: str, outcome: str) -> None:
        per = self.counts.get(endpoint)
        if per is None:
            per = self.counts[endpoint] = {}
        per[outcome] = per.get(outcome, 0) + 1

    def total(self) -> int:
        return sum(sum(per.values()) for per in self.counts.values())

    def snapshot(self) -> dict[str, Any]:
        return {"since": self.since, "total": self.total(),
                "endpoints": {name: dict(per) for name, per in self.counts.items()},
                "cards_requested": dict(self.cards)}

    def reset(self) -> None:
        self.counts.clear()
        self.cards.clear()
        self.since = time.time()


class PlatformServer:
    """The platform's request path over some source of answers (a subclass's `answer`).

    `platform` is what a client configured with it will send (`PlatformSettings.of` reads a
    configuration's `platform` section, as a mapping or the daemon's validated object): the accepted
    appID and secret (exactly those, empty ones included), the sign recipe, endpoint paths, parameter
    names and batch limits, field names, the flow unit, the time zone and the API version. None: the
    demo credentials (`EMBEDDED_APP_ID` / `EMBEDDED_APP_SECRET`) and the default table.
    """

    def __init__(self, platform: PlatformSettings | Mapping[str, Any] | object | None = None,
                 faults: FaultConfig | None = None, *, seed: int = 1,
                 timestamp_window: float = TIMESTAMP_WINDOW, routes: Mapping[Endpoint, Route] | None = None) -> None:
        settings = PlatformSettings.of(platform)
        self.settings = settings
        self.app_id = settings.app_id
        self.seed = seed
        self.faults = FaultInjector(faults, seed)
        self.stats = Stats()
        self.specs: dict[str, Route] = {e.value: r for e, r in settings.routes(routes).items()}  # by name
        self.renamers: dict[Endpoint, Renamer] = settings.renamers()
        self._verifier = settings.verifier()
        self._api_version = settings.api_version
        self._window = timestamp_window
        self._routes: dict[str, Endpoint] = {}
        for name, route in self.specs.items():
            if name in self.served():
                self._routes.setdefault(route.path, Endpoint(name))
        self._admin: AdminApi = self.admin_api()
        self._runner: web.ServerRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

    # --- what a subclass provides ------------------------------------------------------------------------

    def served(self) -> frozenset[Endpoint]:
        """The endpoints this server answers (the others' paths answer 404, like an unknown path)."""
        return frozenset(Endpoint)

    def admin_api(self) -> AdminApi:
        return AdminApi(self)

    def answer(self, endpoint: Endpoint, form: dict[str, str], route: Route) -> Any:
        """`data` of a successful answer (JSON-ready, or already serialized as bytes), or a `Captured`
        envelope; ApiFailure for an error answer."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """What `GET /_sim/state` shows."""
        return {"app_id": self.app_id, "base_url": self.base_url, "seed": self.seed,
                "sign": self._verifier.recipe, "paths": {e: r.path for e, r in self.specs.items()},
                "not_served": list(self.settings.not_served),
                "faults": self.faults.config.model_dump(mode="json"), "requests": self.stats.total()}

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0 picks a free port); returns the base URL to give the client."""
        self._stopping = asyncio.Event()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=1024)
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()
        bound = sock.getsockname()[1]
        shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, f"[{host}]" if ":" in host else host)
        self.base_url = f"http://{shown}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening, release requests held by the timeout fault, close connections."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PlatformServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the request path ----------------------------------------------------------------------------------

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        endpoint = self._routes.get(request.path)
        if endpoint is None:
            if request.path.startswith("/_sim/"):
                return await self._admin.handle(request)
            self.stats.count("(unknown path)", "not_found")
            return self._envelope(CODE_NO_ENDPOINT, "接口不存在", None, request, status=404)
        name = endpoint.value
        if request.method != "POST":
            self.stats.count(name, "method_not_allowed")
            return self._envelope(CODE_BAD_REQUEST, "请求方法不支持", None, request, status=405)
        faults = self.faults
        if faults.over_cap():
            return self._throttled(name, request)
        fault = None
        if faults.active:
            delay, fault = faults.decide(endpoint)
            if delay:
                await asyncio.sleep(delay)
            if fault is not None and fault != "malformed":
                return await self._inject(fault, name, request)
        body = await request.read()
        try:
            data = self._answer(request, body, endpoint)
        except ApiFailure as failure:
            self.stats.count(name, failure.outcome)
            return self._envelope(failure.code, failure.message, None, request)
        if isinstance(data, Captured):
            raw = data.body(request.headers.get("traceID", ""))
            outcome = data.outcome
        else:
            raw = self._body(CODE_OK, OK_MESSAGE, data, request)
            outcome = "ok"
        if fault == "malformed":
            self.stats.count(name, "fault_malformed")
            return web.Response(body=raw[: max(1, len(raw) // 2)], headers={"Content-Type": _JSON})
        self.stats.count(name, outcome)
        return web.Response(body=raw, headers={"Content-Type": _JSON})

    def _answer(self, request: BaseRequest, body: bytes, endpoint: Endpoint) -> Any:
        headers = request.headers
        app_id = headers.get("appID")
        if app_id is None or app_id != self.app_id:
            raise ApiFailure(CODE_UNKNOWN_APP, "appID不存在", "unknown_app")
        if self._verifier.skew(headers.get("timestamp", ""), time.time()) > self._window:
            raise ApiFailure(CODE_STALE_TIMESTAMP, "请求时间戳无效或已过期", "stale_timestamp")
        if body and not headers.get("Content-Type", "").startswith(_FORM):
            raise ApiFailure(CODE_BAD_REQUEST, f"Content-Type须为{_FORM}", "bad_request")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
        except (UnicodeDecodeError, ValueError):
            raise ApiFailure(CODE_BAD_REQUEST, "请求体无法解析", "bad_request") from None
        if not self._verifier.verify(headers, form):
            raise ApiFailure(CODE_BAD_SIGN, "签名错误", "bad_sign")
        version = headers.get("apiVersion", "")
        if version and version != self._api_version:
            raise ApiFailure(CODE_BAD_REQUEST, f"apiVersion不支持: {version}", "bad_request")
        return self.answer(endpoint, form, self.specs[endpoint])

    def _body(self, code: Any, message: Any, data: Any, request: BaseRequest) -> bytes:
        if type(data) is bytes:  # `data` serialized already (a device answer): splice it in
            head = _OK_HEAD if code == CODE_OK and message == OK_MESSAGE else (
                orjson.dumps({"code": code, "message": message})[:-1] + b',"data":')
            return b"".join((head, data, b',"timestamp":', str(int(time.time())).encode(), b',"traceID":',
                             orjson.dumps(request.headers.get("traceID", "")), b"}"))
        return orjson.dumps({"code": code, "message": message, "data": data, "timestamp": int(time.time()),
                             "traceID": request.headers.get("traceID", "")})

    def _envelope(self, code: int, message: str, data: Any, request: BaseRequest,
                  status: int = 200) -> web.Response:
        return web.Response(status=status, body=self._body(code, message, data, request),
                            headers={"Content-Type": _JSON})

    def _throttled(self, name: str, request: BaseRequest) -> web.Response:
        if self.faults.config.throttle_http:
            self.stats.count(name, "throttled_http")
            return web.Response(status=429, body=b"Too Many Requests",
                                headers={"Retry-After": "1", "Content-Type": "text/plain"})
        self.stats.count(name, "rate_limited")
        return self._envelope(CODE_RATE_LIMITED, "请求过于频繁,请稍后再试", None, request)

    async def _inject(self, fault: str, name: str, request: BaseRequest) -> web.StreamResponse:
        config = self.faults.config
        if fault == "timeout":
            self.stats.count(name, "fault_timeout")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), config.hang)
            fault = "drop"
        else:
            self.stats.count(name, f"fault_{fault}")
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if fault == "http_error":
            status = config.error_status
            page = f"<html><body><h1>{status} Server Error</h1></body></html>".encode()
            return web.Response(status=status, body=page, headers={"Content-Type": "text/html"})
        return self._envelope(config.code, config.code_message, None, request)

    # --- helpers for the answers ---------------------------------------------------------------------------

    @staticmethod
    def device_id(form: dict[str, str], route: Route) -> str:
        device_no = form.get(route.param, "").strip()
        if not device_no:
            raise ApiFailure(CODE_BAD_REQUEST, f"缺少参数{route.param}", "bad_request")
        return device_no

    def card_ids(self, form: dict[str, str], route: Route, endpoint: Endpoint) -> list[str]:
        """The distinct ids of a batch request, in the order asked (checked against the batch limit)."""
        ids = [i for i in (part.strip() for part in form.get(route.param, "").split(",")) if i]
        if not ids:
            raise ApiFailure(CODE_BAD_REQUEST, f"缺少参数{route.param}", "bad_request")
        if route.batch_limit and len(ids) > route.batch_limit:
            raise ApiFailure(CODE_BAD_REQUEST, f"单次最多查询{route.batch_limit}张卡,本次{len(ids)}张",
                             "over_batch_limit")
        self.stats.cards[endpoint.value] = self.stats.cards.get(endpoint.value, 0) + len(ids)
        return list(dict.fromkeys(ids))

    @staticmethod
    def month(form: dict[str, str]) -> tuple[int, int]:
        """The `month` of card_month_usage as (year, month)."""
        match = _MONTH.fullmatch(form.get(MONTH_PARAM, "").strip())
        if match is None:
            raise ApiFailure(CODE_BAD_REQUEST, f"参数{MONTH_PARAM}须为YYYYMM", "bad_request")
        return int(match.group(1)), int(match.group(2))


class Simulator(PlatformServer):
    """The platform simulator: a deterministic fleet behind the platform's API, plus an admin endpoint.

    `platform`: see `PlatformServer`. `start` fixes the simulated start time (default: now); `speed` 0
    freezes simulated time. `times` is the clock the answers report instants on: `wall` (the default
    when time runs) or `simulated` (the default for a frozen clock): see `collector.simulator.clock`.
    `profile_cache` devices keep their derived profile (about 4.5 KB each); the others are re-derived on
    every request, which costs about as much again as answering it.
    `answer_cache` device answers (`data` of queryDeviceFlow / queryDeviceInfo, serialized, about 4.9 KB
    each) are reused while the model vouches they cannot have changed (`AnswerCache`); 0 disables it.
    """

    def __init__(self, devices: int = 50, seed: int = 1, speed: float = 1.0,
                 platform: PlatformSettings | Mapping[str, Any] | object | None = None,
                 faults: FaultConfig | None = None, *, start: float | None = None,
                 times: Reporting | None = None, timestamp_window: float = TIMESTAMP_WINDOW,
                 profile_cache: int = PROFILE_CACHE, answer_cache: int = ANSWER_CACHE) -> None:
        self.clock = SimClock(start, speed, times or ("wall" if speed > 0 else "simulated"))
        settings = PlatformSettings.of(platform)
        self.fleet = Fleet(devices, seed, self.clock.started, settings.timezone, profile_cache)
        face, reported = self.fleet.face, self.clock.reported
        stamp: Callable[[float], str] = face.format
        if self.clock.reporting == "wall":
            def stamp(t: float) -> str:
                return face.format(reported(t))
        self.fleet.stamp = stamp
        self.wire = WireFormat(face, settings.flow_unit_bytes, stamp)
        self.answers = AnswerCache(answer_cache) if answer_cache > 0 else None
        super().__init__(settings, faults, seed=seed, timestamp_window=timestamp_window)
        self._handlers: dict[Endpoint, Callable[[dict[str, str], Route], Any]] = {
            Endpoint.DEVICE_FLOW: self._device_flow,
            Endpoint.DEVICE_INFO: self._device_info,
            Endpoint.CARD_INFO: self._card_info,
            Endpoint.CARD_STATUS: self._card_status,
            Endpoint.CARD_USAGE: self._card_usage,
            Endpoint.CARD_MONTH_USAGE: self._card_month_usage,
            Endpoint.ACCOUNT_ASSETS: self._account_assets,
            Endpoint.CARD_ACTIONS: self._card_actions,
        }

    def admin_api(self) -> AdminApi:
        return FleetAdmin(self)

    def answer(self, endpoint: Endpoint, form: dict[str, str], route: Route) -> Any:
        return self._handlers[endpoint](form, route)

    def state(self) -> dict[str, Any]:
        now = self.now()
        return {
            "devices": len(self.fleet), "sims": len(self.fleet.ids.iccids), "speed": self.clock.speed,
            "simulated_time": now, "simulated_local": self.fleet.face.format(now), "started": self.fleet.start,
            "times": self.clock.reporting, "reported_local": self.wire.stamp(now),
            "overrides": self.fleet.override_counts(), **super().state(),
        }

    # --- the fleet, for building an inventory ------------------------------------------------------------

    def device_numbers(self) -> list[str]:
        """Every simulated device number (strings; some have 10 digits, some start with 0)."""
        return self.fleet.device_numbers()

    def iccids(self) -> list[str]:
        """Every simulated ICCID (strings; some contain letters)."""
        return self.fleet.iccids()

    def now(self) -> float:
        """The current simulated Unix time."""
        return self.clock.now()

    def clock_changed(self) -> None:
        """After a jump or a change of pace: cached answers may report other instants now."""
        if self.answers is not None:
            self.answers.clear()

    # --- endpoints -----------------------------------------------------------------------------------------

    def _device(self, form: dict[str, str], route: Route, info: bool) -> Any:
        index = self.fleet.find_device(self.device_id(form, route))
        if index is None:
            raise ApiFailure(CODE_UNKNOWN_DEVICE, "设备不存在", "unknown_device")
        return self.device_data(index, self.clock.now(), info)

    def device_data(self, index: int, t: float, info: bool = False) -> bytes:
        """`data` of device `index`'s queryDeviceFlow (queryDeviceInfo with `info`) answer at simulated
        time `t`, serialized: from the answer cache while the model vouches it cannot have changed."""
        cache = self.answers
        generation = self.fleet.generation
        key = (index, info)
        if cache is not None:
            found = cache.get(key, generation, t)
            if found is not None:
                return found
        state = self.fleet.device_state(index, t, info=info)
        answer = self.wire.device(state)
        renamer = self.renamers.get(Endpoint.DEVICE_INFO if info else Endpoint.DEVICE_FLOW)
        data = orjson.dumps(answer if renamer is None else renamer.device(answer))
        if cache is not None:
            cache.put(key, generation, t, state.until, data)
        return data

    def _device_flow(self, form: dict[str, str], route: Route) -> Any:
        return self._device(form, route, info=False)

    def _device_info(self, form: dict[str, str], route: Route) -> Any:
        return self._device(form, route, info=True)

    def _cards(self, form: dict[str, str], route: Route, endpoint: Endpoint) -> list[int]:
        """The known cards of a batch request, in the order asked (unknown ones are left out)."""
        found = (self.fleet.find_sim(i) for i in self.card_ids(form, route, endpoint))
        return [sim for sim in found if sim is not None]

    def _card_states(self, form: dict[str, str], route: Route, endpoint: Endpoint) -> list[Any]:
        now = self.clock.now()
        devices: dict[int, DeviceState] = {}
        states = []
        fleet = self.fleet
        for sim in self._cards(form, route, endpoint):
            owner = fleet.device_of_sim(sim)
            state = devices.get(owner)
            if state is None:
                state = devices[owner] = fleet.device_state(owner, now)
            states.append(state.sims[sim - fleet.ids.sim_start[owner]])
        return states

    def _records(self, endpoint: Endpoint, record: str, rows: list[Any]) -> Any:
        renamer = self.renamers.get(endpoint)
        return rows if renamer is None else renamer.records(record, rows)

    def _card_info(self, form: dict[str, str], route: Route) -> Any:
        e = Endpoint.CARD_INFO
        return self._records(e, "sim", [self.wire.sim(s) for s in self._card_states(form, route, e)])

    def _card_status(self, form: dict[str, str], route: Route) -> Any:
        e = Endpoint.CARD_STATUS
        return self._records(e, "sim", [self.wire.card_status(s) for s in self._card_states(form, route, e)])

    def _card_usage(self, form: dict[str, str], route: Route) -> Any:
        e = Endpoint.CARD_USAGE
        return self._records(e, "sim", [self.wire.card_usage(s) for s in self._card_states(form, route, e)])

    def _card_month_usage(self, form: dict[str, str], route: Route) -> Any:
        year, number = self.month(form)
        month = f"{year:04d}{number:02d}"
        now = self.clock.now()
        fleet = self.fleet
        # The month is named on the calendar the answers report on: this month is the simulated one in
        # progress, the one before it the simulated month before, and so on.
        face = fleet.face
        shown_year, shown_month = face.year_month(self.clock.reported(now))
        back = (shown_year * 12 + shown_month) - (year * 12 + number)
        sim_year, sim_month = face.year_month(now)
        total = sim_year * 12 + sim_month - 1 - back
        rows = [self.wire.card_month_usage(fleet.ids.iccids[sim], fleet.ids.sim_nos[sim], month,
                                           fleet.month_usage(sim, total // 12, total % 12 + 1, now)
                                           if back >= 0 else 0)
                for sim in self._cards(form, route, Endpoint.CARD_MONTH_USAGE)]
        return self._records(Endpoint.CARD_MONTH_USAGE, "month_usage", rows)

    def _card_actions(self, form: dict[str, str], route: Route) -> Any:
        now = self.clock.now()
        fleet = self.fleet
        records = []
        for sim in self._cards(form, route, Endpoint.CARD_ACTIONS):
            for action in fleet.actions(sim, now):
                status = ACTION_SUBMITTED if now - action.created_at < ACTION_PENDING else ACTION_DONE
                records.append(self.wire.card_action(fleet.ids.iccids[sim], fleet.ids.sim_nos[sim], sim,
                                                     action, status))
        return self._records(Endpoint.CARD_ACTIONS, "action", records)

    def _account_assets(self, form: dict[str, str], route: Route) -> Any:
        data = self.wire.account(*self.fleet.account(self.clock.now()))
        renamer = self.renamers.get(Endpoint.ACCOUNT_ASSETS)
        return data if renamer is None else renamer.record("account", data)
