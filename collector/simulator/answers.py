"""A bounded cache of serialized device answers (the `data` part of queryDeviceFlow / queryDeviceInfo).

An entry holds the JSON bytes of one device's answer for one endpoint together with the span of
simulated time over which the model vouches that the answer cannot change (`DeviceState.until`: the
next refresh window, routine offline window, suspension, expiry or renewal, whichever comes first)
and the fleet's override generation it was computed under. A lookup hits only inside that span and
under the same generation, so a cached answer is byte-identical to a freshly computed one; any
override (admin endpoint, reset) bumps the generation and so invalidates every entry.

Memory is bounded: at most `capacity` entries (least recently used evicted), about 4.9 KB each.
"""

from __future__ import annotations

from collections import OrderedDict

ANSWER_CACHE = 20_000  # entries (device x endpoint): about 4.9 KB each, 100 MB when full

_Entry = tuple[int, float, float, bytes]  # (generation, valid from, valid until, data JSON)


class AnswerCache:
    """LRU of `(device index, info)` -> serialized `data`, valid for simulated times in [from, until)."""

    def __init__(self, capacity: int = ANSWER_CACHE) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, bool], _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[int, bool], generation: int, t: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == generation and entry[1] <= t < entry[2]:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[3]
        self.misses += 1
        return None

    def put(self, key: tuple[int, bool], generation: int, t: float, until: float, data: bytes) -> None:
        if until <= t:
            self._entries.pop(key, None)
            return
        entries = self._entries
        entries[key] = (generation, t, until, data)
        entries.move_to_end(key)
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
