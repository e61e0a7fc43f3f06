"""What a node of a cluster does with the shared store's alerts (CONTRACT §8): `sync()` when a node wrote
them (LISTEN/NOTIFY, or the daemon's safety sync), `store_changed()` for the tables a notification names,
`promote()` when this node starts leading. A part of `AlertManager` (ioc.alerts.manager), which holds the
state these methods work on; kept apart so each file reads as one job.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Container
from dataclasses import replace

from ioc.alerts.active import ActiveAlerts
from ioc.alerts.alert import Alert, Change
from ioc.alerts.delivery import Delivery
from ioc.alerts.muting import Muting
from ioc.alerts.silence import Silences, SilenceStore
from ioc.alerts.store import AlertStore
from ioc.rules.updates import AlertUpdate


class Replica:
    """The cluster methods of `AlertManager`; the attributes are the manager's."""

    store: AlertStore
    silences: Silences
    muting: Muting
    delivery: Delivery
    leader: Callable[[], bool]
    heard_resolved: dict[str, AlertUpdate]
    _lock: threading.RLock
    _active: ActiveAlerts
    _changes: defaultdict[tuple[str], int]
    _silence_store: SilenceStore
    _term: int | None
    _clock: Callable[[], float]

    def _refresh(self, *, notify: bool = True, silences: bool = True, gone: Alert | None = None,
                 quiet: Container[str] = ()) -> None:
        raise NotImplementedError

    def _deferring(self) -> bool:
        raise NotImplementedError

    def sync(self) -> None:
        """In a cluster, when a node wrote the alerts (LISTEN/NOTIFY) and at the daemon's safety sync: a
        follower's view becomes the store's (its stream told of each difference); the leader takes the
        acknowledgements other nodes stored (its stream told) and delivers the outbox rows they wrote with
        them (`Delivery.pick_up`). StoreError: the store does not answer (tried again at the next call)."""
        stored = {alert.fingerprint: alert for alert in self.store.active_alerts()}
        with self._lock:
            leading = self.leader()
            if not leading and self.heard_resolved:  # those the leader recorded are no longer needed
                self.heard_resolved = {key: update for key, update in self.heard_resolved.items() if key in stored}
            for alert, change in differences(list(self._active), stored, acks_only=leading):
                current = self._active.get(alert.fingerprint)
                if current is not None and current.id != alert.id:
                    self._active.drop(current)
                if change == "resolved":
                    self._active.drop(alert)
                else:
                    self._active.put(self.muting.apply(alert, self._clock()))
                self._changes[(change,)] += 1
                # The leader hears an operator's change another node stored with its outbox rows: those
                # are delivered from the outbox (`pick_up`), only its own stream is told here.
                self.delivery.record(self._active.get(alert.fingerprint) or alert, change, save=False,
                                     elsewhere=leading)
            if not self._deferring():
                self.delivery.flush()
            if leading:
                self.delivery.pick_up()

    def store_changed(self, tables: set[str]) -> None:
        """Some node wrote these tables (LISTEN/NOTIFY): silences are read again (the alerts they mute
        told, and notified by the leader); alerts are synced (`sync`). StoreError: tried at the next one."""
        if "silences" in tables:
            loaded = self._silence_store.load()
            with self._lock:
                self.silences.reload(loaded)
                self._refresh()
                if not self._deferring():
                    self.delivery.flush()
                if self.leader() and "alerts" not in tables:  # the muting rows of a follower's silence
                    self.delivery.pick_up()
        if "alerts" in tables:
            self.sync()

    def promote(self, term: int) -> None:
        """This node leads from now: the store's alerts are the truth, and the outbox is taken over."""
        with self._lock:
            # The same term: nobody else led since this node did, so what it could not store is still true.
            self.delivery.keep_unsaved(term == self._term)
            self.delivery.flush()
        stored = self.store.active_alerts()
        with self._lock:
            for alert in list(self._active):
                self._active.drop(alert)
            for alert in stored:
                self._active.put(alert)
            self.delivery.take_over(term)
            # What the last leader recorded of each alert's muting against the silences now: a silence that
            # began or ended by the clock while nobody led is told now (under the id it would have had).
            self._refresh(quiet=self.store.unrecorded_muting())
            self.delivery.flush()
            self._term = term  # once promoted: a promotion tried again decides as the first did


def differences(memory: list[Alert], stored: dict[str, Alert], *,
                acks_only: bool) -> list[tuple[Alert, Change]]:
    """What changed in the store against this node's view, as the changes to tell: every difference of
    state or acknowledgement (a follower), or only acknowledgements stored later than this node's change
    (the leader: the rules' changes are its own)."""
    found: list[tuple[Alert, Change]] = []
    known = {alert.fingerprint: alert for alert in memory}
    for fingerprint, alert in stored.items():
        mine = known.get(fingerprint)
        if acks_only:
            if (mine is not None and mine.id == alert.id and mine.acknowledged != alert.acknowledged
                    and alert.updated_at > mine.updated_at):
                found.append((replace(mine, acknowledged=alert.acknowledged, updated_at=alert.updated_at),
                              "acknowledged" if alert.acknowledged else "unacknowledged"))
            continue
        if mine is not None and mine.id == alert.id and mine.updated_at > alert.updated_at:
            continue  # read before this node's own later change was stored: the next sync sees it
        if mine is None or mine.id != alert.id or mine.state != alert.state:
            found.append((alert, alert.state))  # type: ignore[arg-type]  # pending or firing
        elif mine.acknowledged != alert.acknowledged:
            found.append((alert, "acknowledged" if alert.acknowledged else "unacknowledged"))
    if not acks_only:
        found += [(replace(alert, state="resolved"), "resolved") for fingerprint, alert in known.items()
                  if fingerprint not in stored]
    return found
