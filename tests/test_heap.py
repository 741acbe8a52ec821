"""The garbage collection policy: what survives a full collection is frozen out of later ones, freed
by reference counting as before, and a thaw lets a full collection free cycles that froze."""

from __future__ import annotations

import asyncio
import gc
import weakref

from collector.heap import HeapPolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


async def full_collection() -> None:
    gc.collect()
    await asyncio.sleep(0)  # the policy acts on the loop, after the collection
    await asyncio.sleep(0)


async def test_what_survives_a_full_collection_is_frozen_and_still_freed_when_dropped() -> None:
    policy = HeapPolicy(thaw_interval=3600)
    policy.start()
    try:
        kept = [Node() for _ in range(5000)]
        await full_collection()
        assert policy.freezes >= 1 and gc.get_freeze_count() >= 5000
        probe = weakref.ref(kept[0])
        frozen = gc.get_freeze_count()
        del kept
        assert probe() is None  # reference counting frees frozen objects as before
        assert gc.get_freeze_count() <= frozen - 5000
    finally:
        policy.stop()
        gc.unfreeze()


async def test_a_cycle_that_froze_is_freed_after_a_thaw() -> None:
    policy = HeapPolicy(thaw_interval=3600)
    policy.start()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        await full_collection()  # alive: frozen
        del a, b  # now garbage, but a cycle in the permanent generation
        await full_collection()
        assert probe() is not None  # what a freeze cannot free
        policy.thaw_interval = 0  # the thaw is due
        await full_collection()  # after it: everything thawed
        assert policy.thaws >= 1 and gc.get_freeze_count() == 0
        gc.collect()
        assert probe() is None
    finally:
        policy.stop()
        gc.unfreeze()
