"""The simulator as an HTTP server: the platform's agent open API v2.0 over the simulated fleet.

Owns the request path: routing by the endpoint table of the `PlatformConfig` it was given (the
client's own source of paths and parameter names), the checks the platform makes (appID, timestamp
window, signature with the client's own recipe, parameters, batch limits), the envelope, injected
faults, and per-endpoint request counts. The admin endpoint lives in `collector.simulator.admin`.

It is an aiohttp low-level server (no router, no middleware) answering with orjson, because it must
not be the bottleneck of our own benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.web_request import BaseRequest

from collector.config import PlatformConfig
from collector.platform.endpoints import MONTH_PARAM, Endpoint, EndpointSpec
from collector.platform.signing import Signer
from collector.simulator.admin import AdminApi
from collector.simulator.answers import ANSWER_CACHE, AnswerCache
from collector.simulator.clock import SimClock
from collector.simulator.faults import FaultConfig, FaultInjector
from collector.simulator.fleet import (
    ACTION_DONE,
    ACTION_PENDING,
    ACTION_SUBMITTED,
    PROFILE_CACHE,
    DeviceState,
    Fleet,
)
from collector.simulator.wire import OK_MESSAGE, WireFormat

# Credentials of the embedded demo (a `Simulator` built without a PlatformConfig accepts these).
EMBEDDED_APP_ID = "demo"
EMBEDDED_APP_SECRET = "demo-secret"

# Envelope codes (inferred: the vendor's code page is missing; these are the defaults of
# `platform.error_codes`, so the client classifies them out of the box).
CODE_OK = 0
CODE_BAD_REQUEST = 40000
CODE_BAD_SIGN = 40001
CODE_UNKNOWN_APP = 40002
CODE_STALE_TIMESTAMP = 40003
CODE_NO_ENDPOINT = 40400
CODE_UNKNOWN_DEVICE = 40404
CODE_RATE_LIMITED = 42900
CODE_INTERNAL = 50000

TIMESTAMP_WINDOW = 300.0  # seconds of clock skew accepted on the `timestamp` header (inferred)
_JSON = "application/json;charset=UTF-8"
_FORM = "application/x-www-form-urlencoded"
_MONTH = re.compile(r"(\d{4})(0[1-9]|1[0-2])")
# `{"code":0,"message":"操作成功","data":` exactly as orjson writes it, to splice a serialized `data` into.
_OK_HEAD = orjson.dumps({"code": CODE_OK, "message": OK_MESSAGE})[:-1] + b',"data":'

Handler = Callable[[dict[str, str], EndpointSpec], Any]


class ApiFailure(Exception):
    """An answer with a non-zero code (raised inside a handler, turned into an envelope)."""

    def __init__(self, code: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome


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


class Simulator:
    """The platform simulator: a deterministic fleet behind the platform's API, plus an admin endpoint.

    `platform` supplies what a client configured with it will send: the accepted appID and secret
    (exactly those, empty ones included), the sign recipe, endpoint paths, parameter names and batch
    limits, the flow unit and the time zone. Without one, the embedded demo credentials
    (`EMBEDDED_APP_ID` / `EMBEDDED_APP_SECRET`) and the default table apply.
    `start` fixes the simulated start time (default: now); `speed` 0 freezes simulated time.
    `profile_cache` devices keep their derived profile (about 4.5 KB each); the others are re-derived on
    every request, which costs about as much again as answering it.
    `answer_cache` device answers (`data` of queryDeviceFlow / queryDeviceInfo, serialized, about 4.9 KB
    each) are reused while the model vouches they cannot have changed (`AnswerCache`); 0 disables it.
    """

    def __init__(self, devices: int = 50, seed: int = 1, speed: float = 1.0,
                 platform: PlatformConfig | None = None, faults: FaultConfig | None = None, *,
                 start: float | None = None, timestamp_window: float = TIMESTAMP_WINDOW,
                 profile_cache: int = PROFILE_CACHE, answer_cache: int = ANSWER_CACHE) -> None:
        if platform is None:
            platform = PlatformConfig(app_id=EMBEDDED_APP_ID, app_secret=EMBEDDED_APP_SECRET)  # type: ignore[arg-type]
        self.platform = platform
        self.clock = SimClock(start, speed)
        self.fleet = Fleet(devices, seed, self.clock.started, platform.timezone, profile_cache)
        self.wire = WireFormat(self.fleet.face, platform.flow_unit_bytes)
        self.faults = FaultInjector(faults, seed)
        self.answers = AnswerCache(answer_cache) if answer_cache > 0 else None
        self.stats = Stats()
        self.seed = seed
        self.app_id = platform.app_id
        self._signer = Signer.from_config(
            platform.sign, platform.app_secret.get_secret_value() if platform.app_secret else "")
        self._api_version = platform.api_version
        self._window = timestamp_window
        self.specs = platform.endpoint_specs()
        handlers: dict[Endpoint, Handler] = {
            Endpoint.DEVICE_FLOW: self._device_flow,
            Endpoint.DEVICE_INFO: self._device_info,
            Endpoint.CARD_INFO: self._card_info,
            Endpoint.CARD_STATUS: self._card_status,
            Endpoint.CARD_USAGE: self._card_usage,
            Endpoint.CARD_MONTH_USAGE: self._card_month_usage,
            Endpoint.ACCOUNT_ASSETS: self._account_assets,
            Endpoint.CARD_ACTIONS: self._card_actions,
        }
        self._routes: dict[str, tuple[Endpoint, EndpointSpec, Handler]] = {
            spec.path: (Endpoint(name), spec, handlers[Endpoint(name)])
            for name, spec in self.specs.items() if name in handlers}
        self._admin = AdminApi(self)
        self._runner: web.ServerRunner | None = None
        self._stopping = asyncio.Event()
        self.base_url = ""

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

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- the request path ----------------------------------------------------------------------------------

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        route = self._routes.get(request.path)
        if route is None:
            if request.path.startswith("/_sim/"):
                return await self._admin.handle(request)
            self.stats.count("(unknown path)", "not_found")
            return self._envelope(CODE_NO_ENDPOINT, "接口不存在", None, request, status=404)
        endpoint, spec, handler = route
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
            data = self._answer(request, body, spec, handler)
        except ApiFailure as failure:
            self.stats.count(name, failure.outcome)
            return self._envelope(failure.code, failure.message, None, request)
        if fault == "malformed":
            self.stats.count(name, "fault_malformed")
            raw = self._body(CODE_OK, OK_MESSAGE, data, request)
            return web.Response(body=raw[: max(1, len(raw) // 2)], headers={"Content-Type": _JSON})
        self.stats.count(name, "ok")
        return web.Response(body=self._body(CODE_OK, OK_MESSAGE, data, request), headers={"Content-Type": _JSON})

    def _answer(self, request: BaseRequest, body: bytes, spec: EndpointSpec, handler: Handler) -> Any:
        headers = request.headers
        app_id = headers.get("appID")
        if app_id is None or app_id != self.app_id:
            raise ApiFailure(CODE_UNKNOWN_APP, "appID不存在", "unknown_app")
        stamp = headers.get("timestamp", "")
        try:
            skew = abs(time.time() - int(stamp))
        except ValueError:
            skew = float("inf")
        if skew > self._window:
            raise ApiFailure(CODE_STALE_TIMESTAMP, "请求时间戳无效或已过期", "stale_timestamp")
        if body and not headers.get("Content-Type", "").startswith(_FORM):
            raise ApiFailure(CODE_BAD_REQUEST, f"Content-Type须为{_FORM}", "bad_request")
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
        except (UnicodeDecodeError, ValueError):
            raise ApiFailure(CODE_BAD_REQUEST, "请求体无法解析", "bad_request") from None
        signed = {"appID": app_id, "apiVersion": headers.get("apiVersion", ""),
                  "traceID": headers.get("traceID", ""), "timestamp": stamp}
        if not hmac.compare_digest(self._signer.sign(signed, form).lower(), headers.get("sign", "").lower()):
            raise ApiFailure(CODE_BAD_SIGN, "签名错误", "bad_sign")
        if signed["apiVersion"] and signed["apiVersion"] != self._api_version:
            raise ApiFailure(CODE_BAD_REQUEST, f"apiVersion不支持: {signed['apiVersion']}", "bad_request")
        return handler(form, spec)

    def _body(self, code: int, message: str, data: Any, request: BaseRequest) -> bytes:
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

    # --- endpoints -----------------------------------------------------------------------------------------

    def _device(self, form: dict[str, str], spec: EndpointSpec, info: bool) -> Any:
        device_no = form.get(spec.param, "").strip()
        if not device_no:
            raise ApiFailure(CODE_BAD_REQUEST, f"缺少参数{spec.param}", "bad_request")
        index = self.fleet.find_device(device_no)
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
        data = orjson.dumps(self.wire.device(state))
        if cache is not None:
            cache.put(key, generation, t, state.until, data)
        return data

    def _device_flow(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return self._device(form, spec, info=False)

    def _device_info(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return self._device(form, spec, info=True)

    def _cards(self, form: dict[str, str], spec: EndpointSpec, endpoint: str) -> list[int]:
        """The known cards of a batch request, in the order asked (unknown ones are left out)."""
        ids = [i for i in (part.strip() for part in form.get(spec.param, "").split(",")) if i]
        if not ids:
            raise ApiFailure(CODE_BAD_REQUEST, f"缺少参数{spec.param}", "bad_request")
        if spec.batch_limit and len(ids) > spec.batch_limit:
            raise ApiFailure(CODE_BAD_REQUEST, f"单次最多查询{spec.batch_limit}张卡,本次{len(ids)}张",
                             "over_batch_limit")
        self.stats.cards[endpoint] = self.stats.cards.get(endpoint, 0) + len(ids)
        found = (self.fleet.find_sim(i) for i in dict.fromkeys(ids))
        return [sim for sim in found if sim is not None]

    def _card_states(self, form: dict[str, str], spec: EndpointSpec, endpoint: str) -> list[Any]:
        now = self.clock.now()
        devices: dict[int, DeviceState] = {}
        states = []
        fleet = self.fleet
        for sim in self._cards(form, spec, endpoint):
            owner = fleet.device_of_sim(sim)
            state = devices.get(owner)
            if state is None:
                state = devices[owner] = fleet.device_state(owner, now)
            states.append(state.sims[sim - fleet.ids.sim_start[owner]])
        return states

    def _card_info(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return [self.wire.sim(s) for s in self._card_states(form, spec, "card_info")]

    def _card_status(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return [self.wire.card_status(s) for s in self._card_states(form, spec, "card_status")]

    def _card_usage(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return [self.wire.card_usage(s) for s in self._card_states(form, spec, "card_usage")]

    def _card_month_usage(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        month = form.get(MONTH_PARAM, "").strip()
        match = _MONTH.fullmatch(month)
        if match is None:
            raise ApiFailure(CODE_BAD_REQUEST, f"参数{MONTH_PARAM}须为YYYYMM", "bad_request")
        year, number = int(match.group(1)), int(match.group(2))
        now = self.clock.now()
        fleet = self.fleet
        return [self.wire.card_month_usage(fleet.ids.iccids[sim], fleet.ids.sim_nos[sim], month,
                                           fleet.month_usage(sim, year, number, now))
                for sim in self._cards(form, spec, "card_month_usage")]

    def _card_actions(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        now = self.clock.now()
        fleet = self.fleet
        records = []
        for sim in self._cards(form, spec, "card_actions"):
            for action in fleet.actions(sim, now):
                status = ACTION_SUBMITTED if now - action.created_at < ACTION_PENDING else ACTION_DONE
                records.append(self.wire.card_action(fleet.ids.iccids[sim], fleet.ids.sim_nos[sim], sim,
                                                     action, status))
        return records

    def _account_assets(self, form: dict[str, str], spec: EndpointSpec) -> Any:
        return self.wire.account(*self.fleet.account(self.clock.now()))
