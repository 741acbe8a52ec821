"""Human formats of bytes, durations and ratios: the one place the CLI tables, `status`, alert
templates and notifications take them from, so the same quantity always reads the same way.

Every function accepts None (unknown) and returns None for it; callers choose what to print instead.
"""

from __future__ import annotations

import math
from typing import Any

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def number(value: float, digits: int = 2) -> str:
    """A number without a useless fraction: 3.0 -> '3', 2.50 -> '2.5', 1.234 -> '1.23'."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def human_bytes(value: Any) -> str | None:
    """Binary units, at most one decimal: 1536 -> '1.5 KiB', 21474836480 -> '20 GiB'."""
    if value is None:
        return None
    size = float(value)
    if not math.isfinite(size):
        return None
    for unit in _BYTE_UNITS:
        if abs(size) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{number(round(size, 1), 1)} {unit}"
        size /= 1024
    return None  # pragma: no cover - the loop always returns


def human_duration(value: Any) -> str | None:
    """Two units, for sentences: 3725 -> '1h 2m', 93784 -> '1d 2h', 42 -> '42s'."""
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds):
        return None
    whole = int(seconds)
    sign, whole = ("-", -whole) if whole < 0 else ("", whole)
    d, rem = divmod(whole, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}d {h}h"
    if h:
        return f"{sign}{h}h {m}m"
    if m:
        return f"{sign}{m}m {s}s"
    return f"{sign}{s}s"


def short_duration(value: Any) -> str | None:
    """One unit, for tables and intervals: 42 -> '42s', 900 -> '15m', 5400 -> '1.5h', 21600 -> '6h',
    200000 -> '2.3d'."""
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds):
        return None
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    for limit, size, unit in ((60, 1, "s"), (3600, 60, "m"), (86400, 3600, "h")):
        if seconds < limit:
            return f"{sign}{number(round(seconds / size, 1), 1)}{unit}"
    return f"{sign}{number(round(seconds / 86400, 1), 1)}d"


def percent(value: Any) -> str | None:
    """A ratio as a percentage, one decimal at most: 0.075 -> '7.5%'."""
    if value is None:
        return None
    ratio = float(value)
    return None if not math.isfinite(ratio) else f"{number(round(ratio * 100, 1), 1)}%"
