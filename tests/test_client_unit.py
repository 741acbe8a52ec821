"""The platform client at unit level: wire format, batching, retries, throttling, error types, metrics.

Most tests use httpx.MockTransport; two use a tiny in-process aiohttp server to cover both real
transports. Retry waits go through a fake sleep, so nothing here waits for real backoff.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import httpcore
import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from collector.config import PlatformConfig, PrivacyConfig
from collector.endpoints import ENDPOINTS
from collector.logs import redact_text
from collector.metrics import REGISTRY
from collector.platform.client import BatchResult, PlatformClient
from collector.platform.errors import (
    ApiError,
    AuthError,
    HttpStatusError,
    ParseError,
    PlatformTimeout,
    RateLimitedError,
    TransportError,
)
from collector.platform.ratelimit import RateLimiter
from collector.platform.signing import Signer

CARD_INFO, CARD_STATUS, CARD_USAGE = ENDPOINTS["card_info"], ENDPOINTS["card_status"], ENDPOINTS["card_usage"]
SAMPLE = (Path(__file__).parent / "data" / "sample-queryDeviceFlow.json").read_bytes()
SECRET = "topsecret-4242"
Handler = Callable[[httpx.Request], httpx.Response]


def config(**overrides: Any) -> PlatformConfig:
    values: dict[str, Any] = {"app_id": "app-1", "app_secret": SECRET, "rate_limit": 1000, "burst": 1000,
                              "retries": {"max_attempts": 4, "backoff_initial": 0.5, "backoff_max": 30}}
    values.update(overrides)
    return PlatformConfig.model_validate(values)


def ok(data: Any) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps({"code": 0, "message": "操作成功", "data": data}))


def api(code: int, message: str = "error") -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps({"code": code, "message": message, "data": None}))


def form_of(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


class Recorder:
    """A scripted platform: answers from `script` in order (the last one repeats), records requests."""

    def __init__(self, *script: httpx.Response | Handler | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client(handler: Handler, *, sleeps: Sleeps | None = None, limiter: RateLimiter | None = None,
           **overrides: Any) -> PlatformClient:
    return PlatformClient(config(**overrides), PrivacyConfig(location="region"),
                          transport=httpx.MockTransport(handler), sleep=sleeps or Sleeps(),
                          rng=random.Random(7), limiter=limiter)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def cards_handler(request: httpx.Request) -> httpx.Response:
    """Answers card endpoints with one status record per asked id (except ids starting with "unknown")."""
    ids = form_of(request)["iccids"].split(",")
    return ok([{"iccid": i, "simStatus": 4} for i in ids if not i.startswith("unknown")])


# --- the wire ----------------------------------------------------------------------------------------


async def test_device_flow_request_is_signed_form_post() -> None:
    platform = Recorder(httpx.Response(200, content=SAMPLE))
    async with client(platform) as c:
        device = await c.device_flow("9176069816")
    assert device.device_no == "9176069816" and device.rssi_dbm == -84
    request = platform.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/openapi/iot/queryDeviceFlow"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == {"deviceNo": "9176069816"}
    headers = {k: request.headers[k] for k in ("appID", "apiVersion", "traceID", "timestamp")}
    assert headers["appID"] == "app-1" and headers["apiVersion"] == "2.0"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["traceID"])
    assert re.fullmatch(r"\d{10}", headers["timestamp"])  # Unix seconds
    assert Signer(secret=SECRET).sign(headers, form_of(request)) == request.headers["sign"]
    assert SECRET not in str(request.headers) and SECRET not in request.content.decode()


async def test_base_url_override_and_path_prefix() -> None:
    platform = Recorder(httpx.Response(200, content=SAMPLE))
    c = PlatformClient(config(), base_url="http://sim.local:8080/gw/", transport=httpx.MockTransport(platform))
    async with c:
        await c.fetch(ENDPOINTS["device_info"], ["1"])
    assert str(platform.requests[0].url) == "http://sim.local:8080/gw/openapi/iot/queryDeviceInfo"


async def test_only_read_paths_of_the_endpoint_table_are_called() -> None:
    paths: list[str] = []

    def anything(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path.endswith(("queryDeviceFlow", "queryDeviceInfo")):
            return httpx.Response(200, content=SAMPLE)
        if request.url.path.endswith("queryAccountAssets"):
            return ok({"balance": "1.5"})
        return ok([])

    async with client(anything) as c:
        for endpoint in ENDPOINTS.values():
            assert not (await c.fetch(endpoint, ["a"])).failed
        assert (await c.account_assets()).balance == 1.5
    table = {spec.path for spec in config().endpoint_specs().values()}
    assert set(paths) == table
    assert all(p.rsplit("/", 1)[1].startswith("query") for p in paths)


async def test_account_assets_sends_no_id_and_month_usage_sends_the_month() -> None:
    platform = Recorder(lambda r: ok({"balance": 1}) if r.url.path.endswith("Assets") else ok([]))
    async with client(platform) as c:
        await c.account_assets()
        await c.fetch(ENDPOINTS["card_month_usage"], ["a", "b"], form={"month": "202508"})
        with pytest.raises(ValueError):
            await c.fetch(ENDPOINTS["card_month_usage"], ["a"], form={"month": "2025-08"})
    assert platform.requests[0].content == b""
    assert form_of(platform.requests[1]) == {"iccids": "a,b", "month": "202508"}


# --- batching ----------------------------------------------------------------------------------------


async def test_card_status_splits_25_cards_into_10_10_5() -> None:
    platform = Recorder(cards_handler)
    ids = [f"8986{i:016d}" for i in range(25)]
    async with client(platform) as c:
        statuses = (await c.fetch(CARD_STATUS, ids)).unwrap()
    sizes = sorted((len(form_of(r)["iccids"].split(",")) for r in platform.requests), reverse=True)
    assert sizes == [10, 10, 5]
    assert sorted(s.iccid for s in statuses) == sorted(ids)
    assert len({r.headers["traceID"] for r in platform.requests}) == 3


async def test_card_info_batches_to_100_and_deduplicates() -> None:
    platform = Recorder(cards_handler)
    ids = [f"c{i}" for i in range(250)] + ["c0", " c1 ", ""]
    async with client(platform) as c:
        sims = (await c.fetch(CARD_INFO, ids)).unwrap()
    assert sorted(len(form_of(r)["iccids"].split(",")) for r in platform.requests) == [50, 100, 100]
    assert len(sims) == 250


async def test_batch_limit_comes_from_the_configuration() -> None:
    platform = Recorder(cards_handler)
    async with client(platform, endpoints={"card_usage": {"batch_limit": 4, "param": "cards"}}) as c:
        platform.script = [lambda r: ok([{"iccid": i} for i in form_of(r)["cards"].split(",")])]
        usages = (await c.fetch(CARD_USAGE, [str(i) for i in range(9)])).unwrap()
    assert sorted(len(form_of(r)["cards"].split(",")) for r in platform.requests) == [1, 4, 4]
    assert len(usages) == 9


async def test_chunks_run_concurrently() -> None:
    inside = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.02)
        inside -= 1
        return cards_handler(request)

    c = PlatformClient(config(max_concurrency=3), transport=httpx.MockTransport(slow))
    async with c:
        await c.fetch(CARD_STATUS, [str(i) for i in range(100)])
    assert peak == 3  # concurrent, and bounded by max_concurrency


async def test_partial_batch_result_keeps_the_chunks_that_worked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        ids = form_of(request)["iccids"].split(",")
        return api(40000, "bad card") if "bad" in ids else cards_handler(request)

    async with client(handler) as c:
        result = await c.fetch(CARD_STATUS, [*(f"c{i}" for i in range(10)), "bad", "unknown-1"])
        assert isinstance(result, BatchResult)
        assert len(result.items) == 10
        assert result.failed[0][0] == ("bad", "unknown-1")
        assert isinstance(result.failed[0][1], ApiError)
        with pytest.raises(ApiError):
            result.unwrap()
        missing = await c.fetch(CARD_STATUS, ["c1", "unknown-2"])
        assert missing.missing == ["unknown-2"] and missing.failed == []


async def test_skipped_records_are_counted() -> None:
    before = metric("iot_collector_upstream_parse_errors_total", endpoint="card_status")
    async with client(lambda r: ok([{"iccid": "a"}, {"simNo": "no iccid"}, "junk"])) as c:
        statuses = (await c.fetch(CARD_STATUS, ["a"])).unwrap()
    assert [s.iccid for s in statuses] == ["a"]
    assert metric("iot_collector_upstream_parse_errors_total", endpoint="card_status") - before == 2


# --- retries -------------------------------------------------------------------------------------------


async def test_transient_errors_are_retried_with_growing_jittered_backoff() -> None:
    sleeps = Sleeps()
    platform = Recorder(httpx.Response(503), api(50000, "busy"), httpx.ConnectError("refused"),
                        httpx.Response(200, content=SAMPLE))
    before = metric("iot_collector_upstream_retries_total", endpoint="device_flow")
    async with client(platform, sleeps=sleeps) as c:
        device = await c.device_flow("1")
    assert device.rssi_dbm == -84
    assert len(platform.requests) == 4
    # Equal jitter: attempt n waits between half and all of backoff_initial * 2**(n-1).
    for n, delay in enumerate(sleeps.delays, start=1):
        assert 0.5 * 0.5 * 2 ** (n - 1) <= delay <= 0.5 * 2 ** (n - 1)
    assert len({r.headers["traceID"] for r in platform.requests}) == 4  # fresh traceID per attempt
    assert metric("iot_collector_upstream_retries_total", endpoint="device_flow") - before == 3


async def test_attempts_are_bounded() -> None:
    sleeps = Sleeps()
    platform = Recorder(httpx.Response(502))
    async with client(platform, sleeps=sleeps, retries={"max_attempts": 3, "backoff_initial": 1,
                                                        "backoff_max": 1.5}) as c:
        with pytest.raises(HttpStatusError) as info:
            await c.device_flow("1")
    assert info.value.status == 502 and info.value.transient
    assert len(platform.requests) == 3
    assert all(d <= 1.5 for d in sleeps.delays) and len(sleeps.delays) == 2


@pytest.mark.parametrize(("answer", "error_type"), [
    (api(40001, "sign error"), AuthError),
    (api(40404, "设备不存在"), ApiError),
    (api(40000, "too many"), ApiError),
    (httpx.Response(400), HttpStatusError),
    (httpx.Response(200, content=b'{"code": 0, "data": {"device": "not an object"}}'), ParseError),
])
async def test_permanent_errors_are_not_retried(answer: httpx.Response, error_type: type[Exception]) -> None:
    sleeps = Sleeps()
    platform = Recorder(answer)
    async with client(platform, sleeps=sleeps) as c:
        with pytest.raises(error_type) as info:
            await c.device_flow("1")
    assert not getattr(info.value, "transient", True)
    assert len(platform.requests) == 1 and sleeps.delays == []


async def test_undecodable_body_is_retried() -> None:
    platform = Recorder(httpx.Response(200, content=b"<html>gateway hiccup</html>"),
                        httpx.Response(200, content=SAMPLE))
    async with client(platform) as c:
        assert (await c.device_flow("1")).device_no == "1"
    assert len(platform.requests) == 2


async def test_api_error_carries_code_message_and_trace_id() -> None:
    platform = Recorder(httpx.Response(200, content=orjson.dumps(
        {"code": 40404, "message": "设备不存在", "traceID": "abc123"})))
    before = metric("iot_collector_upstream_api_errors_total", endpoint="device_flow", code="40404")
    async with client(platform) as c:
        with pytest.raises(ApiError) as info:
            await c.device_flow("1")
    assert (info.value.code, info.value.platform_message, info.value.trace_id) == (40404, "设备不存在", "abc123")
    assert info.value.endpoint == "device_flow"
    assert metric("iot_collector_upstream_api_errors_total", endpoint="device_flow", code="40404") - before == 1


async def test_wrong_secret_fails_loudly_without_quoting_it() -> None:
    async with client(Recorder(api(40001, "签名校验失败"))) as c:
        with pytest.raises(AuthError) as info:
            await c.device_flow("1")
    message = str(info.value)
    assert "platform.app_secret" in message and "platform.sign" in message and "签名校验失败" in message
    assert SECRET not in message
    assert SECRET not in redact_text(f"leaked {SECRET} here")  # registered for redaction


async def test_http_error_with_an_envelope_uses_the_platform_code() -> None:
    async with client(Recorder(httpx.Response(401, content=orjson.dumps({"code": 40002, "message": "appID?"})))) as c:
        with pytest.raises(AuthError) as info:
            await c.account_assets()
    assert info.value.code == 40002


# --- throttling ------------------------------------------------------------------------------------------


async def test_http_429_honours_retry_after_and_slows_the_limiter() -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(20, 5, max_concurrency=4)
    platform = Recorder(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, content=SAMPLE))
    throttled = metric("iot_collector_upstream_throttled_total")
    async with client(platform, sleeps=sleeps, limiter=limiter) as c:
        await c.device_flow("1")
    assert sleeps.delays[0] >= 3.0
    assert limiter.current_rate == 10
    assert metric("iot_collector_upstream_throttled_total") - throttled == 1


async def test_rate_limited_code_is_retried_and_slows_down() -> None:
    sleeps = Sleeps()
    limiter = RateLimiter(20, 5)
    platform = Recorder(api(42900, "too fast"), httpx.Response(200, content=SAMPLE))
    async with client(platform, sleeps=sleeps, limiter=limiter) as c:
        await c.device_flow("1")
    assert len(platform.requests) == 2 and limiter.current_rate == 10


async def test_retry_after_longer_than_backoff_max_gives_up() -> None:
    sleeps = Sleeps()
    platform = Recorder(httpx.Response(503, headers={"Retry-After": "3600"}))
    async with client(platform, sleeps=sleeps) as c:
        with pytest.raises(HttpStatusError):
            await c.device_flow("1")
    assert len(platform.requests) == 1 and sleeps.delays == []


async def test_rate_limited_after_all_attempts_raises_rate_limited() -> None:
    async with client(Recorder(api(42900)), retries={"max_attempts": 2, "backoff_initial": 0.1,
                                                     "backoff_max": 1}) as c:
        with pytest.raises(RateLimitedError):
            (await c.fetch(CARD_STATUS, ["a"])).unwrap()


# --- transport errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "error_type"), [
    (httpx.ConnectError("refused"), TransportError),
    (httpx.RemoteProtocolError("peer closed"), TransportError),
    (httpx.ReadTimeout("slow"), PlatformTimeout),
])
async def test_transport_exceptions_become_typed_errors(exc: Exception, error_type: type[Exception]) -> None:
    async with client(Recorder(exc), retries={"max_attempts": 1}) as c:
        with pytest.raises(error_type) as info:
            await c.device_flow("1")
    assert info.value.__cause__ is exc


def _caused(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "error_type"), [
    # httpx's own transport: httpx.ReadTimeout chained from httpcore.ReadTimeout is a timeout.
    (_caused(httpx.ReadTimeout("slow"), httpcore.ReadTimeout("slow")), PlatformTimeout),
    # httpx-aiohttp maps a server hang-up to ConnectTimeout: not a timeout.
    (_caused(httpx.ConnectTimeout("x"), aiohttp.ServerDisconnectedError()), TransportError),
    # ... but a real aiohttp timeout stays a timeout.
    (_caused(httpx.ConnectTimeout("x"), aiohttp.ConnectionTimeoutError()), PlatformTimeout),
    (_caused(httpx.ReadTimeout("x"), aiohttp.SocketTimeoutError()), PlatformTimeout),
])
async def test_timeouts_are_told_apart_from_hang_ups(exc: Exception, error_type: type[Exception]) -> None:
    async with client(Recorder(exc), retries={"max_attempts": 1}) as c:
        with pytest.raises(error_type):
            await c.device_flow("1")


async def test_outcome_metrics_per_attempt() -> None:
    ok_before = metric("iot_collector_upstream_requests_total", endpoint="card_usage", outcome="ok")
    http_before = metric("iot_collector_upstream_requests_total", endpoint="card_usage", outcome="http_error")
    async with client(Recorder(httpx.Response(500), cards_handler)) as c:
        await c.fetch(CARD_USAGE, ["a"])
    assert metric("iot_collector_upstream_requests_total", endpoint="card_usage", outcome="ok") - ok_before == 1
    assert metric("iot_collector_upstream_requests_total", endpoint="card_usage",
                  outcome="http_error") - http_before == 1
    assert metric("iot_collector_upstream_requests_in_flight") == 0


# --- logs ----------------------------------------------------------------------------------------------


async def test_unusable_fields_are_warned_once_per_endpoint_and_field() -> None:
    body = SAMPLE.replace(b'"rssi": -84', b'"rssi": "strong"')
    with capture_logs() as logs:
        async with client(Recorder(httpx.Response(200, content=body))) as c:
            first = await c.device_flow("1")
            await c.device_flow("2")
    assert first.rssi_dbm is None and first.battery_percent == 100
    warnings = [e for e in logs if e["event"] == "unusable values parsed as unknown" and e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["fields"] == ["rssi"]


async def test_request_log_lines_carry_endpoint_subject_trace_and_timing_but_no_secret() -> None:
    with capture_logs() as logs:
        async with client(Recorder(httpx.Response(200, content=SAMPLE))) as c:
            await c.device_flow("9176069816")
    line = next(e for e in logs if e["event"] == "upstream request")
    assert line["endpoint"] == "device_flow" and line["device_no"] == "9176069816"
    assert line["status"] == 200 and "duration_ms" in line and len(line["trace_id"]) == 32
    assert SECRET not in repr(logs)


async def test_failed_attempts_are_debug_lines_and_the_error_says_how_many_were_made() -> None:
    before = metric("iot_collector_upstream_retries_total", endpoint="device_flow")
    with capture_logs() as logs:
        async with client(Recorder(httpx.Response(503))) as c:
            with pytest.raises(HttpStatusError) as info:
                await c.device_flow("1")
    assert info.value.attempts == 4
    failed = [e for e in logs if e["event"] == "upstream request failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3, 4] and {e["log_level"] for e in failed} == {"debug"}
    assert [e["retrying"] for e in failed] == [True, True, True, False]
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    assert metric("iot_collector_upstream_retries_total", endpoint="device_flow") - before == 3


async def test_rejected_credentials_are_an_error_line_at_most_once_a_minute() -> None:
    with capture_logs() as logs:
        async with client(Recorder(api(40001, "签名错误"))) as c:
            for device_no in ("1", "2", "3"):
                with pytest.raises(AuthError) as info:
                    await c.device_flow(device_no)
                assert info.value.attempts == 1
    loud = [e for e in logs if e["log_level"] == "error"]
    assert len(loud) == 1 and "platform.app_secret" in loud[0]["event"]
    assert len([e for e in logs if e["event"] == "upstream request failed"]) == 3


def test_a_path_that_does_not_look_like_a_read_is_warned_about() -> None:
    with capture_logs() as logs:
        client(Recorder(ok(None)), endpoints={"card_status": {"path": "/openapi/iot/simStop"}})
    assert any(e["event"] == "endpoint path does not look like a read endpoint" for e in logs)


# --- real transports against a tiny local server -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_real_transports_round_trip(transport: str) -> None:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append({**{k: str(v) for k, v in form.items()}, "sign": request.headers["sign"]})
        return web.Response(body=SAMPLE, content_type="application/json")

    app = web.Application()
    app.router.add_post("/openapi/iot/queryDeviceFlow", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        c = PlatformClient(config(transport=transport), base_url=str(server.make_url("/")))
        if transport == "aiohttp":
            from httpx_aiohttp import AiohttpTransport

            assert isinstance(c._http._transport, AiohttpTransport)
        async with c:
            devices = await asyncio.gather(*(c.device_flow(str(i)) for i in range(5)))
    assert [d.device_no for d in devices] == [str(i) for i in range(5)]
    assert sorted(s["deviceNo"] for s in seen) == [str(i) for i in range(5)]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_server_hanging_up_is_a_transport_error_not_a_timeout(transport: str) -> None:
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/openapi/iot/queryDeviceFlow", hang_up)
    async with TestServer(app, host="127.0.0.1") as server:
        c = PlatformClient(config(transport=transport, retries={"max_attempts": 1}),
                           base_url=str(server.make_url("/")))
        async with c:
            with pytest.raises(TransportError):
                await c.device_flow("1")


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_a_user_and_password_in_the_base_url_are_sent_as_basic_auth(transport: str) -> None:
    seen: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization", ""), request.path))
        return web.Response(body=SAMPLE, content_type="application/json")

    app = web.Application()
    app.router.add_post("/proxy/openapi/iot/queryDeviceFlow", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        base = str(server.make_url("/proxy")).replace("http://", "http://re%40seller:p%3Ass@")
        async with PlatformClient(config(transport=transport), base_url=base) as c:
            device = await c.device_flow("1")
    assert device.device_no
    # "re@seller:p:ss", percent-decoded, as Basic credentials; the path under the base URL kept.
    assert seen == [("Basic cmVAc2VsbGVyOnA6c3M=", "/proxy/openapi/iot/queryDeviceFlow")]
