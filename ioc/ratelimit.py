"""Per-vendor rate limits (docs/configuration.md `rate`, docs/transports.md `429`, docs/operations.md "Vendor
fairness"): token buckets, pure logic.

HTTP asks for a whole request (`take`: all or nothing, answered with `Retry-After`); MQTT asks for a
burst of messages and refuses the excess one by one (`take_up_to`). Each transport has its own buckets.

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

    def take_up_to(self, n: int) -> int:
        """Take as many of `n` whole tokens as there are; answer how many. Never in debt, but for a bucket
        smaller than one token."""
        if n <= 0:
            return 0
        with self._lock:
            self._refill()
            granted = min(n, int(self._tokens + _EPSILON)) if self._tokens > 0 else 0
            if granted == 0 and self._tokens >= self.burst - _EPSILON:
                granted = 1  # a bucket smaller than one token, full: one goes, in debt (as `take` does)
            self._tokens -= granted
            return granted


class RateLimiter:
    """One `TokenBucket` per vendor, built from `[[vendors]]`; unknown names are not limited.

    Thread-safe: the dict is never changed after construction and each bucket has its own lock, so
    vendors never wait for each other."""

    def __init__(self, vendors: Iterable[VendorSettings], *, clock: Clock = time.monotonic) -> None:
        self.buckets: dict[str, TokenBucket] = {
            vendor.name: TokenBucket(vendor.rate, vendor.burst, clock=clock) for vendor in vendors
        }

    def take(self, vendor: str, n: float) -> float | None:
        bucket = self.buckets.get(vendor)
        return None if bucket is None else bucket.take(n)

    def take_up_to(self, vendor: str, n: int) -> int:
        """How many of `n` events of `vendor` may go now (taken); all of them for an unknown vendor."""
        bucket = self.buckets.get(vendor)
        return n if bucket is None else bucket.take_up_to(n)
