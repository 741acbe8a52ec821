"""Staggered scheduling: even spread, stable offsets, no self-overlap, budget arithmetic."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from typing import Any

from collector import metrics, schedule
from collector.schedule import PollJob, PollOutcome, Scheduler, plan_budget, stable_fraction


def make_job(name: str, ids: list[str], interval: float, batch: int, calls: list[tuple[float, tuple[str, ...]]],
             hold: float = 0.0) -> PollJob:
    async def poll(batch_ids: Sequence[str]) -> bool:
        calls.append((time.monotonic(), tuple(batch_ids)))
        if hold:
            await asyncio.sleep(hold)
        return True

    return PollJob(name=name, interval=interval, batch_limit=batch, entities=lambda: ids, poll=poll)


def test_offsets_are_stable_and_spread_exactly_evenly() -> None:
    ids = [f"dev{i}" for i in range(1000)]
    job = make_job("device_status", ids, 300, 1, [])
    items = list(job.work_items())
    fractions = [f for f, _ in items]
    assert fractions == sorted(fractions)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(fractions)}
    assert gaps == {0.001}  # rank-based: one slot every interval/n
    assert items == list(job.work_items())  # the same every cycle
    shuffled = list(make_job("device_status", list(reversed(ids)), 300, 1, []).work_items())
    assert shuffled == items  # independent of inventory order
    other = list(make_job("device_flow", ids, 300, 1, []).work_items())
    assert other[0][1] != items[0][1] or other[0][0] != items[0][0]  # other kinds are phased differently


def test_card_jobs_batch_to_the_endpoint_limit() -> None:
    ids = [f"8986{i:06d}" for i in range(25)]
    items = list(make_job("card_status", ids, 600, 10, []).work_items())
    assert sorted(len(b) for _, b in items) == [5, 10, 10]
    assert sorted(i for _, b in items for i in b) == sorted(ids)
    assert [f for f, _ in items] == sorted(f for f, _ in items)
    account = make_job("account_assets", [], 3600, 0, [])
    assert list(account.work_items()) == [(stable_fraction("job:account_assets"), ())]


def test_the_order_is_kept_while_the_ids_stay_the_same_and_follows_them_when_they_change() -> None:
    ids = [f"dev{i}" for i in range(1000)]
    job = make_job("device_status", ids, 300, 1, [])
    order = job.order()
    assert sorted(order) == sorted(ids) and order != ids
    assert job.order() is order  # not ordered again
    ids.remove(order[10])
    ids.append("dev-new")
    again = job.order()
    assert again is not order and sorted(again) == sorted(ids)
    assert [i for i in again if i != "dev-new"] == [i for i in order if i != order[10]]  # the others keep their places


def test_budget_stretches_intervals_when_the_rate_limit_is_too_small() -> None:
    lines, need = plan_budget([("device_status", 300, 1, 10_000), ("card_status", 600, 10, 20_000)], 10.0)
    assert round(need, 3) == round(10_000 / 300 + 2_000 / 600, 3)
    stretch = need / 9.0
    assert all(abs(line.effective_interval - line.interval * stretch) < 1e-6 for line in lines)
    lines, need = plan_budget([("device_status", 300, 1, 100)], 20.0)
    assert lines[0].effective_interval == 300


def metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_flow_evenly_over_the_interval_and_never_overlap_themselves() -> None:
    calls: list[tuple[float, tuple[str, ...]]] = []
    ids = [f"d{i}" for i in range(200)]
    # Each poll takes longer than the interval: the second cycle must skip them, not stack them.
    job = make_job("device_status", ids, 2.0, 1, calls, hold=2.5)
    sched = Scheduler([job], rate_limit=1000.0, concurrency=200)  # a platform that takes them all at once
    overruns_before = metric("iot_collector_job_overruns_total", poll_job="device_status")
    skipped_before = metric("iot_collector_job_polls_skipped_in_flight_total", poll_job="device_status")
    sched.start()
    while not calls:  # noqa: ASYNC110 - the first cycle starts within a couple of seconds (phase per job)
        await asyncio.sleep(0.05)
    await asyncio.sleep(3.9)
    await sched.stop(grace=0.1)
    first_cycle = calls[:200]
    assert len({c[1] for c in first_cycle}) == 200
    start = first_cycle[0][0]
    buckets = Counter(int((t - start) / 0.2) for t, _ in first_cycle)
    per_bucket = [buckets.get(b, 0) for b in range(10)]
    # 200 polls over 2 s in 0.2 s buckets: 20 each; allow scheduling jitter on a shared machine.
    assert max(per_bucket) <= 30 and min(per_bucket) >= 10, per_bucket
    # Every item was still in flight at its second turn, so nothing was started twice.
    assert len(calls) == 200
    # Slow polls are skipped and counted as such: the job dispatched on time, so no overrun.
    assert sched.status["device_status"].skipped_in_flight >= 150
    assert metric("iot_collector_job_polls_skipped_in_flight_total", poll_job="device_status") - skipped_before >= 150
    assert sched.status["device_status"].overruns == 0
    assert metric("iot_collector_job_overruns_total", poll_job="device_status") == overruns_before


def test_stable_fraction_is_deterministic() -> None:
    assert stable_fraction("x") == stable_fraction("x")
    assert 0 <= stable_fraction("y") < 1


async def test_more_entities_than_planned_stretch_the_intervals_from_the_next_cycle() -> None:
    devices = [f"d{i}" for i in range(30)]
    cards: list[str] = []
    calls: list[tuple[float, tuple[str, ...]]] = []
    jobs = [make_job("device_status", devices, 3.0, 1, calls),
            PollJob("card_status", 6.0, 10, lambda: cards, make_job("x", [], 1, 1, calls).poll, kind="card",
                    planned=lambda: len(cards) or 2 * len(devices))]
    # 30 devices / 3 s + 6 batches of 10 cards (60 assumed) / 6 s = 11 req/s: fits in 90% of 20.
    sched = Scheduler(jobs, rate_limit=20.0)
    assert sched.stretch == 1.0 and round(sched.need, 3) == 11.0
    sched.start()
    try:
        first_run = sched.next_run("device_status")
        assert first_run is not None
        while not calls:  # noqa: ASYNC110 - the first cycle is under way
            await asyncio.sleep(0.05)
        cards.extend(f"c{i}" for i in range(300))  # the devices turned out to hold 5 SIMs each
        # 10 + 30 / 6 = 15 req/s over 18 usable: still fits, the intervals stay...
        assert not sched.replan() and round(sched.need, 3) == 15.0 and sched.stretch == 1.0
        cards.extend(f"c{i}" for i in range(300, 900))
        assert sched.replan()
        # ...10 + 90 / 6 = 25 req/s does not: every interval stretched by 25 / 18.
        assert round(sched.need, 3) == 25.0 and round(sched.stretch, 3) == round(25 / 18, 3)
        assert round(sched.planned_rps(), 3) == 18.0
        status = {j["name"]: j for j in sched.describe()}
        assert round(status["device_status"]["effective_interval_seconds"], 3) == round(3 * 25 / 18, 3)
        assert metrics.REGISTRY.get_sample_value("iot_collector_request_budget_stretch_ratio") == sched.stretch
        # The cycle under way keeps its pace; the next one starts one new interval after it started.
        next_run = sched.next_run("device_status")
        assert next_run is not None and abs(next_run - (first_run + 3 * 25 / 18)) < 0.01
        trigger = sched._scheduler.get_job("device_status").trigger
        assert round(trigger.interval.total_seconds(), 3) == round(3 * 25 / 18, 3)
    finally:
        await sched.stop(grace=0.1)


async def test_entities_found_between_cycles_get_their_first_poll_within_seconds(monkeypatch: Any) -> None:
    monkeypatch.setattr(schedule, "CATCH_UP_DELAY", 0.3)
    monkeypatch.setattr(schedule, "CATCH_UP_SPREAD", 0.3)
    cards = [f"c{i}" for i in range(5)]
    calls: list[tuple[float, tuple[str, ...]]] = []
    job = make_job("card_info", cards, 3600.0, 100, calls)
    job.kind = "card"
    sched = Scheduler([job], rate_limit=100.0)
    sched.start()
    try:
        # The five cards known at the start are polled in the hour of the first cycle; then 150 turn up.
        new = [f"n{i}" for i in range(150)]
        cards.extend(new)
        found_at = time.monotonic()
        sched.discovered("card", new)
        sched.discovered("device", ["ignored"])  # other kinds are not this job's business
        first = []
        while len(first) < 2:
            await asyncio.sleep(0.05)
            first = [ids for _, ids in calls if any(i.startswith("n") for i in ids)]
            assert time.monotonic() - found_at < 5, calls
        # Batched to the job's limit, within a second, not in the hour of the cycle.
        assert sorted(len(ids) for ids in first) == [50, 100]
        assert sorted(i for ids in first for i in ids) == sorted(new)
        assert sched.status["card_info"].first_polls == 150
    finally:
        await sched.stop(grace=0.1)


async def test_ready_once_every_device_has_an_outcome_or_a_grace_after_the_last_poll() -> None:
    release = asyncio.Event()

    async def poll(ids: Sequence[str]) -> PollOutcome:
        if "slow" in ids:
            await release.wait()
        return PollOutcome(len(ids))

    devices = ["a", "b", "slow"]
    sched = Scheduler([PollJob("device_status", 1.0, 1, lambda: devices, poll)], rate_limit=100.0, ready_grace=0.8)
    assert sched.ready() == (False, "first polling cycle not started")
    sched.start()
    try:
        cycle = None
        while cycle is None or cycle.dispatch_end is None:
            await asyncio.sleep(0.02)
            cycle = sched.status["device_status"].first
        ok, reason = sched.ready()
        assert not ok and reason == "first polling cycle not finished: 2/3 devices polled"
        await asyncio.sleep(0.9)
        assert sched.ready() == (True, "ok")  # the slow answer does not hold it up longer than the grace
        release.set()
    finally:
        await sched.stop(grace=0.5)
    # Without a slow one, it is ready as soon as every device has an outcome.
    quick = Scheduler([PollJob("device_status", 1.0, 1, lambda: ["a", "b"], poll)], rate_limit=100.0,
                      ready_grace=60.0)
    quick.start()
    try:
        while not quick.ready()[0]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        first = quick.status["device_status"].first
        assert first is not None and first.settled == 2
    finally:
        await quick.stop(grace=0.1)
    assert Scheduler([PollJob("card_status", 1.0, 10, lambda: [], poll, kind="card")], 10.0).ready()[0]


async def test_a_cycle_whose_dispatching_cannot_keep_up_is_an_overrun() -> None:
    started: list[Sequence[str]] = []

    async def poll(ids: Sequence[str]) -> bool:
        started.append(ids)
        if len(started) == 2:
            time.sleep(1.3)  # noqa: ASYNC251 - holds the event loop past the next cycle's start, mid-dispatch
        return True

    job = PollJob("device_flow", 1.0, 1, lambda: [f"d{i}" for i in range(4)], poll)
    sched = Scheduler([job], rate_limit=1000.0)
    before = metric("iot_collector_job_overruns_total", poll_job="device_flow")
    sched.start()
    try:
        await asyncio.sleep(4.0)
    finally:
        await sched.stop(grace=0.1)
    assert sched.status["device_flow"].overruns >= 1
    assert metric("iot_collector_job_overruns_total", poll_job="device_flow") > before


async def test_first_polls_of_a_large_discovery_use_only_the_rate_the_plan_leaves_free(monkeypatch: Any) -> None:
    monkeypatch.setattr(schedule, "CATCH_UP_DELAY", 0.1)
    monkeypatch.setattr(schedule, "CATCH_UP_SPREAD", 0.1)
    cards: list[str] = []
    calls: list[tuple[float, tuple[str, ...]]] = []
    job = make_job("card_status", cards, 3600.0, 10, calls)
    job.kind = "card"
    # The hourly job plans next to nothing: about 40 of the 40 req/s are free for first polls.
    sched = Scheduler([job], rate_limit=40.0)
    sched.start()
    try:
        new = [f"n{i}" for i in range(2000)]  # 200 requests: five seconds at 40 req/s
        cards.extend(new)
        found_at = time.monotonic()
        sched.discovered("card", new)
        await asyncio.sleep(1.6)
        early = len(calls)
        assert 20 <= early <= 80, early  # about 40 a second, not all 200 at once
        while len(calls) < 200:
            await asyncio.sleep(0.1)
            assert time.monotonic() - found_at < 15, len(calls)
    finally:
        await sched.stop(grace=0.1)


async def test_dispatching_waits_for_room_when_the_platform_answers_slower_than_planned() -> None:
    release = asyncio.Event()
    calls: list[str] = []
    in_flight, most = 0, 0

    async def poll(ids: Sequence[str]) -> bool:
        nonlocal in_flight, most
        calls.append(ids[0])
        in_flight += 1
        most = max(most, in_flight)
        try:
            await release.wait()  # the platform does not answer until released
        finally:
            in_flight -= 1
        return True

    ids = [f"d{i}" for i in range(40)]
    # 40 polls in 5 s is 8 requests/s, inside the rate limit of 10; at most 2 x 7 in flight.
    sched = Scheduler([PollJob("device_status", 5.0, 1, lambda: ids, poll)], rate_limit=10.0, concurrency=7)
    assert sched.max_in_flight == 14
    waited_before = metric("iot_collector_job_dispatch_wait_seconds_total", poll_job="device_status")
    sched.start()
    try:
        for _ in range(80):
            if len(calls) >= 14:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        # The slots of 12 more polls have passed since: none was started, the dispatch is waiting.
        assert len(calls) == 14 and most == 14
        assert metric("iot_collector_polls_in_flight") == 14
        cycle = sched.status["device_status"].cycle
        assert cycle is not None and cycle.dispatched == 14
        release.set()
        for _ in range(100):
            if sched.status["device_status"].last is not None:
                break
            await asyncio.sleep(0.1)
        last = sched.status["device_status"].last
        assert last is not None and last.done == 40 and last.outcome == "ok" and last.waited > 1.0
        assert sorted(calls) == sorted(ids) and most == 14
        assert metric("iot_collector_job_dispatch_wait_seconds_total", poll_job="device_status") - waited_before > 1.0
        assert metric("iot_collector_polls_in_flight") == 0
    finally:
        release.set()
        await sched.stop(grace=1.0)


async def test_a_finished_poll_is_not_kept_until_its_cycle_ends() -> None:
    slow_answer = asyncio.Event()
    slow_called = asyncio.Event()
    finished: list[weakref.ref[asyncio.Task[Any]]] = []

    async def poll(ids: Sequence[str]) -> bool:
        if ids[0] == "slow":
            slow_called.set()
            await slow_answer.wait()
        else:
            task = asyncio.current_task()
            assert task is not None
            finished.append(weakref.ref(task))
        return True

    ids = ["slow"] + [f"d{i}" for i in range(20)]
    sched = Scheduler([PollJob("device_status", 6.0, 1, lambda: ids, poll)], rate_limit=100.0)
    sched.start()
    try:
        await asyncio.wait_for(slow_called.wait(), timeout=10)
        for _ in range(60):
            if len(finished) >= 5:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)
        cycle = sched.status["device_status"].cycle
        assert cycle is not None and cycle.open >= 1 and cycle.done >= 5  # held open by "slow"
        gc.collect()
        assert len(finished) >= 5 and [ref for ref in finished if ref() is not None] == []  # none kept
        slow_answer.set()
        for _ in range(80):
            if sched.status["device_status"].last is not None:
                break
            await asyncio.sleep(0.1)
        assert sched.status["device_status"].last is cycle and cycle.done == 21 and cycle.outcome == "ok"
    finally:
        slow_answer.set()
        await sched.stop(grace=1.0)
