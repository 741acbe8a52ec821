"""The one retry policy of the collector: exponential backoff with "equal jitter", bounded attempts,
and the server's `Retry-After` honoured. The platform client, the sinks and the notifiers all wait
with `Backoff.delay`, and every `Retry-After` header is read by `parse_retry_after`.

Equal jitter: the n-th wait is between half and all of `min(maximum, initial * 2**(n-1))`, so many
callers retrying at once spread out but still back off.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

# A Retry-After longer than this is read as this: a server asking for an hour is answered later,
# by the caller's own schedule, not by a task sleeping that long.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait between attempts. `max_attempts` None: retry for as long as the caller wants."""

    initial: float
    maximum: float
    max_attempts: int | None = None

    def step(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt number `attempt` (1-based)."""
        return min(self.maximum, self.initial * 2 ** max(attempt - 1, 0))

    def delay(self, attempt: int, retry_after: float | None = None, *,
              rng: random.Random | None = None) -> float | None:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one, or None to
        give up. A bounded policy gives up when its attempts are used up, or when the server asks for
        a longer wait than `maximum` (calling back early would only be refused again; the caller's
        own schedule comes back later). An unbounded one (a sink holding spooled points) waits as
        long as the server asks."""
        limit = self.max_attempts
        if limit is not None and (attempt >= limit or (retry_after is not None and retry_after > self.maximum)):
            return None
        base = self.step(attempt)
        wait = base * (0.5 + (rng or random).random() / 2)
        return wait if retry_after is None else max(wait, retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header as seconds to wait (delta-seconds or an HTTP date, capped at
    MAX_RETRY_AFTER); None when absent or unusable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
