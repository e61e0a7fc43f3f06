"""The alerts as operators list them: the active ones (pending and firing) in memory, by fingerprint and
by id; the resolved ones kept in the store (`ioc.alerts.store`), read back on demand.

Not thread-safe on its own: the `AlertManager` calls it under its lock.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Literal, TypeAlias

from ioc.alerts.alert import Alert
from ioc.alerts.errors import AlertConflict, AlertNotFound
from ioc.alerts.store import AlertStore
from ioc.rules.updates import SEVERITY_RANK

ListState: TypeAlias = Literal["pending", "firing", "acknowledged", "resolved"]
LIST_STATES: tuple[ListState, ...] = ("pending", "firing", "acknowledged", "resolved")


def _listed(alert: Alert, state: ListState | None) -> bool:
    if state is None:
        return True
    if state == "acknowledged":
        return alert.state == "firing" and alert.acknowledged is not None
    return alert.state == state


class ActiveAlerts:
    """The pending and firing alerts, at most one per fingerprint (an episode), loaded from `store`."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store
        self._active: dict[str, Alert] = {}  # by fingerprint
        self._ids: dict[str, str] = {}  # alert id -> fingerprint
        for alert in store.active_alerts():
            self.put(alert)

    def __len__(self) -> int:
        return len(self._active)

    def __iter__(self) -> Iterator[Alert]:
        return iter(self._active.values())

    def get(self, fingerprint: str) -> Alert | None:
        return self._active.get(fingerprint)

    def put(self, alert: Alert) -> None:
        """Add or replace the active alert of its fingerprint."""
        self._active[alert.fingerprint] = alert
        self._ids[alert.id] = alert.fingerprint

    def drop(self, alert: Alert) -> None:
        self._active.pop(alert.fingerprint, None)
        self._ids.pop(alert.id, None)

    def by_id(self, alert_id: str) -> Alert:
        """The alert with this id, active or kept resolved; AlertNotFound."""
        fingerprint = self._ids.get(alert_id)
        if fingerprint is not None:
            return self._active[fingerprint]
        alert = self.store.get_alert(alert_id)
        if alert is None:
            raise AlertNotFound(f"no alert with id {alert_id!r}")
        return alert

    def firing(self, alert_id: str, action: str) -> Alert:
        """The firing alert with this id (what an operator may acknowledge); AlertNotFound, or
        AlertConflict naming its state."""
        alert = self.by_id(alert_id)
        if alert.state != "firing":
            raise AlertConflict(f"alert {alert_id!r} is {alert.state}: only a firing alert can be {action}")
        return alert

    def list(self, state: ListState | None = None, severity: str | None = None, *,
             limit: int = 1000) -> builtins.list[Alert]:
        """No state: the active alerts (pending and firing); `acknowledged`: the firing ones that are
        acknowledged (also listed under `firing`); `resolved`: the kept resolved ones, newest first.
        Active alerts come most severe first, then newest first. ValueError for an unknown state."""
        if state is not None and state not in LIST_STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(LIST_STATES)}")
        if state == "resolved":
            return self.store.resolved_alerts(severity=severity, limit=limit)
        alerts = [alert for alert in self._active.values()
                  if (severity is None or alert.severity == severity) and _listed(alert, state)]
        alerts.sort(key=lambda alert: (-SEVERITY_RANK.get(alert.severity, 0), -alert.started_at, alert.id))
        return alerts[:limit]

    def counts(self) -> dict[ListState, int]:
        """Active alerts by listed state (`acknowledged` ones are also `firing`); `resolved` is 0 here."""
        by_state: dict[ListState, int] = dict.fromkeys(LIST_STATES, 0)
        for alert in self._active.values():
            by_state[alert.state] += 1
            if alert.acknowledged is not None:
                by_state["acknowledged"] += 1
        return by_state
