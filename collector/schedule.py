"""Staggered polling on APScheduler 3 (asyncio): one job per data kind, each entity at a stable
offset within the job's interval, so requests flow at an even rate instead of bursting; the request
budget those jobs need, re-planned while the fleet's SIMs are discovered; first polls of entities
found between two cycles; and when the first cycle counts as done (`readyz`).

How a cycle works: every `interval` APScheduler starts the job's cycle. The cycle walks the job's
work items (one device, or one batch of up to 10/100 cards) in the order of their stable offset,
sleeping until each item's slot and dispatching its poll as a task. The offset of an item is its rank
by a hash of its id (so the n items of a job are spread exactly evenly over the interval) plus a phase
per job (so jobs of different kinds don't start together). Nothing queues up:

* an **overrun** is a cycle still dispatching when its next run is due: APScheduler skips the new run
  (max_instances=1) and we count it. It means the dispatching could not keep up with the interval.
* a poll whose previous turn for the same item is still in flight (a slow answer being retried) is
  **skipped in flight**: counted on its own, never as an overrun, since the job itself runs on time.
* **back-pressure**: at most `max_in_flight` polls are started and not finished at any time (twice
  the platform's concurrency limit). When the platform answers slower
  than the plan, dispatching waits for room instead of piling up waiting polls without bound; the
  job then falls behind its slots (`job_lag_seconds`, `job_dispatch_wait_seconds_total`) and, if it
  cannot catch up, overruns.

A finished poll is not kept: its outcome is counted in its cycle by a done callback (a crash logged
there), so memory holds only the polls in flight, however large the fleet.

The budget: each job needs (requests per cycle) / interval requests per second, from the number of
entities it covers (`PollJob.planned`: SIMs not discovered yet are estimated). When the total is over
90% of the rate limit, every interval is stretched by the same factor. `replan()` recomputes it when
the counts change; a new stretch applies from each job's next cycle.

An entity tracked after the start (a SIM discovered inside a device, a card added to the inventory)
is polled by every job of its kind within CATCH_UP_DELAY + CATCH_UP_SPREAD seconds (`discovered`),
not a whole interval later (6 h for card info); its job's cycles then include it as usual. Those
first polls use the part of the rate limit the plan leaves free: when a large fleet is discovered at
start, they are spread over as long as that takes (minutes), rather than crowding the cycles out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
import zlib
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from collector import metrics

log = structlog.get_logger("collector.schedule")

DISCOVERY_RETRY = 30.0  # seconds before a job with nothing to poll yet looks again
CATCH_UP_DELAY = 10.0  # seconds new entities are gathered before their first polls (so they share requests)
CATCH_UP_SPREAD = 20.0  # seconds over which those first polls are spread, at least
ASSUMED_SIMS_PER_DEVICE = 2  # SIMs the budget counts for a device that has not shown its SIMs yet
USABLE_SHARE = 0.9  # of the rate limit the schedule plans; the rest is kept for retries
REPLAN_TOLERANCE = 0.01  # a stretch changing by less than this share leaves the intervals alone


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll of a work item came to, in entities: how many it asked about, how many failed
    and how many the platform said it does not know. True when none failed and none was unknown."""

    entities: int
    failed: int = 0
    not_found: int = 0

    def __bool__(self) -> bool:
        return self.failed == 0 and self.not_found == 0


PollFn = Callable[[Sequence[str]], Coroutine[Any, Any, "PollOutcome | bool"]]
"""Polls one work item (a device, a batch of cards, the account)."""


def _outcome(result: PollOutcome | bool, entities: int) -> PollOutcome:
    if isinstance(result, PollOutcome):
        return result
    return PollOutcome(entities, failed=0 if result else entities)


def stable_fraction(text: str) -> float:
    """A number in [0, 1) from the CRC-32 of `text`: the same on every run and host. Only the order of
    these numbers matters (ranks place the items), and a CRC orders 200,000 ids in a tenth of a second."""
    return zlib.crc32(text.encode()) / 2.0**32


@dataclass
class PollJob:
    """One kind of data to poll: its name, interval, the entity ids it covers and how to poll a batch.

    `entities` gives the ids to poll now (an entity backing off is left out); `kind` is what they are
    ("device", "card" or "account"); `planned` how many entities the request budget counts (by
    default those of `entities`)."""

    name: str
    interval: float
    batch_limit: int  # 1: one entity a request; 0: a single request with no ids (the account)
    entities: Callable[[], Sequence[str]]
    poll: PollFn
    kind: str = "device"
    planned: Callable[[], int] | None = None
    _ids: list[str] = field(default_factory=list, init=False, repr=False)  # the last ids ordered
    _order: list[str] = field(default_factory=list, init=False, repr=False)

    def planned_count(self) -> int:
        if self.batch_limit == 0:
            return 1
        return self.planned() if self.planned is not None else len(self.entities())

    def order(self, entities: Sequence[str] | None = None) -> list[str]:
        """The ids of one cycle (by default the job's entities now) in the order of their places: by
        the CRC-32 of job name and id, so each keeps its place every cycle, whatever the inventory's
        order. Kept while the ids stay the same: at 200,000 ids, ordering takes a quarter of a second
        of the event loop, comparing with the last cycle's ids a hundredth."""
        ids = list(self.entities() if entities is None else entities)
        if ids != self._ids:
            prefix = zlib.crc32(f"{self.name}:".encode())  # the CRC of "name:id", continued from "name:"
            keys = [zlib.crc32(i.encode(), prefix) / 2.0**32 for i in ids]  # floats: the faster sort
            self._ids, self._order = ids, [ids[k] for k in sorted(range(len(ids)), key=keys.__getitem__)]
        return self._order

    def work_items(self, ordered: Sequence[str] | None = None) -> Iterator[tuple[float, tuple[str, ...]]]:
        """(offset fraction in [0, 1), ids) of one cycle's requests in offset order, made as they are
        consumed, from `ordered` (by default `order()`). Batch k of n goes at k / n plus the job's
        phase (so requests are exactly evenly spread and jobs are staggered), wrapping past 1."""
        phase = stable_fraction("job:" + self.name)
        if self.batch_limit == 0:
            yield phase, ()
            return
        ids = self.order() if ordered is None else ordered
        size = max(self.batch_limit, 1)
        n = -(-len(ids) // size)
        if n == 0:
            return

        def fraction(k: int) -> float:
            return (k / n + phase) % 1.0

        # The batch with the smallest fraction goes first: the first to wrap past 1 (computed, then
        # settled among its neighbours against rounding).
        wrap = math.ceil((1.0 - phase) * n)
        first = min(((wrap + d) % n for d in (-1, 0, 1)), key=lambda k: (fraction(k), k))
        for j in range(n):
            k = (first + j) % n
            yield fraction(k), tuple(ids[k * size:(k + 1) * size])


@dataclass(eq=False)
class Cycle:
    """One cycle of a job, in entities: how many it covers, has started polls for, has outcomes for
    (failed and unknown among them) and skipped because their previous poll was still in flight."""

    start: float  # its scheduled start
    entities: int
    dispatched: int = 0
    done: int = 0
    failed: int = 0
    not_found: int = 0
    skipped: int = 0
    open: int = 0  # polls started that have no outcome yet
    waited: float = 0.0  # seconds dispatching waited for room (back-pressure)
    dispatching: bool = True
    complete: bool = False  # dispatched every poll (not stopped midway)
    dispatch_end: float | None = None  # when its last poll was started
    end: float | None = None  # when every poll it started had an outcome
    abort: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def settled(self) -> int:
        """Entities with an outcome, skipped ones included."""
        return self.done + self.skipped

    @property
    def outcome(self) -> str:
        bad = self.failed + self.not_found
        if self.done == 0:
            return "skipped" if self.skipped else "ok"
        return "ok" if bad == 0 else "error" if bad >= self.done else "partial"

    def as_dict(self) -> dict[str, Any]:
        return {"entities": self.entities, "dispatched": self.dispatched, "done": self.settled,
                "failed": self.failed, "not_found": self.not_found, "skipped": self.skipped}


@dataclass
class JobStatus:
    name: str
    interval: float
    effective_interval: float
    kind: str = "device"
    enabled: bool = True
    runs: int = 0
    overruns: int = 0
    last_start: float | None = None
    last_end: float | None = None
    lag_seconds: float = 0.0
    skipped_in_flight: int = 0
    first_polls: int = 0
    cycle: Cycle | None = None  # the cycle running now (dispatching, or waiting for its last outcomes)
    last: Cycle | None = None  # the last cycle that finished
    first: Cycle | None = None  # the first cycle (readiness)

    def as_dict(self, next_run: float | None) -> dict[str, Any]:
        last = self.last
        return {
            "name": self.name, "kind": self.kind, "interval_seconds": self.interval,
            "effective_interval_seconds": self.effective_interval, "runs": self.runs,
            "overruns": self.overruns, "last_start": self.last_start, "last_end": self.last_end,
            "last_outcome": last.outcome if last else "",
            "last_entities": last.entities if last else 0,
            "last_failures": (last.failed + last.not_found) if last else 0,
            "last_not_found": last.not_found if last else 0,
            "cycle": self.cycle.as_dict() if self.cycle is not None else None,
            "lag_seconds": round(self.lag_seconds, 3), "skipped_in_flight": self.skipped_in_flight,
            "first_polls": self.first_polls, "next_run": next_run,
        }


class Scheduler:
    """Runs the poll jobs on an AsyncIOScheduler. Single event loop; `start()` inside it.

    `ready_grace`: how long after its last poll started a first cycle waits for slow answers
    before it counts as done for readiness (the daemon passes `platform.timeout`). `concurrency`:
    the platform's concurrency limit (`platform.max_concurrency`), for `max_in_flight`."""

    def __init__(self, jobs: Sequence[PollJob], rate_limit: float, *, ready_grace: float = 10.0,
                 concurrency: int = 16) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.rate_limit = rate_limit
        self.concurrency = concurrency
        self.ready_grace = ready_grace
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        self._in_flight: dict[tuple[str, tuple[str, ...]], asyncio.Task[Any]] = {}
        self._room = asyncio.Event()  # set when a poll finishes (and on abort)
        self._cycles: set[asyncio.Task[Any]] = set()
        self._origin: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._pending: dict[str, dict[str, None]] = {}  # per job: ids waiting for their first poll
        self._catch_up: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started = False
        self.need, self.stretch = 0.0, 1.0
        self.lines: list[BudgetLine] = []
        self.status = {j.name: JobStatus(j.name, j.interval, j.interval, kind=j.kind) for j in jobs}
        self._logged_need = 0.0
        self.replan()

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        now = time.time()
        for job in self.jobs.values():
            self._add(job, now)
        self._scheduler.start()
        self._started = True

    def _add(self, job: PollJob, now: float) -> None:
        interval = self._intervals.setdefault(job.name, job.interval * self.stretch)
        # The first cycle starts within a second or two: the stagger inside the cycle prevents a burst.
        first = now + 0.5 + stable_fraction("start:" + job.name) * min(interval, 2.0)
        self._origin[job.name] = first
        self._scheduler.add_job(
            self._cycle, IntervalTrigger(seconds=interval), args=[job.name], id=job.name, name=job.name,
            max_instances=1, coalesce=True, misfire_grace_time=max(int(interval), 1),
            next_run_time=_dt(first), replace_existing=True,
        )

    def reschedule(self, jobs: Sequence[PollJob]) -> None:
        """Apply a new set of jobs (after a configuration reload). A job whose configured interval
        changed starts a new cycle at once (the one dispatching stops; its polls in flight finish)."""
        now = time.time()
        names = {j.name for j in jobs}
        for name in [n for n in self.jobs if n not in names]:
            self._abort(name)
            if self._started:
                self._scheduler.remove_job(name)
            del self.jobs[name]
            self.status.pop(name, None)
            self._intervals.pop(name, None)
            self._pending.pop(name, None)
        restart = []
        for job in jobs:
            old = self.jobs.get(job.name)
            self.jobs[job.name] = job
            status = self.status.setdefault(job.name, JobStatus(job.name, job.interval, job.interval, kind=job.kind))
            status.interval = job.interval
            if old is None or old.interval != job.interval:
                self._abort(job.name)
                self._intervals.pop(job.name, None)
                restart.append(job)
        self.replan()
        if self._started:
            for job in restart:
                self._add(job, now)
                self.status[job.name].effective_interval = self._intervals[job.name]

    def _abort(self, name: str) -> None:
        status = self.status.get(name)
        if status is not None and status.cycle is not None:
            status.cycle.abort.set()
            self._room.set()  # a dispatch waiting for room sees the abort

    async def stop(self, grace: float) -> None:
        """Stop starting polls, then wait (bounded) for the in-flight ones to finish. Every poll's
        outcome is taken (logged if it crashed), so nothing is left to asyncio's "exception was never
        retrieved" at exit."""
        self._stopping.set()
        self._room.set()  # first polls waiting for room see the stop
        for name in self.status:
            self._abort(name)
        if self._scheduler.running:
            # Paused first: the cycles still dispatching see the abort and return by themselves;
            # shutdown() would cancel them, which APScheduler logs with a traceback.
            self._scheduler.pause()
            if self._cycles:
                await asyncio.wait(self._cycles, timeout=1.0)
            self._scheduler.shutdown(wait=False)
        if self._catch_up is not None and not self._catch_up.done():
            await asyncio.wait([self._catch_up], timeout=1.0)
        pending = [t for t in self._in_flight.values() if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:  # their done callbacks take the outcomes
                await asyncio.wait(still, timeout=1.0)

    # --- the budget -------------------------------------------------------------------------------------

    def replan(self) -> bool:
        """Recompute the request budget from the entity counts now. When the stretch factor changed,
        every job takes its new interval from its next cycle on. True when the intervals changed."""
        lines, need = plan_budget([(j.name, j.interval, j.batch_limit, j.planned_count())
                                   for j in self.jobs.values()], self.rate_limit)
        stretch = max((line.effective_interval / line.interval for line in lines), default=1.0)
        self.need, self.lines = need, lines
        changed = abs(stretch - self.stretch) > REPLAN_TOLERANCE * self.stretch
        if changed:
            self.stretch = stretch
        for job in self.jobs.values():
            target = job.interval * self.stretch
            current = self._intervals.setdefault(job.name, target)
            if abs(target - current) > REPLAN_TOLERANCE * current:
                self._retime(job.name, current, target)
            self.status[job.name].effective_interval = self._intervals[job.name]
            metrics.JOB_INTERVAL.labels(job.name).set(self._intervals[job.name])
        metrics.BUDGET_NEEDED.set(need)
        metrics.BUDGET_PLANNED.set(self.planned_rps())
        metrics.BUDGET_STRETCH.set(self.stretch)
        if self._started and (changed or abs(need - self._logged_need) > 0.05 * max(self._logged_need, 1e-9)):
            self._logged_need = need
            event = ("request budget too small: intervals stretched" if self.stretch > 1.0
                     else "request budget re-planned")
            log.info(event, need_rps=round(need, 3), planned_rps=round(self.planned_rps(), 3),
                     rate_limit=self.rate_limit, stretch=round(self.stretch, 3),
                     entities={line.job: line.entities for line in lines})
        else:
            self._logged_need = self._logged_need or need
        return changed

    def planned_rps(self) -> float:
        """Requests per second the jobs make at the intervals they run at now."""
        return sum(line.requests_per_cycle / self._intervals.get(line.job, line.effective_interval)
                   for line in self.lines)

    def _retime(self, name: str, old: float, new: float) -> None:
        """Job `name` runs every `new` seconds from its next cycle on. The cycle dispatching now
        keeps its pace, so the next one starts when it is done, or `new` after it started."""
        self._intervals[name] = new
        if not self._started or self._scheduler.get_job(name) is None:
            return
        now = time.time()
        origin = self._origin.get(name, now)
        if origin > now:  # the first run (or a retry of an empty job) is still ahead: keep it
            next_run = origin
        else:
            current = origin + max(0, math.floor((now - origin) / old + 0.01)) * old
            next_run = max(current + max(old, new), now + 0.5)
        self._origin[name] = next_run
        self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=new, start_date=_dt(next_run)))
        self._scheduler.modify_job(name, misfire_grace_time=max(int(new), 1))

    def budget(self) -> dict[str, Any]:
        """The request budget now, for `status`."""
        return {
            "needed_rps": self.need, "planned_rps": self.planned_rps(), "stretch": self.stretch,
            "jobs": [{"job": line.job, "entities": line.entities, "requests_per_cycle": line.requests_per_cycle,
                      "interval": line.interval, "effective_interval": self._intervals.get(line.job)}
                     for line in self.lines],
        }

    # --- first polls of new entities ------------------------------------------------------------------

    def discovered(self, kind: str, ids: Sequence[str]) -> None:
        """Entities of `kind` ("card", ...) tracked for the first time: every job of that kind polls
        them within about CATCH_UP_DELAY + CATCH_UP_SPREAD seconds, ahead of its cycle."""
        if not ids or self._stopping.is_set() or not self._started:
            return
        for name, job in self.jobs.items():
            if job.kind == kind and job.batch_limit > 0:
                self._pending.setdefault(name, {}).update(dict.fromkeys(ids))
        if self._pending and (self._catch_up is None or self._catch_up.done()):
            self._catch_up = asyncio.create_task(self._first_polls(), name="first polls")

    async def _sleep(self, delay: float) -> bool:
        """Sleep `delay` seconds; True when the scheduler is stopping."""
        if delay <= 0:
            return self._stopping.is_set()
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            return True
        except TimeoutError:
            return False

    async def _first_polls(self) -> None:
        while self._pending and not await self._sleep(CATCH_UP_DELAY):
            self.replan()
            pending, self._pending = self._pending, {}
            batches: list[tuple[float, str, PollJob, tuple[str, ...]]] = []
            for name, new in pending.items():
                job = self.jobs.get(name)
                if job is None:
                    continue
                order = sorted(new, key=functools.partial(_offset, name))
                size = max(job.batch_limit, 1)
                n = math.ceil(len(order) / size)
                batches += [(k / n, name, job, tuple(order[k * size:(k + 1) * size])) for k in range(n)]
            if not batches:
                continue
            batches.sort(key=lambda b: b[0])  # the jobs interleaved: each starts its first polls at once
            log.info("first polls of newly found entities", jobs=sorted(pending),
                     entities=max(len(new) for new in pending.values()), requests=len(batches))
            start = time.time()
            spare = max(self.rate_limit - self.planned_rps(), self.rate_limit * (1 - USABLE_SHARE))
            spread = max(CATCH_UP_SPREAD, len(batches) / spare)
            for k, (_, name, job, ids) in enumerate(batches):
                if await self._sleep(start + k / len(batches) * spread - time.time()):
                    return
                if self._busy(name, ids):
                    continue
                if await self._wait_for_room(self._stopping) is None:
                    return
                self._start_poll(name, job, ids)
                if name in self.status:
                    self.status[name].first_polls += len(ids)
                metrics.JOB_FIRST_POLLS.labels(name).inc(len(ids))

    # --- cycles ----------------------------------------------------------------------------------------

    @property
    def max_in_flight(self) -> int:
        """Polls started and not finished at most: twice the platform's concurrency limit (as many
        again waiting for a request slot). More would only wait, and every waiting poll holds its
        coroutines and request long enough for the garbage collector to move them to the generation
        only full collections scan, which then come more often."""
        return 2 * self.concurrency

    def _busy(self, name: str, ids: tuple[str, ...]) -> bool:
        """Whether the previous poll of the same item is still in flight."""
        previous = self._in_flight.get((name, ids))
        return previous is not None and not previous.done()

    async def _wait_for_room(self, abort: asyncio.Event) -> float | None:
        """Wait while `max_in_flight` polls are in flight: the seconds waited, None if `abort` (or a
        stop) came first."""
        started = time.monotonic()
        while len(self._in_flight) >= self.max_in_flight:
            if abort.is_set() or self._stopping.is_set():
                return None
            self._room.clear()
            with contextlib.suppress(TimeoutError):  # looks at the abort flags again every second
                await asyncio.wait_for(self._room.wait(), timeout=1.0)
        if abort.is_set() or self._stopping.is_set():
            return None
        return time.monotonic() - started

    def _start_poll(self, name: str, job: PollJob, ids: tuple[str, ...], cycle: Cycle | None = None) -> None:
        """Start polling `ids` (the caller checked `_busy` and made room). The task is not kept once
        done: its outcome is counted by `_poll_done`."""
        key = (name, ids)
        task = asyncio.create_task(job.poll(ids), name=f"poll:{name}")
        self._in_flight[key] = task
        metrics.POLLS_IN_FLIGHT.set(len(self._in_flight))
        if cycle is not None:
            cycle.open += 1
        task.add_done_callback(functools.partial(self._poll_done, name, key, cycle))

    def _poll_done(self, name: str, key: tuple[str, tuple[str, ...]], cycle: Cycle | None,
                   task: asyncio.Task[Any]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
            metrics.POLLS_IN_FLIGHT.set(len(self._in_flight))
            self._room.set()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("poll crashed", job=name, error=f"{type(error).__name__}: {error}")
        if cycle is not None:
            _settle(cycle, max(len(key[1]), 1), task)
            cycle.open -= 1
            if cycle.open == 0 and not cycle.dispatching:
                self._finish(name, cycle)

    async def _cycle(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None or self._stopping.is_set():
            return
        current = asyncio.current_task()
        if current is not None:
            self._cycles.add(current)
            current.add_done_callback(self._cycles.discard)
        status = self.status[name]
        interval = self._intervals.get(name, job.interval * self.stretch)
        now = time.time()
        # The scheduled start of this cycle (first run + k * interval), not the moment the loop got to
        # it, so every item keeps its place in every cycle and the last one is dispatched before the
        # next cycle is due.
        first = self._origin.get(name, now)
        start = first + max(0, math.floor((now - first) / interval + 0.01)) * interval if interval > 0 else now
        status.last_start, status.runs = now, status.runs + 1
        # On the loop: a worker thread doing Python for a quarter of a second would hold the interpreter
        # lock against every I/O call of the loop, stalling it for seconds. The order is kept while
        # the ids stay the same (see PollJob.order).
        ordered = job.order() if job.batch_limit else []
        if job.batch_limit and not ordered:
            # Nothing to poll yet (SIMs are discovered by the device jobs), or every entity is backing
            # off: look again soon rather than a whole interval later.
            if status.first is None:
                status.first = Cycle(start, 0, dispatch_end=now, end=now)
            retry = min(interval, DISCOVERY_RETRY)
            self._scheduler.modify_job(name, next_run_time=_dt(now + retry))
            self._origin[name] = now + retry
            return
        cycle = Cycle(start, len(ordered) if job.batch_limit else 1)
        status.cycle = cycle
        if status.first is None:
            status.first = cycle
        # Spread over the interval less a small guard, so dispatching never runs into the next cycle.
        spread = interval - min(1.0, interval * 0.02)
        try:
            cycle.complete = await self._dispatch(name, job, status, cycle, spread, job.work_items(ordered))
        finally:
            # Also when stopping or cancelled: the polls already started finish and are counted (by
            # `_poll_done`), and only a whole cycle counts as one.
            cycle.dispatching = False
            if cycle.open == 0:
                self._finish(name, cycle)

    async def _dispatch(self, name: str, job: PollJob, status: JobStatus, cycle: Cycle, spread: float,
                        items: Iterable[tuple[float, tuple[str, ...]]]) -> bool:
        """Start the polls of one cycle at their slots; False when stopped midway."""
        max_lag = 0.0
        for fraction, ids in items:
            slot = cycle.start + fraction * spread
            delay = slot - time.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(cycle.abort.wait(), timeout=delay)
                    return False  # stopping, or the job was rescheduled
                except TimeoutError:
                    pass
            elif cycle.abort.is_set():
                return False
            n = max(len(ids), 1)
            if self._busy(name, ids):
                # Its last poll is still running (a slow answer being retried): skip this turn rather
                # than pile up. The job itself is on time: this is not an overrun.
                cycle.skipped += n
                status.skipped_in_flight += n
                metrics.JOB_SKIPPED_IN_FLIGHT.labels(name).inc(n)
                continue
            waited = await self._wait_for_room(cycle.abort)
            if waited is None:
                return False
            if waited:
                cycle.waited += waited
                metrics.JOB_DISPATCH_WAIT.labels(name).inc(waited)
            max_lag = max(max_lag, time.time() - slot)
            self._start_poll(name, job, ids, cycle)
            cycle.dispatched += n
        cycle.dispatch_end = time.time()
        status.lag_seconds = max_lag
        metrics.JOB_LAG.labels(name).set(max_lag)
        if cycle.skipped:
            log.debug("polls still in flight from an earlier turn were not started again", job=name,
                      skipped=cycle.skipped, entities=cycle.entities)
        return True

    def _finish(self, name: str, cycle: Cycle) -> None:
        status = self.status.get(name)
        if status is not None and status.cycle is cycle:
            status.cycle = None
        if not cycle.complete:
            return
        end = cycle.end = time.time()
        outcome = cycle.outcome
        if status is not None:
            status.last_end, status.last = end, cycle
        metrics.JOB_RUNS.labels(name, outcome).inc()
        metrics.JOB_DURATION.labels(name).observe(end - cycle.start)
        if outcome != "error":
            metrics.JOB_LAST_SUCCESS.labels(name).set(end)
        log.info("cycle done", job=name, entities=cycle.entities, failed=cycle.failed, not_found=cycle.not_found,
                 skipped=cycle.skipped, duration_s=round(end - cycle.start, 2),
                 **({"waited_for_room_s": round(cycle.waited, 1)} if cycle.waited >= 0.05 else {}))
        job = self.jobs.get(name)
        if job is not None and job.kind == "device":
            self.replan()  # the devices polled have shown their SIMs

    def _on_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            metrics.JOB_OVERRUNS.labels(event.job_id).inc()
            if event.job_id in self.status:
                self.status[event.job_id].overruns += 1
            log.warning("job overrun: the previous cycle was still dispatching when this one was due, "
                        "this run skipped", job=event.job_id)
        elif event.exception is not None:
            log.error("job failed", job=event.job_id, error=str(event.exception))

    # --- what it is doing -----------------------------------------------------------------------------

    def ready(self, now: float | None = None) -> tuple[bool, str]:
        """Whether the first cycle of the device jobs is done: every device has an outcome, or the
        cycle started its last poll at least `ready_grace` ago (slow answers do not hold it up).
        Without device jobs there is nothing to wait for."""
        now = time.time() if now is None else now
        firsts = [s.first for name, s in self.status.items() if s.kind == "device" and name in self.jobs]
        if not firsts:
            return True, "ok"
        for c in firsts:
            if c is not None and c.dispatch_end is not None and (
                    c.settled >= c.entities or now - c.dispatch_end >= self.ready_grace):
                return True, "ok"
        started = [c for c in firsts if c is not None]
        if not started:
            return False, "first polling cycle not started"
        best = max(started, key=lambda c: c.settled / max(c.entities, 1))
        return False, f"first polling cycle not finished: {best.settled}/{best.entities} devices polled"

    def next_run(self, name: str) -> float | None:
        job = self._scheduler.get_job(name)
        return job.next_run_time.timestamp() if job is not None and job.next_run_time else None

    def describe(self) -> list[dict[str, Any]]:
        return [s.as_dict(self.next_run(n)) for n, s in self.status.items()]


def _offset(job: str, entity: str) -> float:
    return stable_fraction(f"{job}:{entity}")


def _settle(cycle: Cycle, entities: int, task: asyncio.Task[Any]) -> None:
    """Count a finished poll's entities in its cycle."""
    if task.cancelled():
        return
    error = task.exception()
    outcome = PollOutcome(entities, failed=entities) if error is not None else _outcome(task.result(), entities)
    cycle.done += entities
    cycle.failed += outcome.failed
    cycle.not_found += outcome.not_found


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
    usable = rate_limit * USABLE_SHARE
    stretch = max(1.0, need / usable) if usable > 0 else 1.0
    lines = [BudgetLine(n, i, c, r, r / i, i * stretch) for n, i, c, r in rows]
    return lines, need
