"""Staggered polling on APScheduler 3 (asyncio): one job per data kind, each entity at a stable
offset within the job's interval, so requests flow at an even rate instead of bursting.

How a cycle works: every `interval` APScheduler starts the job's cycle. The cycle walks the job's
work items (one device, or one batch of up to 10/100 cards) in the order of their stable offset,
sleeping until each item's slot and dispatching its poll as a task. The offset of an item is its rank
by a hash of its id (so the n items of a job are spread exactly evenly over the interval) plus a phase
per job (so jobs of different kinds don't start together). A cycle that is still dispatching when its
next run is due is an overrun: APScheduler skips the new run (max_instances=1) and we count it; a poll
whose previous run for the same item is still in flight is skipped too. Nothing queues up.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from collector import metrics

log = structlog.get_logger("collector.schedule")

DISCOVERY_RETRY = 30.0  # seconds before a job with nothing to poll yet looks again

PollFn = Callable[[Sequence[str]], Coroutine[Any, Any, bool]]
"""Polls one work item (a device, a batch of cards, the account); True when it succeeded."""


def stable_fraction(text: str) -> float:
    """A number in [0, 1) from a hash of `text`: the same on every run and host."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass
class PollJob:
    """One kind of data to poll: its name, interval, the entity ids it covers and how to poll a batch."""

    name: str
    interval: float
    batch_limit: int  # 1: one entity a request; 0: a single request with no ids (the account)
    entities: Callable[[], Sequence[str]]
    poll: PollFn

    def work_items(self) -> list[tuple[float, tuple[str, ...]]]:
        """(offset fraction in [0, 1), ids) for one cycle, sorted by offset."""
        phase = stable_fraction("job:" + self.name)
        if self.batch_limit == 0:
            return [(phase, ())]
        ids = sorted(self.entities(), key=lambda i: stable_fraction(f"{self.name}:{i}"))
        size = max(self.batch_limit, 1)
        batches = [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
        n = len(batches)
        return sorted((((k / n) + phase) % 1.0, batch) for k, batch in enumerate(batches))


@dataclass
class JobStatus:
    name: str
    interval: float
    effective_interval: float
    enabled: bool = True
    runs: int = 0
    overruns: int = 0
    last_start: float | None = None
    last_end: float | None = None
    last_outcome: str = ""
    last_failures: int = 0
    last_items: int = 0
    lag_seconds: float = 0.0
    skipped_in_flight: int = 0

    def as_dict(self, next_run: float | None) -> dict[str, Any]:
        return {
            "name": self.name, "interval_seconds": self.interval,
            "effective_interval_seconds": self.effective_interval, "runs": self.runs,
            "overruns": self.overruns, "last_start": self.last_start, "last_end": self.last_end,
            "last_outcome": self.last_outcome, "last_failures": self.last_failures,
            "last_items": self.last_items, "lag_seconds": round(self.lag_seconds, 3),
            "skipped_in_flight": self.skipped_in_flight, "next_run": next_run,
        }


def budget(jobs: Sequence[PollJob], rate_limit: float) -> tuple[float, float]:
    """(requests per second the jobs need, factor >= 1 by which intervals must stretch to fit)."""
    lines, need = plan_budget([(j.name, j.interval, j.batch_limit, len(j.entities())) for j in jobs], rate_limit)
    stretch = max((line.effective_interval / line.interval for line in lines), default=1.0)
    return need, stretch


class Scheduler:
    """Runs the poll jobs on an AsyncIOScheduler. Single event loop; `start()` inside it."""

    def __init__(self, jobs: Sequence[PollJob], rate_limit: float, *, first_cycle_done: Callable[[str], None]
                 | None = None) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.rate_limit = rate_limit
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        self._in_flight: dict[tuple[str, tuple[str, ...]], asyncio.Task[bool]] = {}
        self._finishers: set[asyncio.Task[None]] = set()
        self._cycles: set[asyncio.Task[Any]] = set()
        self._origin: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._first_cycle_done = first_cycle_done
        self.need, self.stretch = budget(jobs, rate_limit)
        self.status = {j.name: JobStatus(j.name, j.interval, j.interval * self.stretch) for j in jobs}

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        now = time.time()
        for job in self.jobs.values():
            self._add(job, now)
        self._scheduler.start()

    def _add(self, job: PollJob, now: float) -> None:
        interval = job.interval * self.stretch
        # The first cycle starts within a second or two: the stagger inside the cycle prevents a burst.
        first = now + 0.5 + stable_fraction("start:" + job.name) * min(interval, 2.0)
        self._origin[job.name] = first
        self._scheduler.add_job(
            self._cycle, IntervalTrigger(seconds=interval), args=[job.name], id=job.name, name=job.name,
            max_instances=1, coalesce=True, misfire_grace_time=max(int(interval), 1),
            next_run_time=_dt(first), replace_existing=True,
        )

    def reschedule(self, jobs: Sequence[PollJob]) -> None:
        """Apply a new set of jobs (after a configuration reload); running cycles finish as they are."""
        self.need, self.stretch = budget(jobs, self.rate_limit)
        now = time.time()
        for name in list(self.jobs):
            if name not in {j.name for j in jobs}:
                self._scheduler.remove_job(name)
                del self.jobs[name]
                self.status.pop(name, None)
        for job in jobs:
            old = self.jobs.get(job.name)
            self.jobs[job.name] = job
            status = self.status.setdefault(job.name, JobStatus(job.name, job.interval, job.interval))
            status.interval, status.effective_interval = job.interval, job.interval * self.stretch
            if old is None or old.interval != job.interval:
                self._add(job, now)

    async def stop(self, grace: float) -> None:
        """Stop starting polls, then wait (bounded) for the in-flight ones to finish. Every poll's
        outcome is taken (logged if it crashed), so nothing is left to asyncio's "exception was never
        retrieved" at exit."""
        self._stopping.set()
        if self._scheduler.running:
            # Paused first: the cycles still dispatching see _stopping and return by themselves;
            # shutdown() would cancel them, which APScheduler logs with a traceback.
            self._scheduler.pause()
            if self._cycles:
                await asyncio.wait(self._cycles, timeout=1.0)
            self._scheduler.shutdown(wait=False)
        pending = [t for t in self._in_flight.values() if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
        if self._finishers:
            await asyncio.wait(self._finishers, timeout=1.0)

    # --- cycles ----------------------------------------------------------------------------------------

    async def _cycle(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None or self._stopping.is_set():
            return
        current = asyncio.current_task()
        if current is not None:
            self._cycles.add(current)
            current.add_done_callback(self._cycles.discard)
        status = self.status[name]
        interval = job.interval * self.stretch
        now = time.time()
        # The scheduled start of this cycle (first run + k * interval), not the moment the loop got to
        # it, so every item keeps its place in every cycle and the last one is dispatched before the
        # next cycle is due.
        first = self._origin.get(name, now)
        start = first + max(0, math.floor((now - first) / interval + 0.01)) * interval if interval > 0 else now
        status.last_start, status.runs = now, status.runs + 1
        items = job.work_items()
        if not items:
            # Nothing to poll yet (SIMs are discovered by the device jobs): look again soon rather than
            # a whole interval later.
            retry = min(interval, DISCOVERY_RETRY)
            self._scheduler.modify_job(name, next_run_time=_dt(now + retry))
            self._origin[name] = now + retry
            return
        # Spread over the interval less a small guard, so dispatching never runs into the next cycle.
        spread = interval - min(1.0, interval * 0.02)
        tasks: list[asyncio.Task[bool]] = []
        complete = False
        try:
            complete = await self._dispatch(name, job, status, start, spread, items, tasks)
        finally:
            # Also when stopping or cancelled: the polls already started are awaited and their
            # outcomes taken, and only a whole cycle counts as one.
            finisher = asyncio.create_task(self._finish(name, start, tasks, complete=complete))
            self._finishers.add(finisher)
            finisher.add_done_callback(self._finishers.discard)

    async def _dispatch(self, name: str, job: PollJob, status: JobStatus, start: float, spread: float,
                        items: list[tuple[float, tuple[str, ...]]], tasks: list[asyncio.Task[bool]]) -> bool:
        """Start the polls of one cycle at their slots (into `tasks`); False when stopped midway."""
        max_lag = 0.0
        skipped = 0
        for fraction, ids in items:
            slot = start + fraction * spread
            delay = slot - time.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                    return False  # stopping
                except TimeoutError:
                    pass
            elif self._stopping.is_set():
                return False
            max_lag = max(max_lag, time.time() - slot)
            key = (name, ids)
            previous = self._in_flight.get(key)
            if previous is not None and not previous.done():
                # Its last poll is still running: skip this turn rather than pile up.
                skipped += 1
                status.skipped_in_flight += 1
                if skipped == 1:
                    status.overruns += 1
                    metrics.JOB_OVERRUNS.labels(name).inc()
                continue
            task = asyncio.create_task(job.poll(ids), name=f"poll:{name}")
            self._in_flight[key] = task
            tasks.append(task)
        status.lag_seconds = max_lag
        metrics.JOB_LAG.labels(name).set(max_lag)
        if skipped:
            log.warning("job overrun: polls of the previous cycle still in flight were not started again",
                        job=name, skipped=skipped, items=len(items))
        return True

    async def _finish(self, name: str, start: float, tasks: list[asyncio.Task[bool]], *, complete: bool) -> None:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for key in [k for k, t in self._in_flight.items() if k[0] == name and t.done()]:
            self._in_flight.pop(key, None)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("poll crashed", job=name, error=f"{type(r).__name__}: {r}")
        if not complete:
            return
        failures = sum(1 for r in results if r is not True)
        outcome = "ok" if failures == 0 else "error" if failures == len(results) else "partial"
        end = time.time()
        status = self.status.get(name)
        if status is not None:
            status.last_end, status.last_outcome = end, outcome
            status.last_failures, status.last_items = failures, len(results)
        metrics.JOB_RUNS.labels(name, outcome).inc()
        metrics.JOB_DURATION.labels(name).observe(end - start)
        if outcome != "error":
            metrics.JOB_LAST_SUCCESS.labels(name).set(end)
        log.info("cycle done", job=name, items=len(results), failures=failures,
                 duration_s=round(end - start, 2))
        if self._first_cycle_done is not None:
            self._first_cycle_done(name)

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            metrics.JOB_OVERRUNS.labels(event.job_id).inc()
            if event.job_id in self.status:
                self.status[event.job_id].overruns += 1
            log.warning("job overrun: previous cycle still dispatching, this run skipped", job=event.job_id)
        elif event.exception is not None:
            log.error("job failed", job=event.job_id, error=str(event.exception))

    def next_run(self, name: str) -> float | None:
        job = self._scheduler.get_job(name)
        return job.next_run_time.timestamp() if job is not None and job.next_run_time else None

    def describe(self) -> list[dict[str, Any]]:
        return [s.as_dict(self.next_run(n)) for n, s in self.status.items()]


def _dt(ts: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True)
class BudgetLine:
    job: str
    interval: float
    entities: int
    requests_per_cycle: int
    requests_per_second: float
    effective_interval: float


def plan_budget(jobs: Sequence[tuple[str, float, int, int]], rate_limit: float) -> tuple[list[BudgetLine], float]:
    """The request budget for (job, interval, batch_limit, entity count) rows: per job requests per
    cycle and per second, and the interval each job gets once stretched to fit `rate_limit`.
    Returns (lines, total requests per second needed)."""
    rows = []
    for name, interval, batch_limit, count in jobs:
        requests = 1 if batch_limit == 0 else math.ceil(count / max(batch_limit, 1))
        rows.append((name, interval, count, requests))
    need = sum(r / i for _, i, _, r in rows)
    # Keep 10% headroom for retries; stretch every interval by the same factor when over budget.
    usable = rate_limit * 0.9
    stretch = max(1.0, need / usable) if usable > 0 else 1.0
    lines = [BudgetLine(n, i, c, r, r / i, i * stretch) for n, i, c, r in rows]
    return lines, need
