"""Write-behind through a store outage: what a component does when its buffered rows cannot be written.

The trackers buffer their rows in memory and write them in batches. When the store fails (PostgreSQL
restarting, a network cut), the rows stay buffered and the component carries on counting; `Outage` says
when to try again (not on every event: a cut connection may take seconds to fail) and logs the first
failure and the recovery, not every attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from ioc.store.errors import StoreError

log = structlog.get_logger("ioc.store")

RETRY = 2.0  # seconds between attempts while the store fails


class Outage:
    """The write state of one component: `ready()` before a write, then `failed(error)` or `recovered()`."""

    def __init__(self, component: str, *, retry: float = RETRY, clock: Callable[[], float] = time.monotonic) -> None:
        self.component = component
        self.retry = retry
        self._clock = clock
        self._retry_at = 0.0
        self.down_since: float | None = None
        self.errors = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def ready(self) -> bool:
        """Whether to try a write now (always, unless the last one failed less than `retry` ago)."""
        return self.down_since is None or self._clock() >= self._retry_at

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
