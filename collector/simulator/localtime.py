"""The platform's clock face: Unix seconds as zone-less `YYYY-MM-DD HH:MM:SS` local time, and the
calendar-month boundaries the simulated billing cycles follow.

Both are on the hot path (a device answer carries about fifteen timestamps), so the zone's UTC offset
is looked up once per quarter hour and month starts once per month, instead of building a `datetime`
per value.
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

# Every zone in the tz database changes its offset on a quarter-hour boundary at the finest.
_OFFSET_BUCKET = 900
_CACHE_LIMIT = 200_000

# The platform's "unset" date (the sample's warrantyExpire).
SENTINEL = "2000-01-01 00:00:00"


class LocalTime:
    """Formats and splits time in one zone (the platform's, `platform.timezone`)."""

    def __init__(self, zone: str = "Asia/Shanghai") -> None:
        self.zone = ZoneInfo(zone)
        self._offsets: dict[int, int] = {}
        self._month_starts: dict[tuple[int, int], float] = {}
        self._strings: dict[int, str] = {}
        self._last_cycle = (0.0, 0.0)
        # A zone without DST in the years a simulation can reach (China since 1991) needs no lookups.
        samples = {self._lookup(year * 31_557_600.0 + month * 2_629_800.0)
                   for year in range(25, 80) for month in range(12)}
        self._fixed: int | None = samples.pop() if len(samples) == 1 else None

    def _lookup(self, t: float) -> int:
        delta = datetime.fromtimestamp(t, self.zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    def offset(self, t: float) -> int:
        """The zone's UTC offset in seconds at Unix time `t`."""
        if self._fixed is not None:
            return self._fixed
        bucket = int(t // _OFFSET_BUCKET)
        found = self._offsets.get(bucket)
        if found is None:
            found = self._lookup(bucket * _OFFSET_BUCKET)
            if len(self._offsets) > _CACHE_LIMIT:
                self._offsets.clear()
            self._offsets[bucket] = found
        return found

    def format(self, t: float) -> str:
        """`t` as the platform writes it: `2025-09-18 18:24:10`, local time, no zone."""
        second = int(t)
        text = self._strings.get(second)
        if text is None:
            # Most times repeat (creation dates, refresh windows, cycle starts): format each once.
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second + self.offset(t)))
            if len(self._strings) > _CACHE_LIMIT:
                self._strings.clear()
            self._strings[second] = text
        return text

    def year_month(self, t: float) -> tuple[int, int]:
        parts = time.gmtime(int(t) + self.offset(t))
        return parts.tm_year, parts.tm_mon

    def month_start(self, year: int, month: int) -> float:
        """Unix time of local midnight on the first of `year-month` (months past 12 roll over)."""
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
        key = (year, month)
        found = self._month_starts.get(key)
        if found is None:
            found = datetime(year, month, 1, tzinfo=self.zone).timestamp()
            self._month_starts[key] = found
        return found

    def cycle(self, t: float) -> tuple[float, float]:
        """The calendar month containing `t`: (start, end) as Unix seconds, end exclusive."""
        last = self._last_cycle
        if last[0] <= t < last[1]:
            return last
        year, month = self.year_month(t)
        self._last_cycle = (self.month_start(year, month), self.month_start(year, month + 1))
        return self._last_cycle

    def midnight(self, t: float) -> float:
        """Local midnight at or before `t`."""
        local = int(t) + self.offset(t)
        return float(local - local % 86400 - self.offset(t))
