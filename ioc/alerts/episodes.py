"""The id of a new alert episode: derived from its fingerprint and start (`ioc.alerts.outbox.alert_id`), so
every node of a cluster gives one episode the same id, and salted past the ids of other episodes the
store keeps when a late event begins one at the very time an earlier one began.

Not thread-safe on its own: the `AlertManager` calls it (through `Delivery`) under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ioc.alerts import outbox as ids
from ioc.alerts.store import AlertStore
from ioc.store import StoreError


class EpisodeIds:
    """Gives new episodes their ids, looking the store up only for an episode that does not begin after
    every kept one (rare), and never while `store_down()` says the store is away."""

    def __init__(self, store: AlertStore, *, store_down: Callable[[], bool]) -> None:
        self.store = store
        self._store_down = store_down
        self._lookup_failed = False  # a lookup found the store away (until it answers again: `answered`)
        self._latest_start = -math.inf  # no kept episode began later
        self._at_latest: set[str] | None = set()  # the fingerprints whose episode began then (None: unknown)
        self.know_starts()

    def know_starts(self) -> None:
        """Learn the latest start the store keeps (at start-up, and when this node takes the lead over:
        the episodes the other leaders recorded)."""
        try:
            latest = self.store.latest_start()
        except StoreError:
            latest = math.inf  # unknown: every new episode's id is looked up
        latest = -math.inf if latest is None else latest
        if latest >= self._latest_start:
            self._latest_start, self._at_latest = latest, (set() if latest == -math.inf else None)

    def answered(self) -> None:
        """The store took a write: lookups may ask it again."""
        self._lookup_failed = False

    def new(self, fingerprint: str, started_at: float) -> str:
        """A new episode's id; salted past a kept episode's (an active one is this episode). Unsalted while
        the store is away, as every node would choose then."""
        if started_at > self._latest_start:  # the usual case: time moves on, no kept episode began then
            self._latest_start, self._at_latest = started_at, {fingerprint}
            return ids.alert_id(fingerprint, started_at)
        if started_at == self._latest_start and self._at_latest is not None and fingerprint not in self._at_latest:
            self._at_latest.add(fingerprint)  # a storm's alerts of one event time
            return ids.alert_id(fingerprint, started_at)
        salt = 0
        while True:
            candidate = ids.alert_id(fingerprint, started_at, salt)
            if self._store_down() or self._lookup_failed:
                return candidate
            try:
                taken = self.store.get_alert(candidate)
            except StoreError:  # the next flush finds the store away and logs it; no lookup until it is back
                self._lookup_failed = True
                return candidate
            if taken is None or taken.state != "resolved":
                return candidate
            salt += 1
