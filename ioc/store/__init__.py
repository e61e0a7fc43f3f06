"""The daemon's store (docs/configuration.md `[store]`, CONTRACT §8).

Two kinds of state:
- node-local, always in the SQLite file `[store] path`: the sinks' spool and local points, the MQTT
  poison ledger and session, CAP messages; the dedup keys in a file of their own beside it (`ioc.db` ->
  `ioc.dedup.db`, `ioc.ingest.dedup`). Their code uses the plain sqlite3 helpers `connect` and
  `transaction` (`ioc.store.sqlite`).
- shared, in the database of `[store] url` (SQLite by default, the same file; or PostgreSQL, where several
  nodes will share it): alerts, outbox, audit, silences, the dossier and status trackers' rows, component
  state (rule engine, KPI board). Their code uses the `Database` interface (`ioc.store.database`), with
  SQL written once in a portable subset, and the schema comes from versioned migrations
  (`ioc.store.migrations`, `ioc store migrate`).
"""

from __future__ import annotations

from ioc.store.database import Database, Rows, StoreTarget, open_database, upsert
from ioc.store.errors import StoreError
from ioc.store.migrations import ensure_schema, migrate, migration_status
from ioc.store.shared import open_shared, record_node
from ioc.store.sqlite import connect, transaction
from ioc.store.state import load_state, save_state

__all__ = ["Database", "Rows", "StoreError", "StoreTarget", "connect", "ensure_schema", "load_state", "migrate",
           "migration_status", "open_database", "open_shared", "record_node", "save_state", "transaction", "upsert"]
