"""The one retry policy: equal-jitter exponential backoff, bounded attempts, Retry-After honoured."""

from __future__ import annotations

import email.utils
import random

import pytest

from collector.retry import MAX_RETRY_AFTER, Backoff, parse_retry_after


def test_waits_double_up_to_the_maximum_with_equal_jitter() -> None:
    policy = Backoff(initial=1.0, maximum=8.0)
    rng = random.Random(7)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (12, 8.0)]:
        for _ in range(50):
            delay = policy.delay(attempt, rng=rng)
            assert delay is not None
            assert step / 2 <= delay <= step


def test_a_bounded_policy_gives_up_after_its_attempts() -> None:
    policy = Backoff(initial=0.5, maximum=30.0, max_attempts=3)
    assert policy.delay(1) is not None
    assert policy.delay(2) is not None
    assert policy.delay(3) is None


def test_retry_after_is_a_floor_and_a_longer_one_ends_a_bounded_policy() -> None:
    bounded = Backoff(initial=0.5, maximum=30.0, max_attempts=5)
    assert bounded.delay(1, 12.0) == pytest.approx(12.0)
    assert bounded.delay(1, 31.0) is None
    unbounded = Backoff(initial=0.5, maximum=30.0)
    assert unbounded.delay(1, 120.0) == pytest.approx(120.0)
    assert unbounded.delay(40) is not None


@pytest.mark.parametrize(("header", "expected"), [
    ("5", 5.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", 0.0), ("999999", MAX_RETRY_AFTER),
    ("", None), (None, None), ("soon", None), ("nan", None),
])
def test_retry_after_header_forms(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(90.0)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
