"""Human formats: one reading of bytes, durations and ratios everywhere."""

from __future__ import annotations

import pytest

from collector.formats import human_bytes, human_duration, percent, short_duration


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
    (0, "0s"), (42, "42s"), (900, "15m"), (90, "1.5m"), (5400, "1.5h"), (21600, "6h"), (86400, "1d"),
    (200000, "2.3d"), (-120, "-2m"), (None, None),
])
def test_short_duration(value: float | None, text: str | None) -> None:
    assert short_duration(value) == text


@pytest.mark.parametrize(("value", "text"), [(0.075, "7.5%"), (1, "100%"), (0.5034, "50.3%"), (None, None)])
def test_percent(value: float | None, text: str | None) -> None:
    assert percent(value) == text
