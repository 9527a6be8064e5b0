"""Per-key rate limits: the `Allow` interface features take, and its in-process implementation.

    allow: Allow = TokenBuckets(rate=5.0, burst=20).allow
    wait = await allow(f"chat.post:{user_id}")
    if wait is not None:
        raise RateLimited("...", retry_after=retry_after_header(wait))

A limiter shared by every process of a deployment (Redis-backed) implements the same `Allow`
and is handed to the features by the composition root in place of `TokenBuckets.allow`.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

Allow = Callable[[str], Awaitable[float | None]]
"""`await allow(key)`: spends one unit of `key`'s allowance and returns None, or spends nothing
and returns the seconds until a unit will be there (the truthful `Retry-After`)."""

# Float sums of refills must not refuse a request made exactly when a token was promised.
_EPSILON = 1e-9


class TokenBuckets:
    """One bucket of `burst` tokens per key, refilled at `rate` tokens per second, in this
    process only. Never blocks. Memory: one entry per key that spent a token within the last
    `burst / rate` seconds; older entries are full buckets again and are forgotten."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"TokenBuckets(rate={rate}, burst={burst}): rate > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._refill_seconds = burst / rate
        self._clock = clock
        # key -> (tokens, when), least recently touched first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def allow(self, key: str) -> float | None:
        """The `Allow` of these buckets."""
        return self.take(key)

    def take(self, key: str) -> float | None:
        """Spend a token of `key`: None, or the seconds until one will be there."""
        now = self._clock()
        self._forget_full(now)
        tokens, when = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - when) * self._rate)
        if tokens < 1.0 - _EPSILON:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
        self._buckets[key] = (max(0.0, tokens - 1.0), now)
        return None

    def _forget_full(self, now: float) -> None:
        while self._buckets:
            key, (_, when) = next(iter(self._buckets.items()))
            if now - when < self._refill_seconds:
                return
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(wait: float) -> int:
    """Whole seconds for `Retry-After`: rounded up, so that a client that waits that long is
    let through, and at least 1."""
    return max(1, math.ceil(wait - _EPSILON))
