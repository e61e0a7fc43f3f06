"""ioc/retry.py: the one backoff, the one Retry-After parser, the tenacity loop."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest

from ioc.retry import (
    MIN_DELAY,
    Aborted,
    Backoff,
    RetryPolicy,
    backoff_delay,
    honour_retry_after,
    parse_retry_after,
)

LOW = lambda low, high: low  # the jitter's two ends
HIGH = lambda low, high: high


class Refused(Exception):
    def __init__(self, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__("refused")
        self.retryable = retryable
        self.retry_after = retry_after


def test_backoff_doubles_from_the_minimum_up_to_the_maximum_with_equal_jitter() -> None:
    assert [backoff_delay(n, 1, 60, HIGH) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, 1, 60, LOW) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(0, 1, 60, HIGH) == 2  # "no failure yet" is treated as the first
    assert backoff_delay(10_000, 1, 60, HIGH) == 60  # no overflow on a long outage
    delays = {backoff_delay(4, 1, 60) for _ in range(50)}
    assert len(delays) > 1 and all(8 <= delay <= 16 for delay in delays)  # really jittered


def test_backoff_never_busy_loops_and_never_goes_below_the_minimum() -> None:
    assert backoff_delay(1, 0, 0) == MIN_DELAY
    assert backoff_delay(3, 5, 1, LOW) == 5  # a maximum below the minimum is the minimum


def test_retry_after_is_honoured_up_to_the_maximum() -> None:
    assert honour_retry_after(1.0, None, 60) == 1.0
    assert honour_retry_after(1.0, 5.0, 60) == 5.0
    assert honour_retry_after(10.0, 5.0, 60) == 10.0  # our own backoff is longer: it stands
    assert honour_retry_after(1.0, 86_400.0, 60) == 60  # "come back tomorrow" stalls nothing


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0),
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:00", None),  # an HTTP date has a zone
])
def test_parse_retry_after_takes_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_takes_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    later = parse_retry_after(email.utils.formatdate(time.time() + 100, usegmt=True))
    assert later is not None and 90 < later <= 100


def test_policy_delays_match_the_backoff_and_the_servers_hint() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_min=1.0, backoff_max=8.0)
    assert [policy.delay(n, rand=HIGH) for n in range(1, 6)] == [2, 4, 8, 8, 8]
    assert policy.delay(1, retry_after=5.0, rand=LOW) == 5.0
    assert policy.delay(1, retry_after=600.0, rand=LOW) == 8.0


def test_backoff_object_counts_failures_and_resets() -> None:
    backoff = Backoff(1, 8, rand=HIGH)
    assert backoff.peek() == 2 and backoff.failures == 0
    assert [backoff.failed() for _ in range(5)] == [2, 4, 8, 8, 8]
    assert backoff.failed(retry_after=6.0) == 8  # longer than asked already
    backoff.reset()
    assert backoff.failed(retry_after=6.0) == 6.0
    assert backoff.failed() == 4


def _loop(policy: RetryPolicy, failures: list[Refused], **kwargs: object) -> tuple[int, list[float]]:
    calls = 0
    slept: list[float] = []

    def call() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    retrying = policy.retrying(retry_on=lambda error: isinstance(error, Refused) and error.retryable,
                               before_sleep=lambda state: slept.append(state.upcoming_sleep), rand=LOW,
                               **kwargs)  # type: ignore[arg-type]
    retrying.sleep = lambda seconds: None  # type: ignore[method-assign]  # no real waiting in a unit test
    for attempt in retrying:
        with attempt:
            call()
    return calls, slept


def test_retrying_retries_what_is_retryable_until_it_succeeds() -> None:
    calls, slept = _loop(RetryPolicy(5, 1.0, 60.0), [Refused(), Refused(retry_after=30.0)])
    assert calls == 3 and slept == [1.0, 30.0]  # the second wait is the server's


def test_retrying_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors = [Refused(), Refused(), Refused(), Refused()]
    last = errors[2]
    with pytest.raises(Refused) as raised:
        _loop(RetryPolicy(3, 1.0, 60.0), errors)
    assert raised.value is last and len(errors) == 1


def test_retrying_stops_at_once_on_an_error_that_is_not_retryable() -> None:
    with pytest.raises(Refused) as raised:
        _loop(RetryPolicy(5, 1.0, 60.0), [Refused(retryable=False)])
    assert not raised.value.retryable


def test_an_abort_ends_the_wait_at_once() -> None:
    abort = threading.Event()
    policy = RetryPolicy(0, 30.0, 60.0)  # no limit of attempts, long waits
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise Refused()

    threading.Timer(0.2, abort.set).start()
    started = time.monotonic()
    with pytest.raises(Aborted):
        for attempt in policy.retrying(retry_on=lambda error: True, abort=abort):
            with attempt:
                call()
    assert calls == 1 and time.monotonic() - started < 20  # not the 30 s wait
    with pytest.raises(Refused):  # once set, the first failure is the last
        for attempt in policy.retrying(retry_on=lambda error: True, abort=abort):
            with attempt:
                call()
    assert calls == 2


async def test_async_retrying_retries_a_later_answer_until_it_is_taken() -> None:
    answers = ["later", "later", "taken"]
    slept: list[float] = []

    async def call() -> str:
        return answers.pop(0)

    retrying = RetryPolicy(0, 0.01, 0.02).retrying_async(
        retry_result=lambda answer: answer == "later", rand=LOW,
        before_sleep=lambda state: slept.append(state.upcoming_sleep))
    assert await retrying(call) == "taken"
    assert slept == [MIN_DELAY, MIN_DELAY] and answers == []


async def test_async_retrying_gives_the_last_answer_when_time_is_up() -> None:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return "later"

    started = time.monotonic()
    retrying = RetryPolicy(0, 0.05, 0.1).retrying_async(retry_result=lambda answer: answer == "later",
                                                        within=0.3)
    assert await retrying(call) == "later"  # no tenacity.RetryError: the caller sees the answer
    assert 2 <= calls and time.monotonic() - started < 10
    assert await RetryPolicy(2, 0.05, 0.1).retrying_async(retry_result=lambda answer: True)(call) == "later"


async def test_async_retrying_raises_an_error_it_does_not_retry() -> None:
    async def call() -> str:
        raise Refused(retryable=False)

    with pytest.raises(Refused):
        await RetryPolicy(5, 0.01, 0.02).retrying_async(retry_result=lambda answer: False)(call)
