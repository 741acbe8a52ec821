"""Long Python work on the event loop, in slices: at 100,000 devices a scrape or a save reads hundreds
of thousands of entities, a second or more of Python. Done in one go it stalls every poll for that
long; in a worker thread it holds the interpreter lock against every I/O call of the loop (each one
then waits for the lock: seconds of lag). `in_slices` gives the loop a turn whenever the work has held
it for `HOLD`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

# Short against the lag that matters (100 ms), long enough that a busy loop's turns do not stretch
# the work (a scrape past Prometheus's timeout).
HOLD = 0.02
SLICE = 500  # items between two looks at the clock

T = TypeVar("T")


async def in_slices(items: Sequence[T], size: int = SLICE) -> AsyncIterator[Sequence[T]]:
    """`items` a slice at a time, giving the event loop a turn whenever HOLD has passed."""
    held = time.perf_counter()
    for start in range(0, len(items), size):
        yield items[start:start + size]
        if time.perf_counter() - held > HOLD:
            await asyncio.sleep(0)
            held = time.perf_counter()
