"""Component state: one serialized blob per component (the rule engine's timers and windows, the KPI
board's latest values), in the `component_state` table of the shared store."""

from __future__ import annotations

import sqlite3

from ioc.store.database import Database, upsert

_SAVE = upsert("component_state", ("name", "data"), ("name",))
# A bare sqlite3 connection (a bench, a node-local file) has not been through the migrations.
_SQLITE_TABLE = "CREATE TABLE IF NOT EXISTS component_state (name TEXT PRIMARY KEY, data BLOB NOT NULL)"


def save_state(db: Database | sqlite3.Connection, name: str, data: bytes) -> None:
    """Keep one component's serialized state under `name`, replacing the last (StoreError, or
    sqlite3.Error on a bare connection)."""
    if isinstance(db, sqlite3.Connection):
        db.execute(_SQLITE_TABLE)
    db.execute(_SAVE, (name, data))


def load_state(db: Database | sqlite3.Connection, name: str) -> bytes | None:
    """What `save_state` kept under `name`, or None."""
    if isinstance(db, sqlite3.Connection):
        db.execute(_SQLITE_TABLE)
    row = db.execute("SELECT data FROM component_state WHERE name = ?", (name,)).fetchone()
    return bytes(row[0]) if row else None
