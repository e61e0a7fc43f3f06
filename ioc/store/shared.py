"""Opening the shared store at start: connect, migrate, and put this node on the store's node list."""

from __future__ import annotations

import time

import structlog

from ioc.store.database import Database, open_database, upsert
from ioc.store.errors import StoreError
from ioc.store.migrations import migrate

log = structlog.get_logger("ioc.store")

_RECORD_NODE = upsert("cluster_nodes", ("node", "version", "started_at", "seen_at"), ("node",))


def open_shared(url: str, *, password: str = "", node: str = "", version: str = "") -> Database:
    """The shared store of `[store] url`, its schema migrated, `node` recorded (StoreError: unreachable,
    a bad URL or credentials, a schema newer than this release)."""
    db = open_database(url, password=password, node=node)
    try:
        fresh = not _has_table(db, "alerts")
        applied = migrate(db)
        if applied:  # an upgrade is news; a new store's schema is not (and `ioc run` prints nothing yet)
            (log.debug if fresh else log.info)(
                "store.migrated", store=db.url,
                applied=[f"{migration.version:04d}_{migration.name}" for migration in applied])
        if node:
            record_node(db, node, version)
    except BaseException:
        db.close()
        raise
    return db


def _has_table(db: Database, table: str) -> bool:
    try:
        db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
    except StoreError:  # autocommit: the failed statement leaves no transaction behind
        return False
    return True


def record_node(db: Database, node: str, version: str, now: float | None = None) -> None:
    """This node started now (phase 2's heartbeats and lease will keep `seen_at` fresh)."""
    now = time.time() if now is None else now
    db.execute(_RECORD_NODE, (node, version, now, now))
