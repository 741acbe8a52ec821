"""The sink pipeline: the spool in front, one drain task per enabled sink behind it.

`submit(lines)` returns once the lines are durable in the spool (that is when they count as
collected). Concurrent submits share the spool's fsyncs (`spool.fsync: batch`). A submit the spool
cannot store (a full disk with nothing left to free, an I/O error) is dropped: counted in
POINTS_DROPPED{reason="spool_error"} and logged at most once a minute; the caller (a poll) is not
failed for it. Each drain task reads batches from its own spool cursor, waits up to `flush_interval`
for a batch to fill to `batch_size`, hands it to its sink, and moves its cursor only when the sink is
done with it (written or dead-lettered). A sink that fails is retried for as long as the spool holds
its points, waiting as `collector.retry.Backoff` says (exponential with jitter up to
`retry_max_backoff`, at least the server's Retry-After), so a long outage ends with the backlog
drained, not lost.

Sinks: "file", "influxdb_v1", "influxdb_v2" (names are metric labels and spool cursor names).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from collector.metrics import (
    POINTS_COLLECTED,
    POINTS_DROPPED,
    POINTS_FAILED,
    POINTS_WRITTEN,
    SINK_UP,
    SINK_WRITE_ERRORS,
)
from collector.retry import Backoff
from collector.sinks.base import RetryableError, Sink
from collector.sinks.config import SinksConfig
from collector.sinks.file import FileSink
from collector.sinks.influx import InfluxV1Sink, InfluxV2Sink, dead_letter_for
from collector.sinks.spool import Spool, SpoolError, Throttle

log = structlog.get_logger(__name__)

INITIAL_BACKOFF = 0.5  # seconds before the first retry of a failed write


def build_sinks(config: SinksConfig, state_dir: str | Path) -> list[Sink]:
    """The enabled sinks of `config`, in a fixed order: file, influxdb_v1, influxdb_v2."""
    fsync = config.spool.fsync != "never"
    sinks: list[Sink] = []
    if config.file.enabled:
        sinks.append(FileSink(config.file.path, config.file.max_bytes, config.file.backups, fsync=fsync))
    if config.influxdb_v1.enabled:
        sinks.append(InfluxV1Sink(config.influxdb_v1, dead_letter_for(state_dir, "influxdb_v1", fsync=fsync),
                                  gzip=config.gzip))
    if config.influxdb_v2.enabled:
        sinks.append(InfluxV2Sink(config.influxdb_v2, dead_letter_for(state_dir, "influxdb_v2", fsync=fsync),
                                  gzip=config.gzip))
    return sinks


@dataclass(slots=True)
class _SinkState:
    sink: Sink
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    up: bool | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    written: int = 0
    failed: int = 0
    retries: int = 0


class SinkPipeline:
    """Spool + drain tasks for every enabled sink of a `SinksConfig`."""

    def __init__(self, config: SinksConfig, state_dir: str, *, sinks: Sequence[Sink] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self._clock = clock
        self._sinks = list(sinks) if sinks is not None else build_sinks(config, state_dir)
        names = [s.name for s in self._sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self._states = {s.name: _SinkState(s) for s in self._sinks}
        self._spool: Spool | None = None
        self._started = False
        self._accepting = False
        self._stopping = False
        self._aborted = False
        self._flushing = 0
        self._inflight = 0
        self._progress = asyncio.Event()
        self._submits_done = asyncio.Event()
        self._backoff = Backoff(min(INITIAL_BACKOFF, config.retry_max_backoff), config.retry_max_backoff)
        self._drop_log = Throttle()
        self._refused = 0  # points submitted that the spool could not store

    # --- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (recovering from a crash), open the sinks and start draining."""
        if self._started:
            return
        if self._sinks:
            self._spool = Spool(self.state_dir / "spool", self.config.spool, [s.name for s in self._sinks],
                                frame_lines=self.config.batch_size, clock=self._clock)
            await asyncio.to_thread(self._spool.open)
        else:
            log.warning("no sink is enabled: points will be dropped")
        for state in self._states.values():
            await state.sink.open()
            state.task = asyncio.create_task(self._drain(state), name=f"sink-{state.sink.name}")
        self._started = True
        self._accepting = True
        if self._spool is not None:
            log.info("sink pipeline started", sinks=list(self._states), spool_bytes=self._spool.bytes_used())

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the daemon's contract
        """Stop accepting points, give the sinks up to `timeout` seconds to send what is spooled, then
        stop. Whatever is not sent stays in the spool for the next start."""
        if not self._started:
            return
        self._accepting = False
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._inflight:
            self._submits_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._submits_done.wait(), timeout=max(deadline - time.monotonic(), 0))
        self._stopping = True
        self._wake_all()
        tasks = [s.task for s in self._states.values() if s.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0))
            self._aborted = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            with contextlib.suppress(Exception):
                await state.sink.close()
        if self._spool is not None:
            unsent = {name: self._spool.pending_bytes(name) for name in self._states}
            self._spool.close()
            if any(unsent.values()):
                log.info("sink pipeline stopped with points left in the spool", pending_bytes=unsent)
        self._started = False

    # --- input ---------------------------------------------------------------------------------------

    async def submit(self, lines: Sequence[str]) -> None:
        """Append `lines` to the spool; returns once they are durable (they count as collected), or
        once they are counted as dropped because the spool could not store them (see `writable()`).

        Raises RuntimeError when the pipeline is not running, ValueError for a line containing a
        newline."""
        if not self._accepting:
            raise RuntimeError("the sink pipeline is not accepting points (not started or stopping)")
        if self._spool is None:
            POINTS_DROPPED.labels(reason="no_sink").inc(sum(1 for line in lines if line))
            return
        self._inflight += 1
        try:
            count = await self._spool.append(lines)
        except SpoolError as exc:
            count = sum(1 for line in lines if line) - exc.unstored
            POINTS_DROPPED.labels(reason="spool_error").inc(exc.unstored)
            self._refused += exc.unstored
            if (summary := self._drop_log.due(points=exc.unstored)) is not None:
                log.error("spool cannot store points: dropped", error=str(exc), points=summary["points"],
                          submits=summary["occurrences"], directory=str(self._spool.directory))
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._submits_done.set()
        if count:
            POINTS_COLLECTED.inc(count)
            self._wake_all()

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - bounded, like stop()
        """Send everything spooled now, without waiting for `flush_interval`; True if every sink
        caught up within `timeout` seconds."""
        if self._spool is None:
            return True
        deadline = time.monotonic() + timeout
        self._flushing += 1
        try:
            self._wake_all()
            while any(self._spool.pending_bytes(name) for name in self._states):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=min(remaining, 0.25))
            return True
        finally:
            self._flushing -= 1

    # --- draining ------------------------------------------------------------------------------------

    def _wake_all(self) -> None:
        for state in self._states.values():
            state.wake.set()

    async def _wait_for_lines(self, state: _SinkState, since: int, needed: int, seconds: float) -> None:
        assert self._spool is not None
        deadline = time.monotonic() + seconds
        while not (self._stopping or self._flushing) and self._spool.appended_lines - since < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            state.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=remaining)

    async def _drain(self, state: _SinkState) -> None:
        assert self._spool is not None
        spool, sink, name = self._spool, state.sink, state.sink.name
        while not self._aborted:
            state.wake.clear()
            limit = min(self.config.batch_size, sink.max_lines() or self.config.batch_size)
            batch = spool.read(name, limit)
            if batch is None:
                self._progress.set()
                if self._stopping:
                    return
                await state.wake.wait()
                continue
            if batch.count < limit and not (self._stopping or self._flushing):
                wait = batch.first_appended_at + self.config.flush_interval - self._clock()
                if wait > 0:
                    await self._wait_for_lines(state, spool.appended_lines, limit - batch.count, wait)
                    continue
            try:
                outcome = await sink.write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sink must never kill its drain task
                current = asyncio.current_task()
                if self._aborted or (current is not None and current.cancelling()):
                    # stop() gave up on this batch; some HTTP stacks turn the cancellation of a
                    # connect attempt into a connection error, which must not swallow it.
                    raise asyncio.CancelledError from exc
                if isinstance(exc, RetryableError):
                    reason, detail, retry_after = exc.reason, exc.detail, exc.retry_after
                else:
                    log.exception("sink raised an unexpected error", sink=name)
                    reason, detail, retry_after = "error", f"{type(exc).__name__}: {exc}", None
                # Unbounded: the spool holds these points for as long as it takes.
                delay = self._backoff.delay(state.retries + 1, retry_after)
                assert delay is not None
                self._record_failure(state, reason, detail, delay)
                await asyncio.sleep(delay)
                continue
            spool.commit(name, batch.end)
            self._record_success(state, outcome.written, outcome.failed)
            self._progress.set()

    def _record_failure(self, state: _SinkState, reason: str, detail: str, delay: float) -> None:
        name = state.sink.name
        SINK_WRITE_ERRORS.labels(sink=name, reason=reason).inc()
        SINK_UP.labels(sink=name).set(0)
        state.retries += 1
        if state.up is not False or state.retries % 20 == 0:
            log.warning("sink write failed, will retry", sink=name, reason=reason, error=detail,
                        retry_in_seconds=round(delay, 2), attempts=state.retries)
        state.up = False
        state.last_error = f"{reason}: {detail}"
        state.last_error_at = self._clock()

    def _record_success(self, state: _SinkState, written: int, failed: dict[str, int]) -> None:
        name = state.sink.name
        if state.up is False:
            log.info("sink is writing again", sink=name, failed_attempts=state.retries)
        state.up = True
        state.retries = 0
        state.last_success_at = self._clock()
        SINK_UP.labels(sink=name).set(1)
        if written:
            state.written += written
            POINTS_WRITTEN.labels(sink=name).inc(written)
        for reason, count in failed.items():
            state.failed += count
            POINTS_FAILED.labels(sink=name, reason=reason).inc(count)

    # --- status --------------------------------------------------------------------------------------

    def writable(self) -> bool:
        """True while submit() can store points (for /readyz): running, and the last append to the
        spool succeeded (after a failure, the next one that succeeds makes it true again)."""
        return self._accepting and (self._spool is None or self._spool.last_error is None)

    def last_error(self) -> str | None:
        """Why the spool refused the last append, or None."""
        return self._spool.last_error if self._spool is not None else None

    def spool_bytes(self) -> int:
        """Bytes the spool takes on disk."""
        return self._spool.bytes_used() if self._spool is not None else 0

    def oldest_age_seconds(self) -> float | None:
        """Age of the oldest point some sink has not sent yet; None when every sink is caught up."""
        if self._spool is None:
            return None
        oldest = self._spool.oldest_unsent_at()
        return None if oldest is None else max(self._clock() - oldest, 0.0)

    def status(self) -> dict[str, Any]:
        """Per sink: up, last error, points written and failed, backlog; and the spool's size."""
        now = self._clock()
        sinks: dict[str, Any] = {}
        for name, state in self._states.items():
            oldest = self._spool.oldest_unsent_at(name) if self._spool is not None else None
            sinks[name] = {
                "target": dict(state.sink.describe()),
                "up": state.up,
                "last_error": state.last_error,
                "last_error_at": state.last_error_at,
                "last_success_at": state.last_success_at,
                "points_written": state.written,
                "points_failed": state.failed,
                "pending_bytes": self._spool.pending_bytes(name) if self._spool is not None else 0,
                "oldest_unsent_age_seconds": None if oldest is None else max(now - oldest, 0.0),
            }
        spool: dict[str, Any] = {
            "bytes": self.spool_bytes(),
            "max_bytes": self.config.spool.max_bytes,
            "segments": self._spool.segment_count() if self._spool is not None else 0,
            "segment_bytes": self._spool.segment_bytes if self._spool is not None else 0,
            "oldest_age_seconds": self.oldest_age_seconds(),
            "dropped_points": self._spool.dropped_lines if self._spool is not None else 0,
            "refused_points": self._refused,
            "writable": self.writable(),
            "last_error": self._spool.last_error if self._spool is not None else None,
        }
        return {"sinks": sinks, "spool": spool}
