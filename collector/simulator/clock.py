"""Simulated time, and the clock the simulator's answers are reported on.

Simulated time is wall time scaled by a speed factor, plus explicit jumps (`/_sim/time`); it only moves
forward, and the fleet model is a function of it. The answers report instants on one of two clocks:

* `wall` (the default when time runs): every simulated instant is reported at the wall-clock time
  at which simulated time passes it, so the data's times stay consistent with the clock a collector
  compares them with. At speed 60 a refresh every 5 simulated minutes shows as one every 5 s, the
  latest refresh is never in the future, and an instant simulated time jumped over shows as the
  moment of the jump. Instants before the start are mapped at the first speed, instants ahead of
  simulated time at the current one (the last non-zero one while frozen).
* `simulated`: instants are reported as they are (a frozen clock, speed 0, has no wall time to map
  to; tests pin simulated dates this way).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from typing import Literal

Reporting = Literal["wall", "simulated"]


class SimClock:
    """`now() = start + elapsed_wall * speed + advanced`. A speed of 0 freezes time (tests).

    With `reporting="wall"` (speed must then be > 0 at the start), `reported(x)` maps a simulated
    instant to the wall time at which simulated time passes it (see the module docstring)."""

    def __init__(self, start: float | None = None, speed: float = 1.0,
                 reporting: Reporting = "simulated") -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        if reporting == "wall" and speed <= 0:
            raise ValueError("answers can be reported on the wall clock only when simulated time runs (speed > 0)")
        wall = time.time()
        self._mono = time.monotonic()
        self._wall0, self._mono0 = wall, self._mono
        self._base = wall if start is None else float(start)
        self.started = self._base  # the simulated time at construction
        self.speed = float(speed)
        self.reporting: Reporting = reporting
        # Piecewise-linear reporting: segments (simulated start, wall start, speed), by simulated start.
        self._sims: list[float] = [self._base]
        self._segments: list[tuple[float, float, float]] = [(self._base, wall, self.speed)]
        self._last_speed = self.speed  # the last non-zero speed, to map instants ahead of a frozen clock

    def now(self) -> float:
        """The current simulated Unix time."""
        return self._base + (time.monotonic() - self._mono) * self.speed

    def wall_now(self) -> float:
        """The wall-clock time on the clock simulated time is anchored to."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def advance(self, seconds: float) -> float:
        """Jump ahead by `seconds` (>= 0); returns the new simulated time."""
        if seconds < 0:
            raise ValueError("simulated time only moves forward")
        self._rebase()
        self._base += seconds
        self._segment()
        return self._base

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on, without a jump."""
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self._rebase()
        self.speed = float(speed)
        if speed > 0:
            self._last_speed = self.speed
        self._segment()

    def _rebase(self) -> None:
        self._base = self.now()
        self._mono = time.monotonic()

    def _segment(self) -> None:
        wall = self._wall0 + (self._mono - self._mono0)
        if self._sims[-1] == self._base:  # a change at the same simulated instant replaces the last one
            self._sims.pop()
            self._segments.pop()
        self._sims.append(self._base)
        self._segments.append((self._base, wall, self.speed))

    # --- reporting -----------------------------------------------------------------------------------------

    def reported(self, x: float) -> float:
        """The instant simulated time `x` is reported at (identity with `reporting="simulated"`)."""
        if self.reporting == "simulated":
            return x
        segments = self._segments
        if len(segments) == 1:
            sim0, wall0, speed = segments[0]
            if speed == 1.0 and sim0 == wall0:  # real time from now: exactly the identity, no rounding
                return x
            return wall0 + (x - sim0) / (speed or self._last_speed)
        i = bisect_right(self._sims, x) - 1
        if i < 0:
            sim0, wall0, speed = segments[0]
            return wall0 + (x - sim0) / (speed or self._last_speed)
        sim0, wall0, speed = segments[i]
        if i + 1 < len(segments):
            # Within a past segment; an instant jumped over shows as the moment of the jump.
            next_wall = segments[i + 1][1]
            if not speed:
                return wall0 if x == sim0 else next_wall
            return min(wall0 + (x - sim0) / speed, next_wall)
        return wall0 + (x - sim0) / (speed or self._last_speed)

    def simulated(self, reported: float) -> float:
        """The simulated instant reported at `reported` (the inverse of `reported`; an instant ahead is
        reached at the current speed)."""
        if self.reporting == "simulated":
            return reported
        now_wall = self.wall_now()
        if reported >= now_wall or len(self._segments) == 1:
            return self.now() + (reported - now_wall) * (self.speed or self._last_speed)
        walls = [w for _s, w, _v in self._segments]
        i = max(0, bisect_right(walls, reported) - 1)
        sim0, wall0, speed = self._segments[i]
        return sim0 + (reported - wall0) * speed
