"""The request budget towards the platform: one async token bucket shared by every caller, adaptive to
the platform's throttling, plus the concurrency limit.

* `rate` tokens a second refill a bucket of `burst` tokens; every request takes one. Waiters are
  served first come, first served: they queue on an `asyncio.Lock` (FIFO), and only the head of the
  queue sleeps, exactly as long as the next token needs. Nothing polls or spins.
* `slow_down()` (the platform said 429 / "rate limited") halves the rate, down to a floor of 1/20 of
  the configured rate (but not below 0.1 req/s unless the configured rate itself is lower), and empties
  the bucket so the burst that caused the throttle is not repeated. Throttle signals from requests
  that started before the last halving are ignored: a burst of in-flight requests all answered 429
  is one signal, not sixteen.
* Recovery is gradual: after `recover_interval` seconds without a throttle the rate grows by
  `recover_step` of the configured rate, and again every `recover_interval`, up to the configured rate.
  It is computed lazily when tokens are taken (no background task).
* `slot()` also bounds concurrency with a semaphore (platform.max_concurrency): the slot is taken
  before the token, so a request never holds a token while waiting for a connection slot.

The clock and the sleep are injectable so tests can drive time by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from collector.metrics import RATE_LIMIT_CONFIGURED, RATE_LIMIT_CURRENT

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_EPSILON = 1e-9  # tokens; see acquire()


class RateLimiter:
    """Adaptive token bucket + concurrency limit, for one event loop."""

    def __init__(self, rate: float, burst: int = 1, *, max_concurrency: int | None = None,
                 floor_fraction: float = 1 / 20, min_rate: float = 0.1, recover_step: float = 0.1,
                 recover_interval: float = 10.0, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, export_metrics: bool = True) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.configured_rate = float(rate)
        self.burst = burst
        self.floor = min(self.configured_rate, max(self.configured_rate * floor_fraction, min_rate))
        self.recover_step = recover_step
        self.recover_interval = recover_interval
        self.clock = clock
        self._sleep = sleep
        self._rate = self.configured_rate
        self._tokens = float(burst)
        self._updated = clock()
        self._last_throttle = float("-inf")
        self._last_change = float("-inf")
        self._last_halving = float("-inf")
        self._lock = asyncio.Lock()
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._metrics = export_metrics
        if export_metrics:
            RATE_LIMIT_CONFIGURED.set(self.configured_rate)
            RATE_LIMIT_CURRENT.set(self._rate)

    @property
    def current_rate(self) -> float:
        """Requests per second allowed now (recovery applied up to this moment)."""
        self._recover(self.clock())
        return self._rate

    def _set_rate(self, rate: float, now: float) -> None:
        self._rate = rate
        self._last_change = now
        if self._metrics:
            RATE_LIMIT_CURRENT.set(rate)

    def _recover(self, now: float) -> None:
        if self._rate >= self.configured_rate:
            return
        # Whole recovery steps earned since the later of the last throttle and the last change.
        since = max(self._last_throttle, self._last_change)
        steps = int((now - since) // self.recover_interval)
        if steps > 0:
            rate = min(self.configured_rate, self._rate + steps * self.recover_step * self.configured_rate)
            self._refill(since + steps * self.recover_interval)  # tokens earned at the old rate
            self._set_rate(rate, since + steps * self.recover_interval)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._rate)
            self._updated = now

    async def acquire(self) -> None:
        """Wait for one token (first come, first served). Cancellation while waiting takes none."""
        async with self._lock:
            while True:
                now = self.clock()
                self._recover(now)
                self._refill(now)
                # The epsilon absorbs float rounding: after sleeping exactly the computed time the
                # refill may land a hair below 1.0, and waiting for 1e-15 tokens would spin.
                if self._tokens >= 1.0 - _EPSILON:
                    self._tokens = max(self._tokens - 1.0, 0.0)
                    return
                # The rate may change while we sleep (halved by a throttle, raised by recovery): the
                # loop re-reads it, so a halving delays the head of the queue too.
                await self._sleep((1.0 - self._tokens) / self._rate)

    def slow_down(self, since: float | None = None) -> bool:
        """A throttle signal. `since` is when the throttled request started (on `self.clock`): a
        request sent before the last halving does not halve again. Returns whether the rate changed."""
        now = self.clock()
        self._recover(now)
        self._last_throttle = now
        if since is not None and since < self._last_halving:
            return False
        self._refill(now)
        self._tokens = min(self._tokens, 0.0)
        if self._rate <= self.floor:
            return False
        self._last_halving = now
        self._set_rate(max(self._rate / 2, self.floor), now)
        return True

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A concurrency slot and then a token: hold it for the duration of one request."""
        if self._semaphore is None:
            await self.acquire()
            yield
            return
        async with self._semaphore:
            await self.acquire()
            yield
