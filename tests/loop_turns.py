"""How long the event loop went without a turn while something ran on it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def loop_turns() -> AsyncIterator[list[float]]:
    """The gaps between the event loop's turns while the block runs. The heap is frozen meanwhile, as
    the daemon freezes it (collector.heap): a full collection is not what these measure."""
    gaps: list[float] = []

    async def probe() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0)
            gaps.append(time.perf_counter() - started)

    gc.collect()
    gc.freeze()
    prober = asyncio.create_task(probe())
    try:
        yield gaps
    finally:
        prober.cancel()
        gc.unfreeze()
