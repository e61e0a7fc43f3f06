"""Write-behind through a store outage: what a component does when its buffered rows cannot be written.

The trackers buffer their rows in memory and write them in batches. When the store fails (PostgreSQL
restarting, a network cut), the rows stay buffered and the component carries on counting; `Outage` says
when to try again (not on every event: a cut connection may take seconds to fail) and logs the first
failure and the recovery, not every attempt.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable

import structlog
from prometheus_client.core import Metric

from ioc.metrics import counter, gauge
from ioc.store.errors import StoreError

log = structlog.get_logger("ioc.store")

RETRY = 2.0  # seconds between attempts while the store fails
_ALL: weakref.WeakSet[Outage] = weakref.WeakSet()  # every component's, for `metrics`


class Outage:
    """The write state of one component: `ready()` before a write, then `failed(error)` or `recovered()`."""

    def __init__(self, component: str, *, retry: float = RETRY, clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.retry = retry
        self._clock = clock
        self._retry_at = 0.0
        self.down_since: float | None = None
        self.errors = 0
        _ALL.add(self)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def ready(self) -> bool:
        """Whether to try a write now (always, unless the last one failed less than `retry` ago)."""
        return self.down_since is None or self._clock() >= self._retry_at

    def retry_now(self) -> None:
        """The next `ready()` is true whatever the last attempt did (a last write at shutdown)."""
        self._retry_at = 0.0

    def failed(self, error: StoreError, *, buffered: int) -> None:
        self.errors += 1
        now = self._clock()
        self._retry_at = now + self.retry
        if self.down_since is None:
            self.down_since = now
            log.error("store.write_failed", component=self.component, error=str(error), buffered=buffered,
                      effect=f"kept in memory, written again every {self.retry:g}s until the store answers")

    def recovered(self, *, written: int) -> None:
        if self.down_since is not None:
            log.info("store.write_recovered", component=self.component, written=written,
                     outage_seconds=round(self._clock() - self.down_since, 1))
            self.down_since = None


def metrics() -> Iterable[Metric]:
    """`ioc_store_outage{component}` and `ioc_store_write_failures_total{component}`, over every component
    writing to the shared store (registered once by the daemon)."""
    down: dict[tuple[str], float] = {}
    failures: dict[tuple[str], float] = {}
    for outage in list(_ALL):
        key = (outage.component,)
        down[key] = max(down.get(key, 0.0), float(outage.down))
        failures[key] = failures.get(key, 0.0) + outage.errors
    yield gauge("ioc_store_outage", "1 while a component's writes to the shared store fail (its rows are kept "
                "in memory and written when the store answers).", ("component",), down)
    yield counter("ioc_store_write_failures", "Writes to the shared store that failed, by component.",
                  ("component",), failures)
