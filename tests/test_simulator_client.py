"""The real platform client (collector.platform.client.PlatformClient) against the simulator over real
HTTP on 127.0.0.1: every read endpoint, batch splitting (counted by the simulator), signing good and
bad, and each injected fault with the client's reaction (retry then success, or the typed error, with
no retry where a retry cannot help). Backoff sleeps are recorded, not slept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from collector.config import PlatformConfig
from collector.endpoints import ENDPOINTS
from collector.platform.client import PlatformClient
from collector.platform.errors import (
    ApiError,
    AuthError,
    HttpStatusError,
    ParseError,
    PlatformTimeout,
    RateLimitedError,
    TransportError,
)
from collector.simulator import Simulator
from collector.simulator.contract import Endpoint

APP_ID, SECRET = "fleet-42", "top-secret"
START = 1758192050.0


def platform(**changes: Any) -> PlatformConfig:
    settings: dict[str, Any] = {
        "app_id": APP_ID, "app_secret": SECRET, "rate_limit": 1000, "burst": 200, "timeout": 1.0,
        "connect_timeout": 0.5, "retries": {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 2},
    }
    settings.update(changes)
    return PlatformConfig.model_validate(settings)


class Sleeps:
    """Stands in for asyncio.sleep in the client's backoff: records the delays, waits for nothing.
    `on_wait(seconds)` runs instead, to play what the wait would have changed."""

    def __init__(self, on_wait: Callable[[float], None] | None = None) -> None:
        self.delays: list[float] = []
        self._on_wait = on_wait

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self._on_wait is not None:
            self._on_wait(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(devices=80, seed=11, speed=0, platform=platform(), start=START)
    await simulator.start()
    yield simulator
    await simulator.stop()


def client(sim: Simulator, sleeps: Sleeps | None = None, **changes: Any) -> PlatformClient:
    return PlatformClient(platform(**changes), base_url=sim.base_url, sleep=sleeps or Sleeps())


async def fetch(c: PlatformClient, endpoint: str, ids: list[str], **form: str) -> list[Any]:
    """One poll of `endpoint`, its observations (or its first failure raised)."""
    return (await c.fetch(ENDPOINTS[endpoint], ids, form=form or None)).unwrap()


def counts(sim: Simulator, endpoint: Endpoint) -> dict[str, int]:
    return sim.stats.counts.get(endpoint.value, {})


def faults(sim: Simulator, **settings: Any) -> None:
    sim.faults.update(settings, clear=True)


# --- every read endpoint ---------------------------------------------------------------------------------


async def test_every_read_endpoint_parses_into_what_the_simulator_holds(sim: Simulator) -> None:
    fleet = sim.fleet
    index = next(i for i in range(len(fleet)) if len(fleet.profile(i).sims) >= 2)
    device_no = sim.device_numbers()[index]
    state = fleet.device_state(index, sim.now())
    async with client(sim) as c:
        device = await c.device_flow(device_no)
        assert device.device_no == device_no and device.online == state.online
        assert device.rssi_dbm == state.rssi and device.battery_percent == state.battery
        assert device.effective_sim == state.effective_slot
        assert [s.iccid for s in device.sims] == [s.profile.iccid for s in state.sims]
        assert [s.used_bytes for s in device.sims] == [s.used * 1024 for s in state.sims]
        assert [s.total_bytes for s in device.sims] == [s.total * 1024 for s in state.sims]
        assert device.location is not None and device.location.province_code
        assert device.warranty_expires_at is None, "the sentinel date is 'unset'"
        assert all(e.event_type == 251 for e in device.events)

        (info,) = await fetch(c, "device_info", [device_no])
        assert info.flow_at is not None and device.flow_at is not None and info.flow_at <= device.flow_at

        iccids = [s.iccid for s in device.sims]
        cards = await fetch(c, "card_info", iccids)
        assert [(s.iccid, s.used_bytes, s.slot) for s in cards] == \
            [(s.iccid, s.used_bytes, s.slot) for s in device.sims]
        statuses = await fetch(c, "card_status", iccids)
        assert [(s.sim_status, s.online_status) for s in statuses] == \
            [(s.sim_status, s.online_status) for s in device.sims]
        usage = await fetch(c, "card_usage", iccids)
        assert [u.used_bytes for u in usage] == [s.used_bytes for s in device.sims]
        assert [u.cycle_start for u in usage] == [s.cycle_start for s in device.sims]
        month = await fetch(c, "card_month_usage", iccids, month="202509")
        assert [m.used_bytes for m in month] == [s.used_bytes for s in device.sims], "this month so far"
        assets = await c.account_assets()
        assert assets.balance is not None and assets.balance > 0 and assets.frozen_balance is not None
        assert sim.fleet.suspend(fleet.find_sim(iccids[0]) or 0, sim.now())
        actions = await fetch(c, "card_actions", iccids)
        assert actions[0].iccid == iccids[0] and actions[0].action == "1" and actions[0].status == 1
    assert sum(sum(counts(sim, e).values()) for e in Endpoint) == 8
    assert all(counts(sim, e) == {"ok": 1} for e in Endpoint)


# --- batches ---------------------------------------------------------------------------------------------


async def test_batches_are_split_to_the_platforms_limits(sim: Simulator) -> None:
    iccids = sim.iccids()
    assert len(iccids) >= 150
    async with client(sim) as c:
        assert len(await fetch(c, "card_status", iccids[:25])) == 25
        assert len(await fetch(c, "card_usage", iccids[:25])) == 25
        assert len(await fetch(c, "card_month_usage", iccids[:25], month="202508")) == 25
        assert len(await fetch(c, "card_info", iccids[:150])) == 150
        assert len(await fetch(c, "card_actions", iccids[:150])) >= 0
    assert counts(sim, Endpoint.CARD_STATUS) == {"ok": 3}, "25 cards, 10 a request"
    assert counts(sim, Endpoint.CARD_USAGE) == {"ok": 3}
    assert counts(sim, Endpoint.CARD_MONTH_USAGE) == {"ok": 3}
    assert counts(sim, Endpoint.CARD_INFO) == {"ok": 2}, "150 cards, 100 a request"
    assert counts(sim, Endpoint.CARD_ACTIONS) == {"ok": 2}
    assert sim.stats.cards["card_status"] == 25 and sim.stats.cards["card_info"] == 150


async def test_unknown_cards_come_back_missing(sim: Simulator) -> None:
    asked = [*sim.iccids()[:3], "89860000000000000001"]
    async with client(sim) as c:
        result = await c.fetch(ENDPOINTS["card_status"], asked)
    assert [s.iccid for s in result.items] == asked[:3] and result.missing == asked[3:] and not result.failed


# --- signing ---------------------------------------------------------------------------------------------


async def test_a_wrong_secret_is_an_auth_error_without_retry(sim: Simulator) -> None:
    async with client(sim, app_secret="not-the-secret") as c:
        with pytest.raises(AuthError) as caught:
            await c.device_flow(sim.device_numbers()[0])
    assert caught.value.code == 40001 and "app_secret" in str(caught.value)
    assert counts(sim, Endpoint.DEVICE_FLOW) == {"bad_sign": 1}


async def test_an_unknown_app_id_is_an_auth_error_without_retry(sim: Simulator) -> None:
    async with client(sim, app_id="stranger") as c:
        with pytest.raises(AuthError) as caught:
            await fetch(c, "card_status", sim.iccids()[:2])
    assert caught.value.code == 40002 and counts(sim, Endpoint.CARD_STATUS) == {"unknown_app": 1}


async def test_other_sign_recipes_work_when_both_sides_share_them() -> None:
    recipe = {"hash": "hmac-sha256", "case": "upper", "template": "{apiVersion}|{traceID}|{timestamp}|{body}"}
    simulator = Simulator(devices=5, seed=1, speed=0, platform=platform(sign=recipe), start=START)
    await simulator.start()
    try:
        async with client(simulator, sign=recipe) as c:
            assert (await c.device_flow(simulator.device_numbers()[0])).device_no
        async with client(simulator, sign={**recipe, "case": "lower", "hash": "sha256"}) as c:
            with pytest.raises(AuthError):
                await c.device_flow(simulator.device_numbers()[0])
    finally:
        await simulator.stop()


async def test_an_unknown_device_is_an_api_error_without_retry(sim: Simulator) -> None:
    async with client(sim) as c:
        with pytest.raises(ApiError) as caught:
            await c.device_flow("0000000001")
    assert caught.value.code == 40404 and not caught.value.transient
    assert counts(sim, Endpoint.DEVICE_FLOW) == {"unknown_device": 1}


# --- faults and the client's reaction ---------------------------------------------------------------


async def test_http_5xx_is_retried_then_succeeds(sim: Simulator) -> None:
    faults(sim, error_rate=1.0, limit=2)
    sleeps = Sleeps()
    async with client(sim, sleeps) as c:
        assert (await c.device_flow(sim.device_numbers()[0])).device_no
    assert counts(sim, Endpoint.DEVICE_FLOW) == {"fault_http_error": 2, "ok": 1}
    assert len(sleeps.delays) == 2 and sleeps.delays[1] > sleeps.delays[0] * 0.9, "backing off"


async def test_http_5xx_that_persists_is_a_typed_error_after_the_last_attempt(sim: Simulator) -> None:
    faults(sim, error_rate=1.0, error_status=502)
    async with client(sim) as c:
        with pytest.raises(HttpStatusError) as caught:
            await fetch(c, "card_usage", sim.iccids()[:3])
    assert caught.value.status == 502 and caught.value.transient
    assert counts(sim, Endpoint.CARD_USAGE) == {"fault_http_error": 3}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_dropped_connections_are_retried_then_typed(sim: Simulator, transport: str) -> None:
    faults(sim, drop_rate=1.0, limit=1)
    async with client(sim, transport=transport) as c:
        assert (await c.device_flow(sim.device_numbers()[1])).device_no
        faults(sim, drop_rate=1.0)
        with pytest.raises(TransportError):
            await c.device_flow(sim.device_numbers()[1])
    assert counts(sim, Endpoint.DEVICE_FLOW) == {"fault_drop": 4, "ok": 1}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_timeouts_are_retried_then_typed(sim: Simulator, transport: str) -> None:
    faults(sim, timeout_rate=1.0, limit=1)
    changes: dict[str, Any] = {"transport": transport, "timeout": 0.25, "connect_timeout": 0.25}
    async with client(sim, **changes) as c:
        assert (await c.account_assets()).balance is not None
        faults(sim, timeout_rate=1.0)
        with pytest.raises(PlatformTimeout):
            await c.account_assets()
    assert counts(sim, Endpoint.ACCOUNT_ASSETS) == {"fault_timeout": 4, "ok": 1}


async def test_added_latency_beyond_the_clients_timeout_is_a_timeout(sim: Simulator) -> None:
    faults(sim, latency=1.0)
    async with client(sim, timeout=0.15, connect_timeout=0.1, retries={"max_attempts": 1}) as c:
        with pytest.raises(PlatformTimeout):
            await c.device_flow(sim.device_numbers()[0])
        faults(sim, latency=0.05, latency_jitter=0.05)
        assert (await c.device_flow(sim.device_numbers()[0])).device_no


async def test_malformed_json_is_a_parse_error_retried_then_typed(sim: Simulator) -> None:
    faults(sim, malformed_rate=1.0, limit=1)
    async with client(sim) as c:
        assert await fetch(c, "card_info", sim.iccids()[:2])
        faults(sim, malformed_rate=1.0)
        with pytest.raises(ParseError) as caught:
            await fetch(c, "card_info", sim.iccids()[:2])
    assert "not JSON" in str(caught.value)
    assert counts(sim, Endpoint.CARD_INFO) == {"fault_malformed": 4, "ok": 1}


async def test_non_zero_codes_are_retried_only_when_transient(sim: Simulator) -> None:
    faults(sim, code_rate=1.0, code=50000, limit=1)
    async with client(sim) as c:
        assert await fetch(c, "card_status", sim.iccids()[:2])
        faults(sim, code_rate=1.0, code=40777, code_message="未知错误")
        with pytest.raises(ApiError) as caught:
            await fetch(c, "card_status", sim.iccids()[:2])
    assert caught.value.code == 40777 and caught.value.platform_message == "未知错误"
    assert counts(sim, Endpoint.CARD_STATUS) == {"fault_code": 2, "ok": 1}, "40777 is not retried"


async def test_the_qps_cap_slows_the_client_down(sim: Simulator) -> None:
    faults(sim, qps_cap=3)
    devices = sim.device_numbers()[:12]
    async with client(sim, max_concurrency=4, retries={"max_attempts": 10, "backoff_initial": 0.3,
                                                       "backoff_max": 2}) as c:
        sleeps = Sleeps()
        c._sleep = sleeps  # the backoff does not wait; the rate limiter (its own clock) does
        results = await asyncio.gather(*(c.device_flow(no) for no in devices), return_exceptions=True)
        assert c.limiter.current_rate < c.limiter.configured_rate, "throttling halved the client's rate"
    ok = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, RateLimitedError)]
    assert len(ok) + len(limited) == len(devices)
    assert counts(sim, Endpoint.DEVICE_FLOW)["rate_limited"] >= 1 and len(ok) >= 3


async def test_http_429_waits_at_least_retry_after(sim: Simulator) -> None:
    faults(sim, qps_cap=1, throttle_http=True)

    def waited(seconds: float) -> None:
        if seconds >= 1.0:  # a second has passed: the platform's window is open again
            faults(sim)

    sleeps = Sleeps(waited)
    async with client(sim, sleeps) as c:
        # Of three quick calls two share a second: that one gets 429 + Retry-After: 1, then its retry passes.
        for _ in range(3):
            await c.account_assets()
        assert c.limiter.current_rate < c.limiter.configured_rate
    assert any(d >= 1.0 for d in sleeps.delays)
    assert counts(sim, Endpoint.ACCOUNT_ASSETS) == {"ok": 3, "throttled_http": 1}


# --- the fleet steered mid-run --------------------------------------------------------------------------


async def test_admin_overrides_show_in_the_clients_observations(sim: Simulator) -> None:
    fleet = sim.fleet
    index = next(i for i in range(len(fleet)) if fleet.device_state(i, sim.now()).online)
    device_no = sim.device_numbers()[index]
    now = sim.now()
    async with client(sim) as c:
        fleet.force_offline(index, now)
        fleet.pin_rssi(index, -117, now)
        device = await c.device_flow(device_no)
        assert device.online is False and device.status_at == now
        fleet.end_forced_offline(index, now)
        assert (await c.device_flow(device_no)).rssi_dbm == -117
        sim_index = next(s.profile.index for s in fleet.device_state(index, now).sims
                         if s.used < 0.9 * s.total)
        iccid = sim.iccids()[sim_index]
        fleet.exhaust(sim_index, now)
        usage = (await fetch(c, "card_usage", [iccid]))[0]
        assert usage.total_bytes and usage.used_bytes
        assert 0 < usage.total_bytes - usage.used_bytes <= 0.0011 * usage.total_bytes
        fleet.suspend(sim_index, now)
        assert (await fetch(c, "card_status", [iccid]))[0].sim_status == 5
