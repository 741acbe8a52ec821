"""Shutdown takes the outcome of everything it started: a scheduler stopped in the middle of a cycle
whose polls fail leaves no "exception was never retrieved" and no cancelled job for APScheduler to
log with a traceback."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from typing import Any

from collector.schedule import PollJob, Scheduler


class SpoolBroke(Exception):
    pass


class Messages(logging.Handler):
    """Keeps formatted messages only: a kept LogRecord would keep its arguments (APScheduler's job,
    hence the scheduler and its tasks) alive past the point this test looks at."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


async def test_stopping_mid_cycle_takes_every_poll_outcome() -> None:
    apscheduler_log = logging.getLogger("apscheduler")
    messages = Messages()
    apscheduler_log.addHandler(messages)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    started: list[str] = []
    enough = asyncio.Event()

    async def failing(ids: Sequence[str]) -> bool:
        started.extend(ids)
        if len(started) >= 60:  # both cycles are dispatching, dozens of polls have failed
            enough.set()
        await asyncio.sleep(0.01)
        raise SpoolBroke("write: [Errno 28] No space left on device")

    ids = [f"dev{i}" for i in range(400)]
    jobs = [PollJob(name=name, interval=8.0, batch_limit=1, entities=lambda: ids, poll=failing)
            for name in ("device_status", "device_flow")]
    scheduler = Scheduler(jobs, rate_limit=1000.0)
    try:
        scheduler.start()
        await asyncio.wait_for(enough.wait(), timeout=30)
    finally:
        await scheduler.stop(grace=1.0)
    statuses = list(scheduler.status.values())
    del scheduler  # what the process exit does: whatever nobody took the outcome of is reported now
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    apscheduler_log.removeHandler(messages)
    assert [c["message"] for c in unhandled] == []
    assert [text for level, text in messages.lines if level >= logging.ERROR] == []
    assert all(s.runs == 1 and s.last_end is None for s in statuses)  # a cycle stopped midway is not counted
