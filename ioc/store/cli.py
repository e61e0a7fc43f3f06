"""`ioc store migrate` and `ioc store status` (docs/operations.md): what they print, given the store's URL.
The command line (ioc/cli.py) reads the config and prints these lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from ioc.store.database import open_database, sqlite_path
from ioc.store.migrations import LATEST, MIGRATIONS, MigrationState, migrate, migration_status


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def migrate_lines(url: str, *, password: str = "") -> list[str]:
    """Apply the pending migrations; one line per migration applied, or one saying it is up to date
    (StoreError: unreachable, or a schema newer than this release)."""
    db = open_database(url, password=password)
    try:
        applied = migrate(db)
    finally:
        db.close()
    if not applied:
        return [f"{db.url}: up to date (schema version {LATEST})"]
    return [f"{db.url}: applied {migration.version:04d} {migration.name}" for migration in applied]


def status_lines(url: str, *, password: str = "") -> list[str]:
    """`VERSION NAME applied AT` or `VERSION NAME pending`, in order, after a line naming the store. A SQLite
    file that does not exist yet is not created (every migration pending)."""
    if url.startswith("sqlite:") and not Path(sqlite_path(url)).exists():
        states = [MigrationState(m.version, m.name, None) for m in MIGRATIONS]
        lines = [f"{url} (sqlite, not created yet)"]
    else:
        db = open_database(url, password=password)
        try:
            states = migration_status(db)
        finally:
            db.close()
        lines = [f"{db.url} ({db.dialect})"]
    for state in states:
        status = "pending" if state.applied_at is None else f"applied {_when(state.applied_at)}"
        lines.append(f"{state.version:04d} {state.name:<12} {status}")
    return lines
