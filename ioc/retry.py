"""One retry and backoff for every client of the daemon, and the one `Retry-After` parser.

Every client that talks to something that may be down (the MQTT reconnect, webhooks and other notifiers,
the HTTP poll connector's hand-over, the InfluxDB sink's probe) waits the same way: exponential from a
minimum, doubling per failure, capped at a maximum, with "equal jitter" (uniform in the upper half of the
step, never below the minimum) so that many daemons restarted together do not all knock at the same
instant; a server's `Retry-After` is honoured, capped at the maximum (a bogus "come back tomorrow" must
not stall a queue).

Built on tenacity (its wait strategies, stop conditions and retry loop):
- `RetryPolicy.retrying(...)` is a `tenacity.Retrying` for code that retries a call in a loop of its own
  (notifiers): attempts, which errors are worth another try, an abort event that ends the waiting;
  `retrying_async(...)` the same in asyncio, for a call that answers "later" with its result (the HTTP
  poll connector's hand-over to a full intake).
- `Backoff` is for clients whose loop belongs to someone else (paho's reconnect thread, the sink's probe
  clock): `failed()` gives the next delay, `reset()` after a success.
Errors carry the server's hint as a `retry_after` attribute in seconds (SinkError, NotifyError): the wait
strategy reads it from the failed attempt.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.wait import wait_base

Rand = Callable[[float, float], float]  # uniform(low, high); a test passes `lambda low, high: low`

MIN_DELAY = 0.05  # seconds; a zero minimum must not become a busy loop


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP `Retry-After` header (delta-seconds or an HTTP date), or None when
    absent or unreadable (the caller's own backoff applies then). A date in the past is 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None  # NaN, inf: no answer
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; one without a zone is not a valid HTTP date
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(failures: int, low: float, high: float, rand: Rand = random.uniform) -> float:
    """Seconds to wait after `failures` (1 for the first) consecutive failures: exponential from `low`,
    capped at `high`, with equal jitter; never below `low` (itself at least MIN_DELAY)."""
    low = max(low, MIN_DELAY)
    high = max(high, low)
    cap = min(high, low * 2.0 ** min(max(failures, 1), 62))
    return max(low, rand(cap / 2.0, cap))


def honour_retry_after(delay: float, retry_after: float | None, high: float) -> float:
    """The wait once the server said `Retry-After`: at least what it asked for, up to `high`."""
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, max(high, MIN_DELAY)))


class wait_equal_jitter(wait_base):  # named as tenacity names its wait strategies
    """tenacity wait strategy: `backoff_delay` by the attempt number, raised to the failed attempt's
    `retry_after` (an attribute of its exception) when it has one."""

    def __init__(self, low: float, high: float, rand: Rand = random.uniform) -> None:
        self.low = low
        self.high = high
        self.rand = rand

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = backoff_delay(retry_state.attempt_number, self.low, self.high, self.rand)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        return honour_retry_after(delay, getattr(error, "retry_after", None), self.high)


class Aborted(Exception):
    """The abort event was set while waiting for the next attempt."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts (0: no limit); before attempt n+1 wait `backoff_delay(n, ...)`
    from `backoff_min` up to `backoff_max`, or the server's Retry-After up to `backoff_max`."""

    max_attempts: int = 5
    backoff_min: float = 1.0
    backoff_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None, rand: Rand = random.uniform) -> float:
        """Seconds before attempt `attempt + 1`, after attempt `attempt` (1-based) failed."""
        delay = backoff_delay(attempt, self.backoff_min, self.backoff_max, rand)
        return honour_retry_after(delay, retry_after, self.backoff_max)

    def retrying(self, *, retry_on: Callable[[BaseException], bool], abort: threading.Event | None = None,
                 before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
                 rand: Rand = random.uniform) -> tenacity.Retrying:
        """A tenacity loop under this policy: `for attempt in policy.retrying(...): with attempt: call()`.

        Retries the errors `retry_on` accepts; the last error is raised as itself when the attempts are
        used up or it is not retryable. With `abort`: no attempt starts once it is set, and a wait it cuts
        short raises `Aborted`."""
        stop = self._stop()
        sleep: Callable[[float], None] = time.sleep
        if abort is not None:
            stop = stop | tenacity.stop_when_event_set(abort)

            def sleep(seconds: float) -> None:
                if abort.wait(seconds):
                    raise Aborted

        return tenacity.Retrying(
            sleep=sleep, stop=stop, wait=wait_equal_jitter(self.backoff_min, self.backoff_max, rand),
            retry=tenacity.retry_if_exception(retry_on), before_sleep=before_sleep, reraise=True)

    def retrying_async(self, *, retry_result: Callable[[Any], bool],
                       retry_on: Callable[[BaseException], bool] = lambda error: False,
                       within: float | None = None,
                       before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
                       rand: Rand = random.uniform) -> tenacity.AsyncRetrying:
        """The same for asyncio (its waits are `asyncio.sleep`, so a cancelled task stops waiting), for a
        call that answers "later" with a result (`retry_result`) rather than an error. `within`: seconds
        after which no attempt starts. When the attempts are used up, the last result is returned (or the
        last error raised)."""
        stop = self._stop()
        if within is not None:
            stop = stop | tenacity.stop_after_delay(within)
        return tenacity.AsyncRetrying(
            stop=stop, wait=wait_equal_jitter(self.backoff_min, self.backoff_max, rand),
            retry=tenacity.retry_if_result(retry_result) | tenacity.retry_if_exception(retry_on),
            before_sleep=before_sleep, retry_error_callback=_last_outcome)

    def _stop(self) -> tenacity.stop.stop_base:
        return tenacity.stop_after_attempt(self.max_attempts) if self.max_attempts > 0 else tenacity.stop_never


def _last_outcome(state: tenacity.RetryCallState) -> Any:
    """What the last attempt returned, or its error raised: no tenacity.RetryError for the caller."""
    assert state.outcome is not None
    return state.outcome.result()


class Backoff:
    """Delays for a client whose retry loop runs elsewhere (paho's reconnect, a sink's probe): each
    `failed()` is the next delay, `reset()` after a success starts again from the minimum. Not
    thread-safe: one owner thread (each user calls it from one)."""

    __slots__ = ("failures", "high", "low", "rand")

    def __init__(self, low: float, high: float, rand: Rand = random.uniform) -> None:
        self.low = low
        self.high = high
        self.rand = rand
        self.failures = 0

    def peek(self) -> float:
        """The delay the next failure will get (a jittered draw; it does not count as a failure)."""
        return backoff_delay(self.failures + 1, self.low, self.high, self.rand)

    def failed(self, retry_after: float | None = None) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        return honour_retry_after(backoff_delay(self.failures, self.low, self.high, self.rand), retry_after,
                                  self.high)

    def reset(self) -> None:
        self.failures = 0
