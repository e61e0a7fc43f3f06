"""The audit log: who changed what, when (every operator action on alerts and silences).

The log is one table, `alert_audit`, in the shared store (`ioc.store`, its migrations make the table).
Each store that records an operator's action (`ioc.alerts.store` for acknowledgements, `ioc.alerts.silence`
for silences) writes the entry in the same transaction as the change, with `insert`, with the name of the
node that took the action ([cluster] node); these functions are the table's only queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ioc.alerts.alert import rfc3339
from ioc.store import Database


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action: `action` is `alert.ack`, `alert.unack`, `silence.create`, `silence.update`
    or `silence.expire`; `target` the alert or silence id; `detail` what else a reader needs (rule,
    fingerprint, matchers)."""

    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"at": rfc3339(self.at), "actor": self.actor, "action": self.action, "target": self.target,
                "detail": self.detail}


def insert(db: Database, entry: AuditEntry, node: str = "") -> None:
    """Add an entry made on `node` (inside the caller's transaction)."""
    detail = orjson.dumps(entry.detail).decode()
    db.execute("INSERT INTO alert_audit (at, actor, action, target, detail, node) VALUES (?, ?, ?, ?, ?, ?)",
               (entry.at, entry.actor, entry.action, entry.target, detail, node or None))


def read(db: Database, *, target: str | None = None, limit: int = 1000) -> list[AuditEntry]:
    """The newest entries first (of one alert or silence when `target` is given)."""
    query = "SELECT at, actor, action, target, detail FROM alert_audit"
    args: list[object] = []
    if target is not None:
        query += " WHERE target = ?"
        args.append(target)
    query += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    return list(_entries(db.execute(query, args)))


def purge(db: Database, *, before: float) -> int:
    """Delete the entries older than `before` (inside the caller's transaction); how many."""
    return int(db.execute("DELETE FROM alert_audit WHERE at < ?", (before,)).rowcount)


def _entries(cursor: Iterable[tuple[Any, ...]]) -> Iterator[AuditEntry]:
    for at, actor, action, target, detail in cursor:
        yield AuditEntry(at, actor, action, target, orjson.loads(detail))
