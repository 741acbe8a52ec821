"""Human formats of bytes, durations, ratios and times: the one place the CLI tables, `status`, alert
templates and notifications take them from, so the same quantity always reads the same way.

Every function accepts None (unknown) and returns None for it; callers choose what to print instead.
Where the words differ by language (durations, dates), a `language` argument selects English (`en`,
the default) or Chinese (`zh`): `1d 2h` / `1天2小时`. Sizes and percentages read the same in both.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from typing import Any, Literal

Language = Literal["en", "zh"]
LANGUAGES: tuple[Language, ...] = ("en", "zh")

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
# (day, hour, minute, second, separator between two units)
_DURATION_WORDS: dict[str, tuple[str, str, str, str, str]] = {
    "en": ("d", "h", "m", "s", " "),
    "zh": ("天", "小时", "分钟", "秒", ""),
}
_BEIJING = dt.timedelta(hours=8)


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


def human_duration(value: Any, language: Language = "en") -> str | None:
    """Two units, for sentences: 3725 -> '1h 2m', 93784 -> '1d 2h', 42 -> '42s'; in Chinese
    '1小时2分钟', '1天2小时', '42秒'."""
    if value is None:
        return None
    seconds = float(value)
    if not math.isfinite(seconds):
        return None
    day, hour, minute, second, sep = _DURATION_WORDS[language]
    whole = int(seconds)
    sign, whole = ("-", -whole) if whole < 0 else ("", whole)
    d, rem = divmod(whole, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{sign}{d}{day}{sep}{h}{hour}"
    if h:
        return f"{sign}{h}{hour}{sep}{m}{minute}"
    if m:
        return f"{sign}{m}{minute}{sep}{s}{second}"
    return f"{sign}{s}{second}"


def human_duration_zh(value: Any) -> str | None:
    """`human_duration` in Chinese: 93784 -> '1天2小时'."""
    return human_duration(value, "zh")


def local_time(value: Any, zone: str = "Asia/Shanghai", language: Language = "en") -> str | None:
    """A Unix time as the reader's wall clock in `zone`, to the minute: '2026-11-30 11:25 CST' in
    English; '11月30日 11:25' in Chinese, where Beijing time (UTC+8) needs no zone and any other
    zone is named after the time ('11月30日 03:25 UTC')."""
    if value is None:
        return None
    ts = float(value)
    if not math.isfinite(ts):
        return None
    local = dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(zone))
    if language == "zh":
        text = f"{local.month}月{local.day}日 {local:%H:%M}"
        return text if local.utcoffset() == _BEIJING else f"{text} {local:%Z}"
    return f"{local:%Y-%m-%d %H:%M %Z}"


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
