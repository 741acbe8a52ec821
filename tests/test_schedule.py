"""Staggered scheduling: even spread, stable offsets, no self-overlap, budget arithmetic."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence

from collector import metrics
from collector.schedule import PollJob, Scheduler, plan_budget, stable_fraction


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
    items = job.work_items()
    fractions = [f for f, _ in items]
    assert fractions == sorted(fractions)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(fractions)}
    assert gaps == {0.001}  # rank-based: one slot every interval/n
    assert items == job.work_items()  # the same every cycle
    shuffled = make_job("device_status", list(reversed(ids)), 300, 1, []).work_items()
    assert shuffled == items  # independent of inventory order
    other = make_job("device_flow", ids, 300, 1, []).work_items()
    assert other[0][1] != items[0][1] or other[0][0] != items[0][0]  # other kinds are phased differently


def test_card_jobs_batch_to_the_endpoint_limit() -> None:
    ids = [f"8986{i:06d}" for i in range(25)]
    items = make_job("card_status", ids, 600, 10, []).work_items()
    assert sorted(len(b) for _, b in items) == [5, 10, 10]
    assert sorted(i for _, b in items for i in b) == sorted(ids)
    assert make_job("account_assets", [], 3600, 0, []).work_items()[0][1] == ()


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
    sched = Scheduler([job], rate_limit=1000.0)
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
