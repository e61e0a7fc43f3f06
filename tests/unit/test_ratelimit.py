"""Token buckets (ioc/ratelimit.py) on a fake clock: no sleeping."""

from __future__ import annotations

import pytest

from ioc.config import VendorSettings
from ioc.ratelimit import RateLimiter, TokenBucket
from tests.doubles import SettableClock

HASH = "0" * 64


def test_a_new_bucket_is_full_and_burst_defaults_to_the_rate() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(10, clock=clock)
    assert bucket.burst == 10
    assert bucket.take(10) is None
    assert bucket.take(1) == pytest.approx(0.1)


def test_refused_requests_take_nothing_and_say_how_long_to_wait() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(10, 20, clock=clock)
    assert bucket.take(15) is None  # 5 left
    assert bucket.take(8) == pytest.approx(0.3)  # 3 more tokens needed at 10/s
    assert bucket.tokens == pytest.approx(5)  # the refusal took nothing
    clock.advance(0.3)
    assert bucket.take(8) is None
    assert bucket.tokens == pytest.approx(0)


def test_refill_is_capped_at_the_burst() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(100, 50, clock=clock)
    bucket.take(50)
    clock.advance(3600)
    assert bucket.tokens == pytest.approx(50)


def test_a_batch_bigger_than_the_burst_passes_when_full_and_leaves_debt() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(10, 10, clock=clock)
    assert bucket.take(30) is None  # would never fit otherwise
    assert bucket.tokens == pytest.approx(-20)
    # The debt is paid back before anything else passes: the long-run rate holds.
    assert bucket.take(1) == pytest.approx(2.1)
    clock.advance(2.1)
    assert bucket.take(1) is None


def test_a_batch_bigger_than_the_burst_waits_until_the_bucket_is_full() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(10, 10, clock=clock)
    bucket.take(4)  # 6 left
    assert bucket.take(30) == pytest.approx(0.4)  # until full, not until 30 tokens
    clock.advance(0.4)
    assert bucket.take(30) is None


def test_sustained_rate_is_respected() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(100, clock=clock)
    passed = 0
    for _ in range(1000):  # 10 s of requests of 5 events every 10 ms = 500 events/s offered
        if bucket.take(5) is None:
            passed += 5
        clock.advance(0.01)
    assert 1000 <= passed <= 1100  # 100/s over 10 s, plus the initial burst


def test_a_clock_stepping_back_does_not_drain_or_fill() -> None:
    clock = SettableClock(1000.0)
    bucket = TokenBucket(10, clock=clock)
    bucket.take(5)
    clock.advance(-100)
    assert bucket.tokens == pytest.approx(5)


def test_zero_events_always_pass_and_bad_parameters_are_refused() -> None:
    bucket = TokenBucket(1, clock=SettableClock(1000.0))
    bucket.take(1)
    assert bucket.take(0) is None
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_rate_limiter_keeps_one_bucket_per_vendor() -> None:
    clock = SettableClock(1000.0)
    vendors = [VendorSettings(name="a", token_sha256=HASH, sources=["a"], rate=5),
               VendorSettings(name="b", token_sha256="1" * 64, sources=["b"], rate=5, burst=1)]
    limiter = RateLimiter(vendors, clock=clock)
    assert limiter.buckets["b"].burst == 1
    assert limiter.take("a", 5) is None
    assert limiter.take("a", 1) is not None
    assert limiter.take("b", 1) is None  # a's use costs b nothing
    assert limiter.take("nobody", 10**9) is None  # not a configured vendor: not limited here
