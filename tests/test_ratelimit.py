"""The adaptive token bucket, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio

import pytest

from collector.metrics import RATE_LIMIT_CONFIGURED, RATE_LIMIT_CURRENT
from collector.platform.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(rate: float = 10.0, burst: int = 1, **kwargs: object) -> tuple[RateLimiter, FakeTime]:
    fake = FakeTime()
    return RateLimiter(rate, burst, clock=fake.clock, sleep=fake.sleep, **kwargs), fake  # type: ignore[arg-type]


async def test_burst_is_free_then_tokens_come_at_the_rate() -> None:
    bucket, fake = limiter(rate=10, burst=3)
    times = []
    for _ in range(7):
        await bucket.acquire()
        times.append(round(fake.now - 1000.0, 6))
    assert times == [0, 0, 0, 0.1, 0.2, 0.3, 0.4]


async def test_tokens_accumulate_while_idle_up_to_burst() -> None:
    bucket, fake = limiter(rate=2, burst=2)
    await bucket.acquire()
    await bucket.acquire()
    fake.now += 100  # idle for long: only `burst` tokens are kept
    await bucket.acquire()
    await bucket.acquire()
    assert fake.sleeps == []
    await bucket.acquire()
    assert fake.sleeps == [pytest.approx(0.5)]


async def test_waiters_are_served_in_arrival_order_without_spinning() -> None:
    bucket, fake = limiter(rate=4, burst=1)
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(8)))
    assert order == list(range(8))
    # One sleep per token, each exactly one token long: the head of the queue sleeps, nobody polls.
    assert fake.sleeps == [pytest.approx(0.25)] * 7
    assert fake.now - 1000.0 == pytest.approx(7 * 0.25)


async def test_cancelled_waiter_takes_no_token() -> None:
    fake = FakeTime()
    never = asyncio.Event()

    async def stuck(_seconds: float) -> None:
        await never.wait()

    bucket = RateLimiter(1.0, 1, clock=fake.clock, sleep=stuck)
    await bucket.acquire()
    waiter = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    fake.now += 1.0  # one token earned, and the cancelled waiter did not take it
    bucket._sleep = fake.sleep
    await bucket.acquire()
    assert fake.sleeps == []


def test_slow_down_halves_to_a_floor_and_updates_metrics() -> None:
    bucket, fake = limiter(rate=20)
    assert RATE_LIMIT_CONFIGURED._value.get() == 20
    rates = []
    for _ in range(8):
        fake.now += 0.001
        bucket.slow_down()
        rates.append(bucket.current_rate)
    assert rates == [10, 5, 2.5, 1.25, 1.0, 1.0, 1.0, 1.0]  # floor: 1/20 of 20 rps
    assert RATE_LIMIT_CURRENT._value.get() == 1.0


def test_floor_is_at_least_a_tenth_of_a_request_per_second_but_never_above_the_rate() -> None:
    assert limiter(rate=1)[0].floor == 0.1
    assert limiter(rate=0.05)[0].floor == 0.05


def test_throttles_from_requests_started_before_the_halving_count_once() -> None:
    bucket, fake = limiter(rate=16)
    sent_at = fake.now
    fake.now += 0.5
    # Sixteen in-flight requests all come back 429.
    changed = [bucket.slow_down(since=sent_at) for _ in range(16)]
    assert changed.count(True) == 1
    assert bucket.current_rate == 8
    fake.now += 1
    assert bucket.slow_down(since=fake.now - 0.1)  # a request sent after the halving counts again
    assert bucket.current_rate == 4


def test_recovery_is_gradual_and_stops_at_the_configured_rate() -> None:
    bucket, fake = limiter(rate=10, recover_step=0.1, recover_interval=10)
    bucket.slow_down()
    bucket.slow_down(since=fake.now)  # same moment, not before the halving: counts
    assert bucket.current_rate == 2.5
    fake.now += 9.9
    assert bucket.current_rate == 2.5  # not yet a whole interval without throttling
    fake.now += 0.1
    assert bucket.current_rate == pytest.approx(3.5)  # + 10 % of the configured rate
    fake.now += 30
    assert bucket.current_rate == pytest.approx(6.5)
    fake.now += 1000
    assert bucket.current_rate == 10


def test_a_throttle_restarts_the_recovery_clock() -> None:
    bucket, fake = limiter(rate=10, recover_interval=10)
    bucket.slow_down()
    fake.now += 9
    bucket.slow_down(since=0.0)  # ignored for halving (sent before it), but still a throttle
    assert bucket.current_rate == 5
    fake.now += 9
    assert bucket.current_rate == 5  # 18 s after the first, 9 s after the last throttle
    fake.now += 1
    assert bucket.current_rate == 6


async def test_slow_down_empties_the_bucket_and_applies_to_waiters() -> None:
    bucket, fake = limiter(rate=10, burst=5)
    await bucket.acquire()
    bucket.slow_down()  # 5 rps, no burst left
    await bucket.acquire()
    assert fake.sleeps == [pytest.approx(0.2)]


async def test_slot_bounds_concurrency() -> None:
    bucket = RateLimiter(1000.0, 1000, max_concurrency=2)
    inside = peak = 0

    async def work() -> None:
        nonlocal inside, peak
        async with bucket.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    await asyncio.gather(*(work() for _ in range(10)))
    assert peak == 2


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)
