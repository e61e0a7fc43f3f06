"""What a node does when it starts leading (docs/operations.md, "A cluster: high availability").

A new leader makes the store's alerts its view and takes the outbox over (`AlertManager.promote`). At
start the stored alerts are the truth (the engine adopts them); a node that evaluated as a hot follower
knows better than the store what changed since the old leader last wrote (it died, or the store was
away): its engine's view is recorded, so an alert that resolved while nobody led is recorded and told
once. The alert ids and notification ids it records are those the old leader gave the same changes
(derived from the events both evaluated: `ioc.alerts.outbox`), so what the old leader told without
storing it (the store was away) is told again under the same ids, and receivers drop the repeat.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from ioc.alerts.manager import AlertManager
from ioc.rules.engine import RuleEngine
from ioc.rules.updates import AlertUpdate
from ioc.store import StoreError

log = structlog.get_logger("ioc.cluster")


class Leadership:
    """`role_changed` is the cluster node's listener; `hot` is set once the node evaluates (after start)."""

    def __init__(self, alerts: AlertManager, engine: RuleEngine, term: Callable[[], int | None]) -> None:
        self.alerts = alerts
        self.engine = engine
        self.term = term
        self.hot = False

    def role_changed(self, leading: bool) -> None:
        if not leading:
            return
        for attempt in (1, 2):
            try:
                self.alerts.promote(self.term() or 0)
                break
            except StoreError as error:
                # The lease was just renewed, so the store answers: a connection PostgreSQL cut while it was
                # away fails its next statement once, and the one after connects again.
                if attempt == 2:
                    log.error("cluster.promote_failed", error=str(error))
                    return
                log.info("cluster.promote_retried", error=str(error))
        if self.hot:
            self.record_engine_view()
        else:
            self.engine.adopt(self.alerts.active())

    def record_engine_view(self) -> None:
        """Record what the engine holds: stored alerts it does not hold resolve, the rest are applied (a
        repeat of the stored state changes nothing). The engine is held still meanwhile, as its own
        evaluation is when it tells a change, so no change comes between the snapshot and its recording."""
        with self.engine.still():
            live = self.engine.active()
            # The episode the engine holds per fingerprint (None: unknown, taken as the stored one): a stored
            # alert of an earlier episode resolves before the engine's begins (both while nobody recorded).
            held = {update.fingerprint: update.since for update in live}
            heard, self.alerts.heard_resolved = self.alerts.heard_resolved, {}
            now = time.time()
            for alert in self.alerts.active():
                since = held.get(alert.fingerprint, alert.started_at)
                if alert.fingerprint not in held or (since is not None and since != alert.started_at):
                    # At the (event) time and with the value the engine resolved it, as the old leader
                    # would have; the wall clock only when this node did not see it resolve.
                    resolve = heard.get(alert.fingerprint)
                    if resolve is None or resolve.at < alert.started_at:
                        resolve = AlertUpdate(
                            rule=alert.rule, labels=dict(alert.labels), severity=alert.severity,
                            state="resolved", summary=alert.summary, value=alert.value, at=now,
                            runbook=alert.runbook, fingerprint=alert.fingerprint)
                    self.alerts.apply(resolve)
            for update in live:
                self.alerts.apply(update)
