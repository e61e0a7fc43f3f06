"""SQLite persistence of alerts, silences and the operators' audit log (CONTRACT §1 `[store]`).

Active alerts are all loaded at start-up (the manager keeps them in memory); resolved ones are kept for
`[alerts] resolved_retention` (and at most `resolved_max` rows) and read back from here on demand. The
store is not thread-safe by itself: the `AlertManager` serialises every call with its lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ioc.alerts.alert import Acknowledgement, Alert
from ioc.alerts.audit import AuditEntry
from ioc.alerts.matchers import Matcher
from ioc.alerts.silence import Silence
from ioc.store import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT NOT NULL,
    value REAL,
    runbook TEXT,
    started_at REAL NOT NULL,
    fired_at REAL,
    resolved_at REAL,
    acknowledged_by TEXT,
    acknowledged_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, resolved_at);
CREATE INDEX IF NOT EXISTS alerts_fingerprint ON alerts (fingerprint);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    comment TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_audit_at ON alert_audit (at);
"""

_ALERT_COLUMNS = ("id, fingerprint, rule, severity, state, labels, summary, value, runbook, started_at, "
                  "fired_at, resolved_at, acknowledged_by, acknowledged_at, updated_at")


_SAVE_ALERT = (f"INSERT OR REPLACE INTO alerts ({_ALERT_COLUMNS}) VALUES "
               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class AlertStore:
    """The alert tables in the daemon's SQLite file (its own connection)."""

    def __init__(self, path: str | Path | sqlite3.Connection) -> None:
        self._owned = not isinstance(path, sqlite3.Connection)
        self._db = connect(path) if not isinstance(path, sqlite3.Connection) else path
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        if self._owned:
            self._db.close()

    # --- alerts ------------------------------------------------------------------------------------------

    def save_alert(self, alert: Alert, audit: AuditEntry | None = None) -> None:
        """Insert or replace an alert (and record the operator's action with it, in one transaction)."""
        with transaction(self._db):
            self._db.execute(_SAVE_ALERT, _alert_row(alert))
            if audit is not None:
                self._insert_audit(audit)

    def save_alerts(self, alerts: list[Alert]) -> None:
        """Insert or replace several alerts in one transaction (a rule engine's batch of changes: one
        commit instead of one each, ~100 -> ~10 µs an alert)."""
        with transaction(self._db):
            self._db.executemany(_SAVE_ALERT, [_alert_row(alert) for alert in alerts])

    def active_alerts(self) -> list[Alert]:
        """Every pending or firing alert (what the manager loads at start-up)."""
        cursor = self._db.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state != 'resolved' "
                                  "ORDER BY started_at")
        return [_alert(row) for row in cursor]

    def get_alert(self, alert_id: str) -> Alert | None:
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
        return [_alert(row) for row in self._db.execute(query, args)]

    def count_resolved(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM alerts WHERE state = 'resolved'").fetchone()[0])

    def purge_resolved(self, *, before: float, keep: int) -> int:
        """Delete resolved alerts resolved before `before`, and the oldest beyond the newest `keep`."""
        with transaction(self._db):
            removed = self._db.execute("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?",
                                       (before,)).rowcount
            removed += self._db.execute(
                "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE state = 'resolved' "
                "ORDER BY resolved_at DESC, updated_at DESC LIMIT -1 OFFSET ?)", (keep,)).rowcount
        return removed

    # --- silences ----------------------------------------------------------------------------------------

    def save_silence(self, silence: Silence, audit: AuditEntry | None = None) -> None:
        matchers = orjson.dumps([matcher.as_json() for matcher in silence.matchers]).decode()
        with transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO silences (id, matchers, starts_at, ends_at, comment, author, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (silence.id, matchers, silence.starts_at, silence.ends_at, silence.comment, silence.author,
                 silence.created_at, silence.updated_at))
            if audit is not None:
                self._insert_audit(audit)

    def silences(self) -> list[Silence]:
        cursor = self._db.execute("SELECT id, matchers, starts_at, ends_at, comment, author, created_at, "
                                  "updated_at FROM silences ORDER BY created_at")
        found = []
        for sid, matchers, starts_at, ends_at, comment, author, created_at, updated_at in cursor:
            parsed = tuple(Matcher.create(item["name"], item["value"], item["op"])
                           for item in orjson.loads(matchers))
            found.append(Silence(sid, parsed, starts_at, ends_at, comment, author, created_at, updated_at))
        return found

    def delete_silences(self, ids: list[str]) -> None:
        with transaction(self._db):
            self._db.executemany("DELETE FROM silences WHERE id = ?", [(sid,) for sid in ids])

    # --- audit log ---------------------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        with transaction(self._db):
            self._insert_audit(entry)

    def _insert_audit(self, entry: AuditEntry) -> None:
        detail = orjson.dumps(entry.detail).decode()
        self._db.execute("INSERT INTO alert_audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                         (entry.at, entry.actor, entry.action, entry.target, detail))

    def audit_log(self, *, target: str | None = None, limit: int = 1000) -> list[AuditEntry]:
        """The newest entries first (of one alert or silence when `target` is given)."""
        query = "SELECT at, actor, action, target, detail FROM alert_audit"
        args: list[object] = []
        if target is not None:
            query += " WHERE target = ?"
            args.append(target)
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return list(_audit_rows(self._db.execute(query, args)))

    def purge_audit(self, *, before: float) -> int:
        with transaction(self._db):
            return self._db.execute("DELETE FROM alert_audit WHERE at < ?", (before,)).rowcount


def _audit_rows(cursor: sqlite3.Cursor) -> Iterator[AuditEntry]:
    for at, actor, action, target, detail in cursor:
        yield AuditEntry(at, actor, action, target, orjson.loads(detail))


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    ack = alert.acknowledged
    return (alert.id, alert.fingerprint, alert.rule, alert.severity, alert.state,
            orjson.dumps(alert.labels).decode(), alert.summary, alert.value, alert.runbook,
            alert.started_at, alert.fired_at, alert.resolved_at, ack.by if ack else None,
            ack.at if ack else None, alert.updated_at)


def _alert(row: tuple[Any, ...]) -> Alert:
    (alert_id, fingerprint, rule, severity, state, labels, summary, value, runbook, started_at, fired_at,
     resolved_at, acknowledged_by, acknowledged_at, updated_at) = row
    ack = Acknowledgement(acknowledged_by, acknowledged_at) if acknowledged_by is not None else None
    return Alert(id=alert_id, fingerprint=fingerprint, rule=rule, severity=severity, state=state,
                 labels=orjson.loads(labels), summary=summary, value=value, started_at=started_at,
                 fired_at=fired_at, resolved_at=resolved_at, runbook=runbook, acknowledged=ack,
                 updated_at=updated_at)
