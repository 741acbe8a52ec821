"""The clock the simulator's answers report on: at any speed, the data's times stay consistent with the
wall clock a collector compares them with (nothing in the future, staleness within the platform's
refresh period in wall time, refreshes spaced by refresh / speed), through jumps and changes of pace;
and the simulated clock on request, for tests that pin simulated dates."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from collector.config import PlatformConfig
from collector.platform.client import PlatformClient
from collector.platform.signing import Signer
from collector.simulator import Simulator
from collector.simulator.clock import SimClock

ZONE = ZoneInfo("Asia/Shanghai")
PLATFORM = {"app_id": "clock", "app_secret": "tick"}
SPEED = 60.0
STATUS_REFRESH, FLOW_REFRESH = 300.0, 600.0  # simulated seconds between the platform's refreshes
# Reported times are whole seconds, and an answer takes a moment to reach us.
SLACK = 1.5
PAST_KEYS = ("lastDeviceStatusAt", "lastDeviceFlowAt", "updatedAt", "createdAt", "controlAt", "lastSimStatusAt",
             "lastActiveAt", "lastRobinAt", "activateAt", "authAt", "swipeAt", "dockResetDate", "lastFlowAt",
             "breakAt")


def unix(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE).timestamp()


def times(value: Any, key: str = "") -> list[tuple[str, float]]:
    """Every (key, Unix time) of the past-time keys anywhere in an answer."""
    found: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found.extend(times(v, k))
    elif isinstance(value, list):
        for v in value:
            found.extend(times(v, key))
    elif key in PAST_KEYS and isinstance(value, str) and value and value != "2000-01-01 00:00:00":
        found.append((key, unix(value)))
    return found


async def post(sim: Simulator, endpoint: str, form: dict[str, str]) -> Any:
    headers = {"appID": "clock", "apiVersion": "2.0", "traceID": uuid.uuid4().hex, "timestamp": str(int(time.time()))}
    headers["sign"] = Signer(secret="tick").sign(headers, form)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(sim.base_url + sim.specs[endpoint].path, data=form, headers=headers)
    body = response.json()
    assert body["code"] == 0, body
    return body["data"]


@pytest.fixture
async def fast() -> AsyncIterator[Simulator]:
    simulator = Simulator(devices=30, seed=8, speed=SPEED, platform=PLATFORM)
    await simulator.start()
    yield simulator
    await simulator.stop()


# --- the mapping ---------------------------------------------------------------------------------------


def test_simulated_instants_are_reported_when_the_wall_clock_passes_them() -> None:
    clock = SimClock(start=1_700_000_000.0, speed=SPEED, reporting="wall")
    wall, sim = time.time(), clock.now()
    assert clock.reported(sim) == pytest.approx(wall, abs=0.05)
    assert clock.reported(sim - 300) == pytest.approx(wall - 5, abs=0.05), "5 simulated minutes: 5 s"
    assert clock.reported(sim - 86400 * 600) == pytest.approx(wall - 86400 * 10, abs=0.05), "before the start too"
    assert clock.simulated(clock.reported(sim + 3600)) == pytest.approx(sim + 3600, abs=0.5)


def test_a_jump_shows_at_its_moment_and_a_new_pace_leaves_the_past_alone() -> None:
    clock = SimClock(start=1_700_000_000.0, speed=SPEED, reporting="wall")
    before = clock.now() - 600
    shown_before = clock.reported(before)
    clock.advance(7200)
    wall = time.time()
    jumped_over = clock.now() - 3600
    assert clock.reported(jumped_over) == pytest.approx(wall, abs=0.05), "an instant jumped over: the jump's moment"
    assert clock.reported(clock.now()) == pytest.approx(wall, abs=0.05)
    assert clock.reported(before) == shown_before
    clock.set_speed(600)
    assert clock.reported(before) == shown_before
    assert clock.reported(clock.now() + 600) == pytest.approx(time.time() + 1, abs=0.05), "ahead: at the new pace"
    clock.set_speed(0)
    frozen_at, now = time.time(), clock.now()
    assert clock.reported(now) == pytest.approx(frozen_at, abs=0.05)
    assert clock.reported(now + 600) == pytest.approx(frozen_at + 1, abs=0.05), "frozen: ahead at the last pace"


def test_the_simulated_clock_reports_simulated_dates_and_a_frozen_clock_needs_it() -> None:
    clock = SimClock(start=1_700_000_000.0, speed=SPEED, reporting="simulated")
    assert clock.reported(1_700_000_123.0) == 1_700_000_123.0
    with pytest.raises(ValueError, match="speed > 0"):
        SimClock(start=1_700_000_000.0, speed=0, reporting="wall")
    assert Simulator(devices=1, speed=0).clock.reporting == "simulated"
    assert Simulator(devices=1, speed=60).clock.reporting == "wall"


# --- the answers at speed 60 ---------------------------------------------------------------------------


async def test_at_speed_60_no_reported_time_is_ahead_of_the_wall_clock_and_staleness_stays_within_a_refresh(
        fast: Simulator) -> None:
    await asyncio.sleep(4)  # four minutes of simulated time
    devices = fast.device_numbers()
    online = 0
    for device_no in devices:
        data = await post(fast, "device_flow", {"deviceNo": device_no})
        now = time.time()
        found = times(data)
        assert found and all(at <= now + 1 for _key, at in found), [(k, now - at) for k, at in found if at > now]
        device = data["device"]
        if device["onlineStatus"] == 1:
            online += 1
            assert now - unix(device["lastDeviceStatusAt"]) <= STATUS_REFRESH / SPEED + SLACK
            assert now - unix(device["lastDeviceFlowAt"]) <= FLOW_REFRESH / SPEED + SLACK
    assert online >= len(devices) // 2
    iccids = fast.iccids()[:10]
    for endpoint in ("card_status", "card_usage", "card_info", "card_actions"):
        data = await post(fast, endpoint, {"iccids": ",".join(iccids)})
        now = time.time()
        assert all(at <= now + 1 for _key, at in times(data)), endpoint


async def test_at_speed_60_the_collector_sees_a_refresh_every_five_seconds(fast: Simulator) -> None:
    fleet = fast.fleet
    index = next(i for i in range(len(fleet)) if fleet.device_state(i, fast.now()).online
                 and fleet.profile(i).off_every == 0)
    device_no = fast.device_numbers()[index]
    config = PlatformConfig.model_validate(PLATFORM)
    seen: list[float] = []
    async with PlatformClient(config, base_url=fast.base_url) as client:
        deadline = time.monotonic() + 13
        while time.monotonic() < deadline:
            observed = await client.device_flow(device_no)
            assert observed.status_at is not None and observed.status_at <= time.time()
            assert time.time() - observed.status_at <= STATUS_REFRESH / SPEED + SLACK
            if not seen or observed.status_at != seen[-1]:
                seen.append(observed.status_at)
            await asyncio.sleep(0.25)
    steps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(steps) >= 1 and all(4 <= step <= 6 for step in steps), steps


async def test_a_jump_or_a_new_pace_keeps_every_time_behind_the_wall_clock(fast: Simulator) -> None:
    async with httpx.AsyncClient() as admin:
        await admin.post(f"{fast.base_url}/_sim/time", json={"advance": 3 * 86400})
        await admin.post(f"{fast.base_url}/_sim/time", json={"speed": 600})
    await asyncio.sleep(1)
    for device_no in fast.device_numbers()[:10]:
        data = await post(fast, "device_flow", {"deviceNo": device_no})
        now = time.time()
        assert all(at <= now + 1 for _key, at in times(data))


async def test_this_months_usage_is_the_simulated_cycle_in_progress(fast: Simulator) -> None:
    async with httpx.AsyncClient() as admin:  # well into another simulated month, same wall month; held there
        await admin.post(f"{fast.base_url}/_sim/time", json={"advance": 45 * 86400, "speed": 0})
    iccids = fast.iccids()[:10]
    wall = datetime.now(ZONE)
    this_month, last_month = f"{wall.year:04d}{wall.month:02d}", (
        f"{wall.year - 1:04d}12" if wall.month == 1 else f"{wall.year:04d}{wall.month - 1:02d}")
    usage = await post(fast, "card_usage", {"iccids": ",".join(iccids)})
    month = await post(fast, "card_month_usage", {"iccids": ",".join(iccids), "month": this_month})
    assert [m["useFlow"] for m in month] == [u["useFlow"] for u in usage]
    assert all(m["month"] == this_month for m in month)
    previous = await post(fast, "card_month_usage", {"iccids": ",".join(iccids), "month": last_month})
    sim_now = datetime.fromtimestamp(fast.now(), ZONE)
    year, number = (sim_now.year - 1, 12) if sim_now.month == 1 else (sim_now.year, sim_now.month - 1)
    expected = [fast.fleet.month_usage(fast.fleet.find_sim(i) or 0, year, number, fast.now()) for i in iccids]
    assert [p["useFlow"] for p in previous] == expected and any(expected)


def test_answers_cached_on_the_wall_clock_match_fresh_ones() -> None:
    import orjson

    cached = Simulator(devices=60, seed=4, speed=SPEED, platform=PLATFORM)
    fresh = cached.wire
    start = cached.now()
    for step in range(40):
        t = start + step * 37.0  # across refresh windows, answers asked again within them
        for index in range(60):
            assert cached.device_data(index, t) == orjson.dumps(fresh.device(cached.fleet.device_state(index, t)))
    assert cached.answers is not None and cached.answers.hits > 0
