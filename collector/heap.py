"""The garbage collector at a large fleet's size.

CPython's full collections walk every object the collector tracks. At 100,000 devices and 200,000
SIMs the fleet state is about 1.5 million of them (about five per entity: state, observation, usage
list, month ledger), and a full collection stalls the event loop for one to three seconds. Under
load the objects of polls in flight reach the old generation fast enough to trigger one every
twenty seconds or so.

The policy (`HeapPolicy`): after every full collection, what survived it moves to the permanent
generation (`gc.freeze()`), which later collections do not walk; they walk only what was promoted
since, milliseconds' worth. Frozen objects are still freed by reference counting when dropped, and
the fleet's observations, replaced at every poll, are plain data. What freezing cannot free is a
reference cycle that turns to garbage with a frozen object in it, so every `thaw_interval` (six
hours by default) the permanent generation is moved back (`gc.unfreeze()`): the next full collection
walks the whole heap once, frees such cycles, and what survives is frozen again.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import structlog

log = structlog.get_logger("collector.heap")

THAW_INTERVAL = 6 * 3600.0  # seconds between two full walks of the heap


def freeze_heap() -> None:
    """Collect everything, then move the objects still alive (modules, configuration, the fleet's
    records as loaded) to the permanent generation, which no later collection scans: the full
    collections of a large fleet stop stalling the event loop. Objects in it are still freed by
    reference counting when dropped."""
    gc.collect()
    gc.freeze()


class HeapPolicy:
    """Freezes what survives each full collection; thaws everything every `thaw_interval` seconds.
    `start()` and `stop()` inside the event loop."""

    def __init__(self, thaw_interval: float = THAW_INTERVAL) -> None:
        self.thaw_interval = thaw_interval
        self.freezes = 0
        self.thaws = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thawed_at = time.monotonic()
        self._pending = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thawed_at = time.monotonic()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._loop = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Inside the collection (and possibly in a worker thread): only ask the loop to act after it.
        if phase != "stop" or info.get("generation") != 2 or self._pending or self._loop is None:
            return
        self._pending = True
        try:
            self._loop.call_soon_threadsafe(self._after_full_collection)
        except RuntimeError:  # the loop is closed
            self._pending = False

    def _after_full_collection(self) -> None:
        self._pending = False
        if time.monotonic() - self._thawed_at >= self.thaw_interval:
            # Everything back into the generations: the next full collection walks the whole heap.
            self._thawed_at = time.monotonic()
            self.thaws += 1
            gc.unfreeze()
            log.debug("heap thawed: the next full collection walks everything")
            return
        gc.freeze()
        self.freezes += 1
