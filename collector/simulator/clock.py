"""Simulated time: wall time scaled by a speed factor, plus explicit jumps (`/_sim/time`).

Simulated time only moves forward. It is a Unix timestamp like any other: the fleet model reads it,
the wire format prints it in the platform's zone.
"""

from __future__ import annotations

import time


class SimClock:
    """`now() = start + elapsed_wall * speed + advanced`. A speed of 0 freezes time (tests)."""

    def __init__(self, start: float | None = None, speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self._base = time.time() if start is None else float(start)
        self.started = self._base  # the simulated time at construction
        self._mono = time.monotonic()
        self.speed = float(speed)

    def now(self) -> float:
        """The current simulated Unix time."""
        return self._base + (time.monotonic() - self._mono) * self.speed

    def advance(self, seconds: float) -> float:
        """Jump ahead by `seconds` (>= 0); returns the new simulated time."""
        if seconds < 0:
            raise ValueError("simulated time only moves forward")
        self._rebase()
        self._base += seconds
        return self._base

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on, without a jump."""
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self._rebase()
        self.speed = float(speed)

    def _rebase(self) -> None:
        self._base = self.now()
        self._mono = time.monotonic()
