"""Per-vendor rate limits for HTTP intake (CONTRACT §1 `rate`, §3 `429`): token buckets, pure logic.

A bucket holds up to `burst` tokens (default: one second of `rate`) and refills at `rate` tokens per
second; a request of n events takes n tokens or is refused with the time to wait (`Retry-After`).

A batch larger than the burst is allowed when the bucket is full, and leaves the bucket in debt (negative)
so the vendor then waits until the debt is paid back. Without that, a batch of more events than the burst
could never pass, however long the vendor waited; with it, the long-run rate still holds: n events always
cost n/rate seconds of the vendor's budget. The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from ioc.config import VendorSettings

Clock = Callable[[], float]
# Float slack: a caller that waited exactly the answered time must pass despite rounding.
_EPSILON = 1e-6


class TokenBucket:
    """`take(n)` is None when n events may go now (tokens taken), else the seconds to wait."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else self.rate
        if self.burst <= 0:
            raise ValueError("burst must be positive")
        self._clock = clock
        self._tokens = self.burst  # a new vendor starts with a full bucket
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)  # a clock that steps back never drains the bucket
        self._updated = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    @property
    def tokens(self) -> float:
        """Tokens available now (negative while a big batch's debt is paid back)."""
        with self._lock:
            self._refill()
            return self._tokens

    def take(self, n: float) -> float | None:
        """Take `n` tokens and answer None, or take nothing and answer the seconds until `n` would pass."""
        if n <= 0:
            return None
        with self._lock:
            self._refill()
            if n <= self._tokens + _EPSILON or self._tokens >= self.burst - _EPSILON:
                # Either it fits, or it is bigger than the bucket and the bucket is full: let it go in
                # debt (see the module docstring).
                self._tokens -= n
                return None
            needed = min(n, self.burst) - self._tokens
            return needed / self.rate


class RateLimiter:
    """One `TokenBucket` per vendor, built from `[[vendors]]`; unknown names are not limited."""

    def __init__(self, vendors: Iterable[VendorSettings], *, clock: Clock = time.monotonic) -> None:
        self.buckets: dict[str, TokenBucket] = {
            vendor.name: TokenBucket(vendor.rate, vendor.burst, clock=clock) for vendor in vendors
        }

    def take(self, vendor: str, n: float) -> float | None:
        bucket = self.buckets.get(vendor)
        return None if bucket is None else bucket.take(n)
