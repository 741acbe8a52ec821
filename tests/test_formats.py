"""Human formats: one reading of bytes, durations and ratios everywhere."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.formats import human_bytes, human_duration, human_duration_zh, local_time, percent, short_duration


@pytest.mark.parametrize(("value", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (104857600, "100 MiB"),
    (21474836480, "20 GiB"), (1.25 * 1024**4, "1.2 TiB"), (-2048, "-2 KiB"), (None, None),
    (float("nan"), None),
])
def test_human_bytes(value: float | None, text: str | None) -> None:
    assert human_bytes(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (42, "42s"), (61, "1m 1s"), (3725, "1h 2m"), (93784, "1d 2h"), (-90, "-1m 30s"), (None, None),
])
def test_human_duration(value: float | None, text: str | None) -> None:
    assert human_duration(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (42, "42秒"), (61, "1分钟1秒"), (3725, "1小时2分钟"), (93784, "1天2小时"), (-90, "-1分钟30秒"), (None, None),
    (float("inf"), None),
])
def test_human_duration_in_chinese(value: float | None, text: str | None) -> None:
    assert human_duration_zh(value) == text
    assert human_duration(value, "zh") == text


NOV_30_1125_BEIJING = dt.datetime(2026, 11, 30, 3, 25, 40, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(("zone", "language", "text"), [
    ("Asia/Shanghai", "en", "2026-11-30 11:25 CST"),
    ("Asia/Shanghai", "zh", "11月30日 11:25"),
    ("UTC", "en", "2026-11-30 03:25 UTC"),
    ("UTC", "zh", "11月30日 03:25 UTC"),
    ("Asia/Tokyo", "zh", "11月30日 12:25 JST"),
])
def test_local_time_reads_in_the_readers_zone(zone: str, language: str, text: str) -> None:
    assert local_time(NOV_30_1125_BEIJING, zone, language) == text  # type: ignore[arg-type]


def test_local_time_of_nothing_is_nothing() -> None:
    assert local_time(None) is None and local_time(float("nan")) is None


@pytest.mark.parametrize(("value", "text"), [
    (0, "0s"), (42, "42s"), (900, "15m"), (90, "1.5m"), (5400, "1.5h"), (21600, "6h"), (86400, "1d"),
    (200000, "2.3d"), (-120, "-2m"), (None, None),
])
def test_short_duration(value: float | None, text: str | None) -> None:
    assert short_duration(value) == text


@pytest.mark.parametrize(("value", "text"), [(0.075, "7.5%"), (1, "100%"), (0.5034, "50.3%"), (None, None)])
def test_percent(value: float | None, text: str | None) -> None:
    assert percent(value) == text
