"""Persistence of alerts, the operators' audit log and the notification outbox, in the shared store
(docs/configuration.md `[store] url`: SQLite or PostgreSQL, through `ioc.store.Database`; the tables come
from its migrations). Silences keep their own table in the same database (`ioc.alerts.silence.SilenceStore`).

Active alerts are all loaded at start-up (the manager keeps them in memory); resolved ones are kept for
`[alerts] resolved_retention` (and at most `resolved_max` rows) and read back from here on demand.

The outbox holds every notification a durable notifier (webhooks, MQTT, InfluxDB) still owes: its rows are
written in the same transaction as the alert change they tell of (`commit`), and removed once delivered
(`outbox_done`), so a crash loses none (see `ioc.alerts.outbox`).

Thread-safe: one lock around the connection. The `AlertManager` calls it under its own lock; the outbox's
rows are also removed from the delivery side's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from ioc.alerts import audit as audit_log
from ioc.alerts.alert import Acknowledgement, Alert
from ioc.alerts.audit import AuditEntry
from ioc.store import Database, StoreTarget, ensure_schema, open_database, upsert

_ALERT_COLUMNS = ("id, fingerprint, rule, severity, state, labels, summary, value, runbook, started_at, "
                  "fired_at, resolved_at, acknowledged_by, acknowledged_at, updated_at, summary_en, muting")


_SAVE_ALERT = upsert("alerts", _ALERT_COLUMNS.split(", "), ("id",))
ADD_OUTBOX = "INSERT INTO alert_outbox (seq, notifier, id, change, alert) VALUES (?, ?, ?, ?, ?)"


class OutboxRow(NamedTuple):
    """A notification owed to one notifier: `alert` is the alert's snapshot (`ioc.alerts.outbox`)."""

    seq: int
    notifier: str
    id: str
    change: str
    alert: bytes


class AlertStore:
    """The alert tables in the shared store, on a connection of their own. `target`: a Database (another
    connection to it is opened), a store URL or a SQLite path. `node` ([cluster] node) is recorded with
    each audit entry."""

    def __init__(self, target: StoreTarget, *, node: str = "") -> None:
        self._db = open_database(target, node=node)
        self.node = node
        self._lock = threading.RLock()
        self._closed = False
        ensure_schema(self._db)

    @property
    def database(self) -> Database:
        """This store's connection: where the other stores of the alerts (the silences') open theirs."""
        return self._db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- alerts ------------------------------------------------------------------------------------------

    def save_alert(self, alert: Alert, audit: AuditEntry | None = None) -> None:
        """Insert or replace an alert (and record the operator's action with it, in one transaction)."""
        self.commit([alert], (), audit)

    def save_alerts(self, alerts: list[Alert]) -> None:
        """Insert or replace several alerts in one transaction (a rule engine's batch of changes: one
        commit instead of one each, ~100 -> ~10 µs an alert)."""
        self.commit(alerts, ())

    def commit(self, alerts: Sequence[Alert], outbox: Sequence[OutboxRow], audit: AuditEntry | None = None, *,
               muting: Sequence[Alert] = ()) -> None:
        """In one transaction: insert or replace `alerts`, record the muting of `muting` (that column alone:
        an operator's ack another node stored meanwhile stays), add the notifications they owe to
        `outbox`, and record the operator's action `audit`. All or nothing (StoreError)."""
        with self._lock, self._db.transaction():
            if alerts:
                self._db.executemany(_SAVE_ALERT, [_alert_row(alert) for alert in alerts])
            if muting:
                self._db.executemany("UPDATE alerts SET muting = ? WHERE id = ?",
                                     [(_muting(alert), alert.id) for alert in muting])
            if outbox:
                self._db.executemany(ADD_OUTBOX, outbox)
            if audit is not None:
                audit_log.insert(self._db, audit, self.node)

    def active_alerts(self) -> list[Alert]:
        """Every pending or firing alert (what the manager loads at start-up)."""
        with self._lock:
            cursor = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state != 'resolved' "
                                      "ORDER BY started_at")
            return [_alert(row) for row in cursor]

    def unrecorded_muting(self) -> set[str]:
        """Ids of active alerts whose muting no node recorded (rows of a release before migration 0006):
        their muting is worked out again without telling anyone, as those releases did at every start."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM alerts WHERE state != 'resolved' AND muting IS NULL").fetchall()
        return {row[0] for row in rows}

    def get_alert(self, alert_id: str) -> Alert | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return _alert(row) if row else None

    def resolved_alerts(self, *, severity: str | None = None, limit: int = 1000) -> list[Alert]:
        """Resolved alerts, the most recently resolved first."""
        query = f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state = 'resolved'"
        args: list[object] = []
        if severity is not None:
            query += " AND severity = ?"
            args.append(severity)
        query += " ORDER BY resolved_at DESC, updated_at DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            return [_alert(row) for row in self._db.execute(query, args)]

    def latest_start(self) -> float | None:
        """The latest `started_at` of any alert kept (None: none): a new episode that begins later cannot
        take a kept one's derived id (`ioc.alerts.outbox.alert_id`), so its id is not looked up."""
        with self._lock:
            row = self._db.execute("SELECT max(started_at) FROM alerts").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def count_resolved(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM alerts WHERE state = 'resolved'").fetchone()[0])

    def purge_resolved(self, *, before: float, keep: int) -> int:
        """Delete resolved alerts resolved before `before`, and the oldest beyond the newest `keep`."""
        with self._lock, self._db.transaction():
            removed = self._db.execute("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?",
                                       (before,)).rowcount
            removed += self._db.execute(
                "DELETE FROM alerts WHERE state = 'resolved' AND id NOT IN (SELECT id FROM alerts "
                "WHERE state = 'resolved' ORDER BY resolved_at DESC, updated_at DESC LIMIT ?)", (keep,)).rowcount
        return removed

    # --- the outbox --------------------------------------------------------------------------------------

    def outbox(self, since: int = 0) -> list[OutboxRow]:
        """Every notification still owed (from row `since` up), oldest first."""
        with self._lock:
            cursor = self._db.execute("SELECT seq, notifier, id, change, alert FROM alert_outbox WHERE seq >= ? "
                                      "ORDER BY seq", (since,))
            return [OutboxRow(seq, notifier, nid, change, bytes(alert)) for seq, notifier, nid, change, alert
                    in cursor]

    def outbox_done(self, seqs: Sequence[int]) -> None:
        """Remove delivered (or abandoned) notifications, in one transaction: one range delete per run of
        consecutive numbers (settlements mostly come in order)."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(seqs):
            if ranges and seq <= ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], max(seq, ranges[-1][1]))
            else:
                ranges.append((seq, seq))
        with self._lock, self._db.transaction():
            self._db.executemany("DELETE FROM alert_outbox WHERE seq BETWEEN ? AND ?", ranges)

    def outbox_counts(self) -> dict[str, int]:
        """Notifications owed, by notifier."""
        with self._lock:
            return {notifier: int(count) for notifier, count in
                    self._db.execute("SELECT notifier, count(*) FROM alert_outbox GROUP BY notifier")}

    # --- audit log ---------------------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        with self._lock, self._db.transaction():
            audit_log.insert(self._db, entry, self.node)

    def audit_log(self, *, target: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """The newest entries first (of one alert or silence when `target` is given)."""
        with self._lock:
            return audit_log.read(self._db, target=target, limit=limit)

    def purge_audit(self, *, before: float) -> int:
        with self._lock, self._db.transaction():
            return audit_log.purge(self._db, before=before)


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    ack = alert.acknowledged
    return (alert.id, alert.fingerprint, alert.rule, alert.severity, alert.state,
            orjson.dumps(alert.labels).decode(), alert.summary, alert.value, alert.runbook,
            alert.started_at, alert.fired_at, alert.resolved_at, ack.by if ack else None,
            ack.at if ack else None, alert.updated_at, alert.summary_en, _muting(alert))


def _muting(alert: Alert) -> str:
    return orjson.dumps([alert.silenced_by, alert.inhibited_by]).decode()


def _alert(row: tuple[Any, ...]) -> Alert:
    (alert_id, fingerprint, rule, severity, state, labels, summary, value, runbook, started_at, fired_at,
     resolved_at, acknowledged_by, acknowledged_at, updated_at, summary_en, muting) = row
    ack = Acknowledgement(acknowledged_by, acknowledged_at) if acknowledged_by is not None else None
    silenced_by, inhibited_by = orjson.loads(muting) if muting is not None else ((), None)
    return Alert(id=alert_id, fingerprint=fingerprint, rule=rule, severity=severity, state=state,
                 labels=orjson.loads(labels), summary=summary, value=value, started_at=started_at,
                 fired_at=fired_at, resolved_at=resolved_at, runbook=runbook, acknowledged=ack,
                 updated_at=updated_at, summary_en=summary_en, silenced_by=tuple(silenced_by),
                 inhibited_by=inhibited_by)
