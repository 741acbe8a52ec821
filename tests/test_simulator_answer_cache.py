"""The device-answer cache: a cached `data` is byte-identical to the one computed afresh at the same
instant, across simulated time (refresh windows, offline windows, suspensions, renewals) and after
every admin override; the envelope spliced around it is byte-identical to serialising it whole; the
cache stays within its bound."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from collector.config import PlatformConfig
from collector.platform.signing import Signer
from collector.simulator import Simulator
from collector.simulator.answers import AnswerCache
from collector.simulator.contract import Endpoint
from collector.simulator.fleet import FLOW_REFRESH, INFO_FLOW_REFRESH, STATUS_REFRESH, bucket
from collector.simulator.wire import OK_MESSAGE

APP_ID, SECRET = "app-under-test", "s3cret"
PLATFORM = PlatformConfig(app_id=APP_ID, app_secret=SECRET)  # type: ignore[arg-type]
START = 1758192050.0


def fresh(sim: Simulator, index: int, t: float, info: bool) -> bytes:
    """The uncached answer: what the simulator served before the cache existed."""
    return orjson.dumps(sim.wire.device(sim.fleet.device_state(index, t, info=info)))


def assert_faithful(sim: Simulator, t: float, indexes: range | list[int] | None = None) -> None:
    for index in indexes if indexes is not None else range(len(sim.fleet)):
        for info in (False, True):
            assert sim.device_data(index, t, info) == fresh(sim, index, t, info), (index, info, t)


def boundaries(sim: Simulator, index: int, t: float) -> list[float]:
    """Instants where device `index`'s answer may change soon after `t`."""
    device = sim.fleet.profile(index)
    found = [bucket(t, STATUS_REFRESH, device.status_phase) + STATUS_REFRESH,
             bucket(t, FLOW_REFRESH, device.flow_phase) + FLOW_REFRESH,
             bucket(t, INFO_FLOW_REFRESH, device.flow_phase) + INFO_FLOW_REFRESH,
             device.next_offline_change(t)]
    for sim_profile in device.sims:
        found.extend(x for x in (sim_profile.fixed_end, sim_profile.suspend_at,
                                 sim.fleet.end_at(sim_profile, t)) if x is not None)
    return found


def test_cached_answers_match_fresh_ones_across_simulated_time() -> None:
    sim = Simulator(devices=120, seed=5, speed=0, start=START)
    draw = random.Random(11).random
    t = START
    for _ in range(60):
        assert_faithful(sim, t)
        # Mostly within refresh windows (cache hits), sometimes across many of them.
        t += draw() * 90 if draw() < 0.7 else draw() * 4 * 86400
    assert sim.answers is not None and sim.answers.hits > 0 and sim.answers.misses > 0


def test_cached_answers_match_fresh_ones_at_every_kind_of_boundary() -> None:
    sim = Simulator(devices=150, seed=9, speed=0, start=START)
    draw = random.Random(3).random
    for index in range(len(sim.fleet)):
        t = START + draw() * 20 * 86400
        for boundary in sorted(boundaries(sim, index, t)):
            if boundary <= t:
                continue
            # Fill the cache just before the boundary, then ask around it.
            for probe in (boundary - 1.0, boundary - 2e-3, boundary - 1e-6, boundary, boundary + 1e-6, boundary + 1.0):
                if probe >= t:
                    t = probe
                    assert_faithful(sim, t, [index])


async def admin(sim: Simulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, \
            session.request(method, f"{sim.base_url}/_sim/{path}", json=body) as response:
        return response.status, await response.json()


async def raw_call(sim: Simulator, endpoint: Endpoint, device_no: str) -> bytes:
    form = {"deviceNo": device_no}
    signed = {"appID": APP_ID, "apiVersion": "2.0", "traceID": uuid.uuid4().hex, "timestamp": str(int(time.time()))}
    signed["sign"] = Signer(secret=SECRET).sign(signed, form)
    async with aiohttp.ClientSession() as session, \
            session.post(sim.base_url + sim.specs[endpoint].path, data=form, headers=signed) as response:
        assert response.status == 200
        return await response.read()


@pytest.fixture
async def served() -> AsyncIterator[Simulator]:
    simulator = Simulator(devices=40, seed=2, speed=0, platform=PLATFORM, start=START)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def assert_served_faithfully(sim: Simulator, indexes: list[int]) -> None:
    """Over HTTP: the whole body is the envelope orjson would write around the fresh `data`."""
    now = sim.now()
    for index in indexes:
        for endpoint, info in ((Endpoint.DEVICE_FLOW, False), (Endpoint.DEVICE_INFO, True)):
            body = await raw_call(sim, endpoint, sim.device_numbers()[index])
            answer = orjson.loads(body)
            expected = orjson.dumps({"code": 0, "message": OK_MESSAGE,
                                     "data": orjson.loads(fresh(sim, index, now, info)),
                                     "timestamp": answer["timestamp"], "traceID": answer["traceID"]})
            assert body == expected, (index, endpoint)
    assert_faithful(sim, now)


async def test_cached_answers_match_fresh_ones_after_every_admin_override(served: Simulator) -> None:
    sim = served
    assert sim.answers is not None
    device_nos = sim.device_numbers()
    iccids = sim.iccids()
    target, other = 3, 7
    device_no = device_nos[target]
    iccid = iccids[sim.fleet.ids.sim_start[other]]
    await assert_served_faithfully(sim, [target, other])  # fills the cache
    hits = sim.answers.hits
    await assert_served_faithfully(sim, [target, other])
    assert sim.answers.hits > hits  # the second round is served from the cache
    steps: list[tuple[str, str, Any]] = [
        ("POST", f"devices/{device_no}/offline", None),
        ("POST", "time", {"advance": 120}),
        ("POST", f"devices/{device_no}/online", None),
        ("POST", f"devices/{device_no}/rssi", {"dbm": -113}),
        ("POST", "time", {"advance": 30}),
        ("POST", f"devices/{device_no}/rssi", {"dbm": None}),
        ("POST", f"sims/{iccid}/exhaust", {"remaining_ratio": 0.001}),
        ("POST", "time", {"advance": 7200}),
        ("POST", f"sims/{iccid}/suspend", None),
        ("POST", "time", {"advance": 10}),
        ("POST", f"sims/{iccid}/resume", None),
        ("POST", f"devices/{device_no}/offline", None),
        ("POST", "time", {"advance": 86400 * 3}),
        ("POST", "reset", None),
        ("POST", "time", {"speed": 60}),
    ]
    for method, path, body in steps:
        status, _ = await admin(sim, method, path, body)
        assert status == 200, path
        await assert_served_faithfully(sim, [target, other])


def test_the_cache_is_bounded_and_can_be_disabled() -> None:
    sim = Simulator(devices=50, seed=1, speed=0, start=START, answer_cache=5)
    assert_faithful(sim, START)
    assert sim.answers is not None and len(sim.answers) <= 5
    assert_faithful(sim, START + 1)
    assert len(sim.answers) <= 5
    off = Simulator(devices=5, seed=1, speed=0, start=START, answer_cache=0)
    assert off.answers is None
    assert_faithful(off, START)
    with pytest.raises(ValueError):
        AnswerCache(0)
