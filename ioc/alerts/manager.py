"""The alert manager: rule-group updates become alerts with ids, episodes and acknowledgements.

`apply(update)` takes every `AlertUpdate` of the rule engine. A fingerprint (rule + group labels) has at
most one active alert, an *episode*: it starts pending (or firing, for a rule without `for`), fires, and
resolves; the next episode is a new alert with a new `id` and the same fingerprint (docs/rules.md). The id
is derived from the fingerprint and the (event) time the episode began, so every node of a cluster gives
one episode one id (`ioc.alerts.outbox`: how a change is made idempotent). Only a firing alert can be
acknowledged; the acknowledgement ends with the episode.

A change goes down the notification pipeline: the muting stages (`ioc.alerts.muting`: inhibition, then
silences) write who mutes it; `ioc.alerts.delivery` stores it in SQLite with the outbox rows it owes, then
tells the notifier chain, which decides what a muted alert gets (`ioc.alerts.notify`). Alerts are loaded
back at start-up; an update that repeats the stored state is not a change, so a restart re-notifies nothing.
Within `batch()` (the evaluation thread's batch of events) changes are stored and told when the batch ends,
in one transaction; an operator's action on another thread first stores and tells what is pending.

In a cluster (CONTRACT §8) `leader()` says whether this node leads: a follower records no rule update
(its engine evaluates on, hot), and `sync()` (`ioc.alerts.replica`; when LISTEN/NOTIFY tells of a write, or the daemon's safety
sync) brings its view to the store's, telling its own stream; the leader's `sync()` takes the
acknowledgements made on other nodes, tells its stream, and delivers the outbox rows those nodes wrote
with them (`Delivery.pick_up`). A node that becomes leader calls `promote(term)`: the store's alerts
become its view and it takes the outbox over, the other nodes' rows included.

Thread-safe: one re-entrant lock serialises updates, operator actions and reads.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import structlog
from prometheus_client.core import Metric

from ioc.alerts.active import ActiveAlerts, ListState
from ioc.alerts.alert import Acknowledgement, Alert, Change
from ioc.alerts.audit import AuditEntry
from ioc.alerts.config import AlertsSettings
from ioc.alerts.delivery import Delivery
from ioc.alerts.inhibit import AreaTree, Inhibitor, InhibitRule
from ioc.alerts.muting import Muting, muting_change
from ioc.alerts.notify import AnyNotifier, NotifierChain
from ioc.alerts.replica import Replica
from ioc.alerts.silence import Silence, SilenceRequest, Silences, SilenceStatus, SilenceStore
from ioc.alerts.store import AlertStore, OutboxRow
from ioc.metrics import counter, gauge
from ioc.rules.updates import SEVERITY_RANK, AlertUpdate
from ioc.store import StoreError

log = structlog.get_logger("ioc.alerts")

CHANGES: tuple[Change, ...] = ("pending", "firing", "resolved", "acknowledged", "unacknowledged", "muted",
                               "unmuted")
_UPDATE_STATES = frozenset({"pending", "firing", "resolved"})
PURGE_INTERVAL = 60.0  # seconds between purges of old resolved alerts, silences and audit entries
Clock = Callable[[], float]


class AlertManager(Replica):
    """Alerts from rule updates; operators' acks and silences; muting; notification. See the module doc."""

    def __init__(self, store: AlertStore, *, settings: AlertsSettings | None = None,
                 notifiers: Sequence[AnyNotifier] = (), areas: AreaTree | None = None,
                 clock: Clock = time.time, resume: bool = True, silences: SilenceStore | None = None,
                 leader: Callable[[], bool] | None = None) -> None:
        """`resume=False` holds the durable notifiers' deliveries (they are in the outbox) until
        `resume()`: the daemon calls it once the MQTT connector and the sinks are started. `silences`:
        where the silences are kept (default: their table in the store's file). `leader`: whether this node
        leads its cluster (default: always)."""
        self.settings = settings or AlertsSettings()
        self.store = store
        self._clock = clock
        self._lock = threading.RLock()
        self._batching = threading.local()  # `batch()` on this thread: store and tell when it ends
        self._silence_store = silences or SilenceStore(store.database, node=store.node)
        self.silences = Silences(self._silence_store, clock=clock, retention=self.settings.silence_retention)
        self.silences.owed = self._silence_rows
        inhibitor = Inhibitor([InhibitRule.from_settings(rule) for rule in self.settings.inhibit], areas)
        self.muting = Muting(self.silences, inhibitor)
        self.leader: Callable[[], bool] = leader or (lambda: True)
        self.delivery = Delivery(store, NotifierChain(notifiers), leader=self.leader)
        self._term: int | None = None  # the lease term this node last led in
        # A follower's engine's resolutions of alerts the store still has active (`ioc.alerts.leadership`).
        self.heard_resolved: dict[str, AlertUpdate] = {}
        self.chain, self.outbox = self.delivery.chain, self.delivery.outbox
        self._active = ActiveAlerts(store)
        self._resolved = store.count_resolved()
        self._changes: defaultdict[tuple[str], int] = defaultdict(int)
        self._next_purge = 0.0
        inhibitor.set_sources(self._active)
        # Muting follows the silences by the clock: what changed while the daemon was down (or since its
        # last record, if it died between a silence and its muting) is told now, under the ids it would
        # have had (`ioc.alerts.outbox`); rows of an older release are worked out again in silence.
        self._refresh(quiet=store.unrecorded_muting())
        self.delivery.flush()
        log.info("alerts.loaded", active=len(self._active), resolved=self._resolved,
                 silences=len(self.silences.list()), outbox=self.delivery.owed)
        if resume:
            self.resume()

    def resume(self) -> None:
        """Start the durable deliveries: first what the outbox held at start-up (in order), then the
        changes made since. Idempotent."""
        with self._lock:
            self.delivery.resume()

    @classmethod
    def open(cls, path: str | Path, **options: object) -> AlertManager:
        """A manager over the store at `path` (the daemon's `[store] path`); options as for __init__."""
        return cls(AlertStore(path), **options)  # type: ignore[arg-type]

    # --- rule updates ------------------------------------------------------------------------------------

    def apply(self, update: AlertUpdate) -> Alert | None:
        """Turn a rule group's update into an alert change; the changed alert, or None when the update
        changes nothing (a repeat of the current state, a resolve of nothing, firing -> pending)."""
        if update.state not in _UPDATE_STATES or update.severity not in SEVERITY_RANK:
            log.error("alerts.bad_update", rule=update.rule, state=update.state, severity=update.severity)
            return None
        if not self.leader():  # a follower: the leader records it (its view comes from the store, `sync`)
            if update.state == "resolved":  # its time and value, should this node record it (a promotion)
                with self._lock:
                    self.heard_resolved[update.fingerprint] = update
            return None
        with self._lock:
            now = self._clock()
            current = self._active.get(update.fingerprint)
            change: Change
            if update.state == "resolved":
                if current is None:
                    return None
                # The summary stays the one it fired with: rendered again with the recovery value it
                # would say the opposite ("bad air ... VN_AQI 47.9"). `value` is the last judged one.
                alert = replace(current, state="resolved", resolved_at=update.at, acknowledged=None,
                                value=update.value, updated_at=now)
                change = "resolved"
            elif current is None:
                started = update.at if update.since is None else update.since
                alert = Alert(id=self.delivery.episode_id(update.fingerprint, started),
                              fingerprint=update.fingerprint, rule=update.rule,
                              severity=update.severity, state=update.state, labels=dict(update.labels),
                              summary=update.summary, summary_en=update.summary_en or None,
                              value=update.value, started_at=started,
                              fired_at=update.at if update.state == "firing" else None,
                              runbook=update.runbook, updated_at=now)
                change = update.state
            elif current.state == update.state:
                return None
            elif current.state == "firing":
                # Back to pending without a resolve: a rule engine rebuilding its `for` timers (after a
                # restart). The alert keeps firing until the engine resolves it.
                log.debug("alerts.pending_while_firing_ignored", alert=current.id, rule=current.rule)
                return None
            else:
                alert = replace(current, state="firing", fired_at=update.at, value=update.value,
                                summary=update.summary, summary_en=update.summary_en or None,
                                severity=update.severity, runbook=update.runbook, updated_at=now)
                change = "firing"
            alert = self.muting.apply(alert, now)
            if change == "resolved":
                self._active.drop(alert)
                self._resolved += 1
            else:
                self._active.put(alert)
            self._changes[(change,)] += 1
            self.delivery.record(alert, change, save=True)
            if self.muting.sources_changed(alert, self._active):
                # the alerts a source covers may change their muting (a resolved one: what it muted)
                self._refresh(silences=False, gone=alert if change == "resolved" else None)
            if not self._deferring():
                self.delivery.flush()
            return alert

    # --- operators ---------------------------------------------------------------------------------------

    def ack(self, alert_id: str, by: str) -> Alert:
        """Acknowledge a firing alert (it stays firing, with who and when). Acknowledging an acknowledged
        alert changes nothing. AlertNotFound; AlertConflict when it is not firing."""
        with self._lock:
            alert = self._active.firing(alert_id, "acknowledged")
            if alert.acknowledged is not None:
                return alert
            now = self._clock()
            acked = replace(alert, acknowledged=Acknowledgement(by, now), updated_at=now)
            return self._operator_change(acked, by, "alert.ack", "acknowledged")

    def unack(self, alert_id: str, by: str) -> Alert:
        """Take an acknowledgement back (a firing alert that is not acknowledged stays as it is)."""
        with self._lock:
            alert = self._active.firing(alert_id, "unacknowledged")
            if alert.acknowledged is None:
                return alert
            now = self._clock()
            unacked = replace(alert, acknowledged=None, updated_at=now)
            return self._operator_change(unacked, by, "alert.unack", "unacknowledged")

    def _operator_change(self, alert: Alert, by: str, action: str, change: Change) -> Alert:
        audit = AuditEntry(alert.updated_at, by, action, alert.id,
                           {"rule": alert.rule, "fingerprint": alert.fingerprint, "labels": alert.labels})
        # What the rules changed before (a batch still open on its thread) goes first; an operator's
        # action that cannot be stored is refused.
        self.delivery.commit(alert, change, audit)
        self._active.put(alert)
        self._changes[(change,)] += 1
        return alert

    def create_silence(self, request: SilenceRequest, *, actor: str, silence_id: str | None = None) -> Silence:
        """A new silence (InvalidSilence when it makes no sense); matching alerts are muted at once.
        `silence_id`: update that silence as Alertmanager does (`Silences.create`); SilenceNotFound."""
        with self._lock:
            silence = self.silences.create(request, actor=actor, silence_id=silence_id)
            self._refresh()
            self.delivery.flush()
            return silence

    def expire_silence(self, silence_id: str, *, actor: str) -> Silence:
        """End a silence now (DELETE); SilenceNotFound. Its alerts are unmuted at once."""
        with self._lock:
            silence, changed = self.silences.expire(silence_id, actor=actor)
            if changed:
                self._refresh()
                self.delivery.flush()
            return silence

    def _silence_rows(self) -> builtins.list[OutboxRow]:
        """On a follower, the outbox rows of the muting changes an operator's silence causes (the silences
        hold it already), written in the silence's transaction: the leader, this one or the next, sends
        them (`Delivery.pick_up`, `take_over`). None on the leader: it stores and sends its own."""
        if self.leader():
            return []
        changes = []
        for updated in self.muting.refresh(list(self._active), self._clock()):
            told = muting_change(updated, self._active.get(updated.fingerprint), self.silences, self._active.get)
            if told is not None:
                changes.append((updated, *told))
        return self.delivery.foreign_rows(changes)

    # --- reading -----------------------------------------------------------------------------------------

    def list(self, state: ListState | None = None, severity: str | None = None, *,
             limit: int = 1000) -> list[Alert]:
        """The alerts listed in `state` (`ActiveAlerts.list`), of one severity, at most `limit`."""
        with self._lock:
            return self._active.list(state, severity, limit=limit)

    def get(self, alert_id: str) -> Alert:
        """The alert with this id, active or kept resolved; AlertNotFound."""
        with self._lock:
            return self._active.by_id(alert_id)

    def active(self) -> builtins.list[Alert]:
        with self._lock:
            return list(self._active)

    def list_silences(self, status: SilenceStatus | None = None) -> builtins.list[Silence]:
        with self._lock:
            return self.silences.list(status)

    def get_silence(self, silence_id: str) -> Silence:
        with self._lock:
            return self.silences.get(silence_id)

    def audit_log(self, *, target: str | None = None, limit: int = 1000) -> builtins.list[AuditEntry]:
        with self._lock:
            return self.store.audit_log(target=target, limit=limit)

    def now(self) -> float:
        return self._clock()

    # --- time --------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Housekeeping, called about once a second: muting follows silences that started or ended; rows
        a failing store did not take are written again; old resolved alerts, expired silences and audit entries are purged (every minute)."""
        with self._lock:
            now = self._clock()
            if self.muting.due(now):
                self._refresh()
                if not self._deferring():
                    self.delivery.flush()
            elif self.delivery.unsaved and not self._deferring():  # rows a failing store did not take
                self.delivery.flush()
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL
                resolved = purge(self.store, self.silences, self.settings, now)
                if resolved is not None:
                    self._resolved = resolved

    # --- internals ---------------------------------------------------------------------------------------

    def _deferring(self) -> bool:
        return bool(getattr(self._batching, "active", False))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within this block, the changes made on this thread are stored together when it ends (one
        SQLite transaction, with their outbox rows), then told; they are served by `list` and `get` at
        once. The evaluation thread wraps each batch of events in it. An operator's action on another
        thread stores and tells what is pending first, then its own change. Not reentrant."""
        self._batching.active = True
        try:
            yield
        finally:
            self._batching.active = False
            with self._lock:
                self.delivery.flush()

    def _refresh(self, *, notify: bool = True, silences: bool = True, gone: Alert | None = None,
                 quiet: Container[str] = ()) -> None:
        """Work out every active alert's muting again (only inhibition when `silences` is false: the
        silences did not change); tell of those that became muted or unmuted, and record their muting.
        `gone`: an alert that just resolved (what it inhibited is unmuted because of it). `quiet`: alerts
        whose muting nobody recorded (an older release's rows), worked out without telling."""
        source = self._source(gone)
        for updated in self.muting.refresh(list(self._active), self._clock(), silences=silences):
            was = self._active.get(updated.fingerprint)
            self._active.put(updated)
            told = muting_change(updated, was, self.silences, source) \
                if notify and updated.id not in quiet else None
            if told is not None:
                change, cause = told
                self._changes[(change,)] += 1
                self.delivery.record(updated, change, save=False, cause=cause)
            elif notify:
                self.delivery.record_muting(updated)

    def _source(self, gone: Alert | None) -> Callable[[str], Alert | None]:
        """The active alert of a fingerprint, or `gone` (an alert that just resolved) for its own."""
        if gone is None:
            return self._active.get
        return lambda fingerprint: gone if fingerprint == gone.fingerprint else self._active.get(fingerprint)

    # --- metrics and life cycle --------------------------------------------------------------------------

    def metrics(self) -> Iterable[Metric]:
        """`ioc_alerts{state}`, `ioc_alert_changes_total{change}`, `ioc_silences{status}`, notifications."""
        with self._lock:
            by_state = self._active.counts()
            by_state["resolved"] = self._resolved
            changes = {(change,): self._changes.get((change,), 0) for change in CHANGES}
            silences = {(status,): float(count) for status, count in self.silences.counts().items()}
        yield from alert_metrics(by_state, changes, silences)
        yield from self.delivery.metrics()

    def close(self, timeout: float = 5.0) -> None:
        """Store and tell what is pending, give deliveries up to `timeout` seconds (what is not delivered
        stays in the outbox for the next start), then close the store."""
        with self._lock:
            self.delivery.flush()
        self.delivery.close(timeout)
        with self._lock:
            self.store.close()
            self._silence_store.close()


def purge(store: AlertStore, silences: Silences, settings: AlertsSettings, now: float) -> int | None:
    """Forget expired silences, resolved alerts past their retention and old audit entries; the number of
    resolved alerts kept, or None when the store failed (the next purge tries again)."""
    gone = silences.purge()
    try:
        removed = store.purge_resolved(before=now - settings.resolved_retention, keep=settings.resolved_max)
        audited = store.purge_audit(before=now - settings.audit_retention)
        resolved = store.count_resolved()
    except StoreError as error:
        log.error("alerts.purge_failed", error=str(error))
        return None
    if gone or removed or audited:
        log.info("alerts.purged", silences=len(gone), resolved=removed, audit=audited)
    return resolved


def alert_metrics(by_state: dict[str, int], changes: dict[tuple[str], int],
                  silences: dict[tuple[str], float]) -> Iterable[Metric]:
    yield gauge("ioc_alerts", "Alerts by state (acknowledged ones are also counted as firing; resolved: "
                "those kept).", ("state",), {(state,): float(n) for state, n in by_state.items()})
    yield counter("ioc_alert_changes", "Alert changes, by kind.", ("change",), changes)
    yield gauge("ioc_silences", "Silences by status (expired ones until purged).", ("status",), silences)
