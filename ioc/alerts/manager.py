"""The alert manager: rule-group updates become alerts with ids, episodes, acknowledgements and muting.

`apply(update)` takes every `AlertUpdate` of the rule engine. A fingerprint (rule + group labels) has at
most one active alert, an *episode*: it starts pending (or firing, for a rule without `for`), fires, and
resolves; the next episode is a new alert with a new `id` and the same fingerprint (CONTRACT §5). Only a
firing alert can be acknowledged; the acknowledgement ends with the episode.

Everything is persisted in SQLite before anyone is told, and loaded back at start-up; an update that
repeats the stored state is not a change, so a restart re-notifies nothing. A change is stored in one
transaction with the outbox rows of the durable notifiers that want it (`ioc.alerts.outbox`); then the
failpoint `alerts.before_notify`; then every notifier is told, in order of the changes. So a crash at any
moment loses no notification: what the outbox still holds at start-up is delivered again (`resume`).
Within `batch()` (the evaluation thread's batch of events) changes are stored and told when the batch ends,
in one transaction; an operator's action on another thread first stores and tells what is pending.

Every change goes through the notifier chain, silenced or not; each notifier decides what a muted alert
gets (see `notify`). Muting (silences, inhibition) is derived, never stored: it is looked at again when an
alert changes, when a silence is made or expired, and when `tick()` passes the next silence's start or end.

Thread-safe: one re-entrant lock serialises updates, operator actions and reads.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeAlias

import structlog
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.alerts.alert import Acknowledgement, Alert, Change
from ioc.alerts.audit import AuditEntry
from ioc.alerts.config import AlertsSettings
from ioc.alerts.errors import AlertConflict, AlertNotFound
from ioc.alerts.inhibit import AreaTree, Inhibitor, InhibitRule
from ioc.alerts.notify import AnyNotifier, NotifierChain
from ioc.alerts.outbox import Notification, Outbox, alert_from_record, alert_record, new_ids
from ioc.alerts.silence import Silence, SilenceRequest, Silences, SilenceStatus
from ioc.alerts.store import AlertStore, OutboxRow
from ioc.alerts.updates import SEVERITY_RANK, AlertUpdate
from ioc.metrics import counter, gauge

log = structlog.get_logger("ioc.alerts")

ListState: TypeAlias = Literal["pending", "firing", "acknowledged", "resolved"]
LIST_STATES: tuple[ListState, ...] = ("pending", "firing", "acknowledged", "resolved")
CHANGES: tuple[Change, ...] = ("pending", "firing", "resolved", "acknowledged", "unacknowledged", "muted",
                               "unmuted")
_UPDATE_STATES = frozenset({"pending", "firing", "resolved"})
PURGE_INTERVAL = 60.0  # seconds between purges of old resolved alerts, silences and audit entries
Clock = Callable[[], float]
# A change ready to be told: the alert, the change, its notification id, and the outbox row's sequence
# number for each durable notifier (by key) that wants it (0: the row could not be written).
_Prepared: TypeAlias = tuple[Alert, Change, str, dict[str, int]]


def new_alert_id() -> str:
    return uuid.uuid4().hex


def _listed(alert: Alert, state: ListState | None) -> bool:
    if state is None:
        return True
    if state == "acknowledged":
        return alert.state == "firing" and alert.acknowledged is not None
    return alert.state == state


class AlertManager:
    """Alerts from rule updates; operators' acks and silences; muting; notification. See the module doc."""

    def __init__(self, store: AlertStore, *, settings: AlertsSettings | None = None,
                 notifiers: Sequence[AnyNotifier] = (), areas: AreaTree | None = None,
                 clock: Clock = time.time, resume: bool = True) -> None:
        """`resume=False` holds the durable notifiers' deliveries (they are in the outbox) until
        `resume()`: the daemon calls it once the MQTT connector and the sinks are started."""
        self.settings = settings or AlertsSettings()
        self.store = store
        self._clock = clock
        self._lock = threading.RLock()
        self._batching = threading.local()  # `batch()` on this thread: store and tell when it ends
        self.silences = Silences(store, clock=clock, retention=self.settings.silence_retention)
        self.inhibitor = Inhibitor([InhibitRule.from_settings(rule) for rule in self.settings.inhibit], areas)
        self.chain = NotifierChain(notifiers)
        self.outbox = Outbox(store)
        self._active: dict[str, Alert] = {}  # by fingerprint: pending and firing alerts
        self._ids: dict[str, str] = {}  # active alert id -> fingerprint
        for alert in store.active_alerts():
            self._put(alert)
        self._resolved = store.count_resolved()
        self._changes: defaultdict[tuple[str], int] = defaultdict(int)
        self._store_errors = 0
        self._next_mute_check: float | None = None
        self._next_purge = 0.0
        # Changes made and not yet stored and told (`_flush`), in order.
        self._unsaved: dict[str, Alert] = {}
        self._untold: builtins.list[tuple[Alert, Change]] = []
        self._new_id = new_ids()
        self._owed: builtins.list[OutboxRow] = store.outbox()  # what a crash left undelivered: sent first
        self._next_seq = (self._owed[-1].seq if self._owed else 0) + 1
        self._held: builtins.list[_Prepared] | None = []  # durable deliveries made before `resume()`
        self.inhibitor.set_sources(self._active.values())
        self._refresh(notify=False)  # muting is derived: work it out again, telling nobody
        log.info("alerts.loaded", active=len(self._active), resolved=self._resolved,
                 silences=len(self.silences.list()), outbox=len(self._owed))
        if resume:
            self.resume()

    def resume(self) -> None:
        """Start the durable deliveries: first what the outbox held at start-up (in order), then the
        changes made since. Idempotent."""
        with self._lock:
            held, self._held = self._held, None
            if held is None:
                return
            owed, self._owed = self._owed, []
            settle = self.outbox.settle
            orphans = 0
            for row in owed:
                try:
                    note = Notification(alert_from_record(row.alert), row.change, row.id,  # type: ignore[arg-type]
                                        row.seq)
                except (ValueError, TypeError, KeyError):
                    note = None
                if note is None or not self.chain.redeliver(row.notifier, note, settle):
                    orphans += 1
                    settle(row.seq)
            if owed:
                log.info("alerts.outbox_resent", notifications=len(owed) - orphans,
                         dropped=orphans, reason="a notifier no longer configured, or a damaged row")
            for alert, change, notification_id, seqs in held:
                self.chain.dispatch(alert, change, notification_id, seqs, settle, plain=False)

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
        with self._lock:
            now = self._clock()
            current = self._active.get(update.fingerprint)
            change: Change
            if update.state == "resolved":
                if current is None:
                    return None
                alert = replace(current, state="resolved", resolved_at=update.at, acknowledged=None,
                                value=update.value, summary=update.summary, updated_at=now)
                change = "resolved"
            elif current is None:
                alert = Alert(id=new_alert_id(), fingerprint=update.fingerprint, rule=update.rule,
                              severity=update.severity, state=update.state, labels=dict(update.labels),
                              summary=update.summary, value=update.value, started_at=update.at,
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
                                summary=update.summary, severity=update.severity, runbook=update.runbook,
                                updated_at=now)
                change = "firing"
            alert = self._with_muting(alert, now)
            if change == "resolved":
                self._drop(alert)
                self._resolved += 1
            else:
                self._put(alert)
            self._changes[(change,)] += 1
            self._tell(alert, change, save=True)
            if change != "pending" and self.inhibitor.rules and self.inhibitor.is_source(alert):
                # A source started or stopped firing: the alerts it covers may change their muting.
                self.inhibitor.set_sources(self._active.values())
                self._refresh(silences=False)
            if not self._deferring():
                self._flush()
            return alert

    # --- operators ---------------------------------------------------------------------------------------

    def ack(self, alert_id: str, by: str) -> Alert:
        """Acknowledge a firing alert (it stays firing, with who and when). Acknowledging an acknowledged
        alert changes nothing. AlertNotFound; AlertConflict when it is not firing."""
        with self._lock:
            alert = self._firing(alert_id, "acknowledged")
            if alert.acknowledged is not None:
                return alert
            now = self._clock()
            acked = replace(alert, acknowledged=Acknowledgement(by, now), updated_at=now)
            return self._operator_change(acked, by, "alert.ack", "acknowledged")

    def unack(self, alert_id: str, by: str) -> Alert:
        """Take an acknowledgement back (a firing alert that is not acknowledged stays as it is)."""
        with self._lock:
            alert = self._firing(alert_id, "unacknowledged")
            if alert.acknowledged is None:
                return alert
            now = self._clock()
            unacked = replace(alert, acknowledged=None, updated_at=now)
            return self._operator_change(unacked, by, "alert.unack", "unacknowledged")

    def _firing(self, alert_id: str, action: str) -> Alert:
        fingerprint = self._ids.get(alert_id)
        if fingerprint is None:
            stored = self.store.get_alert(alert_id)
            if stored is None:
                raise AlertNotFound(f"no alert with id {alert_id!r}")
            raise AlertConflict(f"alert {alert_id!r} is {stored.state}: only a firing alert can be {action}")
        alert = self._active[fingerprint]
        if alert.state != "firing":
            raise AlertConflict(f"alert {alert_id!r} is {alert.state}: only a firing alert can be {action}")
        return alert

    def _operator_change(self, alert: Alert, by: str, action: str, change: Change) -> Alert:
        audit = AuditEntry(alert.updated_at, by, action, alert.id,
                           {"rule": alert.rule, "fingerprint": alert.fingerprint, "labels": alert.labels})
        self._flush()  # what the rules changed before (a batch still open on its thread) goes first
        prepared, rows = self._prepare([(alert, change)])
        self.store.commit([alert], rows, audit)  # an operator's action that cannot be stored is refused
        self._put(alert)
        self._changes[(change,)] += 1
        self._tell_prepared(prepared)
        return alert

    def create_silence(self, request: SilenceRequest, *, actor: str) -> Silence:
        """A new silence (InvalidSilence when it makes no sense); matching alerts are muted at once."""
        with self._lock:
            silence = self.silences.create(request, actor=actor)
            self._refresh()
            self._flush()
            return silence

    def expire_silence(self, silence_id: str, *, actor: str) -> Silence:
        """End a silence now (DELETE); SilenceNotFound. Its alerts are unmuted at once."""
        with self._lock:
            silence, changed = self.silences.expire(silence_id, actor=actor)
            if changed:
                self._refresh()
                self._flush()
            return silence

    # --- reading -----------------------------------------------------------------------------------------

    def list(self, state: ListState | None = None, severity: str | None = None, *,
             limit: int = 1000) -> list[Alert]:
        """No state: the active alerts (pending and firing); `acknowledged`: the firing ones that are
        acknowledged (also listed under `firing`); `resolved`: the kept resolved ones, newest first.
        Active alerts come most severe first, then newest first."""
        if state is not None and state not in LIST_STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(LIST_STATES)}")
        if state == "resolved":
            with self._lock:
                return self.store.resolved_alerts(severity=severity, limit=limit)
        with self._lock:
            alerts = [alert for alert in self._active.values()
                      if (severity is None or alert.severity == severity) and _listed(alert, state)]
        alerts.sort(key=lambda alert: (-SEVERITY_RANK.get(alert.severity, 0), -alert.started_at, alert.id))
        return alerts[:limit]

    def get(self, alert_id: str) -> Alert:
        """The alert with this id, active or kept resolved; AlertNotFound."""
        with self._lock:
            fingerprint = self._ids.get(alert_id)
            if fingerprint is not None:
                return self._active[fingerprint]
            alert = self.store.get_alert(alert_id)
        if alert is None:
            raise AlertNotFound(f"no alert with id {alert_id!r}")
        return alert

    def active(self) -> builtins.list[Alert]:
        with self._lock:
            return list(self._active.values())

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
        """Housekeeping, called about once a second: muting follows silences that started or ended;
        old resolved alerts, expired silences and audit entries are purged (every minute)."""
        with self._lock:
            now = self._clock()
            if self._next_mute_check is not None and now >= self._next_mute_check:
                self._refresh()
                if not self._deferring():
                    self._flush()
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL
                self._purge(now)

    def _purge(self, now: float) -> None:
        gone = self.silences.purge()
        try:
            removed = self.store.purge_resolved(before=now - self.settings.resolved_retention,
                                                keep=self.settings.resolved_max)
            audited = self.store.purge_audit(before=now - self.settings.audit_retention)
            self._resolved = self.store.count_resolved()
        except sqlite3.Error as error:
            log.error("alerts.purge_failed", error=str(error))
            return
        if gone or removed or audited:
            log.info("alerts.purged", silences=len(gone), resolved=removed, audit=audited)

    # --- internals ---------------------------------------------------------------------------------------

    def _put(self, alert: Alert) -> None:
        self._active[alert.fingerprint] = alert
        self._ids[alert.id] = alert.fingerprint

    def _drop(self, alert: Alert) -> None:
        self._active.pop(alert.fingerprint, None)
        self._ids.pop(alert.id, None)

    def _deferring(self) -> bool:
        return bool(getattr(self._batching, "active", False))

    def _tell(self, alert: Alert, change: Change, *, save: bool) -> None:
        """A change to store (`save`: the alert's row; muting is never stored) and tell at the next
        `_flush`. Under the lock."""
        if save:
            self._unsaved[alert.id] = alert
        self._untold.append((alert, change))

    def _flush(self) -> None:
        """Store what changed since the last flush, with its outbox rows, in one transaction; then tell.
        Under the lock. A store that cannot be written loses no alert: it is still told (without the
        outbox: a crash may then lose those notifications), and counted."""
        if not self._untold and not self._unsaved:
            return
        alerts = list(self._unsaved.values())
        prepared, rows = self._prepare(self._untold)
        self._unsaved, self._untold = {}, []
        try:
            self.store.commit(alerts, rows)
        except sqlite3.Error as error:
            self._store_errors += max(1, len(alerts))
            log.error("alerts.store_failed", alerts=len(alerts), notifications=len(rows), error=str(error),
                      effect="told without the outbox: lost if the process dies before delivering them")
            prepared = [(alert, change, nid, dict.fromkeys(seqs, 0)) for alert, change, nid, seqs in prepared]
        self._tell_prepared(prepared)

    def _prepare(self, changes: Iterable[tuple[Alert, Change]]
                 ) -> tuple[builtins.list[_Prepared], builtins.list[OutboxRow]]:
        """Give each change its notification id, and an outbox row for each durable notifier that wants it."""
        prepared: builtins.list[_Prepared] = []
        rows: builtins.list[OutboxRow] = []
        wanting = self.chain.wanting
        for alert, change in changes:
            keys = wanting(alert, change)
            notification_id = self._new_id()
            seqs: dict[str, int] = {}
            if keys:
                record = alert_record(alert)
                for key in keys:
                    seq = seqs[key] = self._next_seq
                    self._next_seq += 1
                    rows.append(OutboxRow(seq, key, notification_id, change, record))
            prepared.append((alert, change, notification_id, seqs))
        return prepared, rows

    def _tell_prepared(self, prepared: builtins.list[_Prepared]) -> None:
        """Tell stored changes, in order: the plain notifiers now; the durable ones now, or once resumed."""
        if not prepared:
            return
        if failpoints.ACTIVE:
            try:
                failpoints.hit("alerts.before_notify")
            except OSError as error:  # `error`: nobody is told now; the outbox delivers at the next start
                log.error("alerts.notify_skipped", changes=len(prepared), error=str(error))
                return
        settle = self.outbox.settle
        held = self._held
        for alert, change, notification_id, seqs in prepared:
            if held is None:
                self.chain.dispatch(alert, change, notification_id, seqs, settle)
            else:
                self.chain.dispatch(alert, change, notification_id, seqs, settle, durable=False)
                if seqs:
                    held.append((alert, change, notification_id, seqs))

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
                self._flush()

    def _with_muting(self, alert: Alert, now: float, *, silences: bool = True,
                     inhibition: bool = True) -> Alert:
        silenced_by = self.silences.matching(alert.match_labels(), now) if silences else alert.silenced_by
        inhibited_by = self.inhibitor.inhibited_by(alert) if inhibition else alert.inhibited_by
        if silenced_by == alert.silenced_by and inhibited_by == alert.inhibited_by:
            return alert
        return replace(alert, silenced_by=silenced_by, inhibited_by=inhibited_by)

    def _refresh(self, *, notify: bool = True, silences: bool = True) -> None:
        """Work out every active alert's muting again (only inhibition when `silences` is false: the
        silences did not change); tell of those that became muted or unmuted."""
        now = self._clock()
        for alert in list(self._active.values()):
            if not silences and not self.inhibitor.is_target(alert):
                continue
            updated = self._with_muting(alert, now, silences=silences)
            if updated is alert:
                continue
            self._active[alert.fingerprint] = updated
            if notify and updated.silenced != alert.silenced:
                change: Change = "muted" if updated.silenced else "unmuted"
                self._changes[(change,)] += 1
                self._tell(updated, change, save=False)
        if silences:
            self._next_mute_check = self.silences.next_transition(now)

    # --- metrics and life cycle --------------------------------------------------------------------------

    def metrics(self) -> Iterable[Metric]:
        """`ioc_alerts{state}`, `ioc_alert_changes_total{change}`, `ioc_silences{status}`, notifications."""
        with self._lock:
            by_state = dict.fromkeys(LIST_STATES, 0)
            for alert in self._active.values():
                by_state[alert.state] += 1
                if alert.acknowledged is not None:
                    by_state["acknowledged"] += 1
            by_state["resolved"] = self._resolved
            changes = {(change,): self._changes.get((change,), 0) for change in CHANGES}
            silences = {(status,): float(count) for status, count in self.silences.counts().items()}
            store_errors = self._store_errors
        yield gauge("ioc_alerts", "Alerts by state (acknowledged ones are also counted as firing; resolved: "
                    "those kept).", ("state",), {(state,): float(n) for state, n in by_state.items()})
        yield counter("ioc_alert_changes", "Alert changes, by kind.", ("change",), changes)
        yield gauge("ioc_silences", "Silences by status (expired ones until purged).", ("status",), silences)
        yield counter("ioc_alert_store_errors", "Alert changes (or removals of delivered notifications "
                      "from the outbox) that could not be written to SQLite.", (),
                      {(): store_errors + self.outbox.errors})
        yield from self.chain.metrics()
        owed = dict.fromkeys(self.chain.durable, 0)
        try:
            owed.update(self.store.outbox_counts())
        except sqlite3.Error:  # closed, or busy past its timeout: the gauge says what it knows
            pass
        yield gauge("ioc_alert_outbox", "Notifications stored and not yet delivered (sent again after a "
                    "restart), by notifier.", ("notifier",), {(key,): float(n) for key, n in owed.items()})

    def close(self, timeout: float = 5.0) -> None:
        """Store and tell what is pending, give deliveries up to `timeout` seconds (what is not delivered
        stays in the outbox for the next start), then close the store."""
        with self._lock:
            self._flush()
        self.chain.close(timeout)
        self.outbox.close(timeout)
        with self._lock:
            self.store.close()
