"""The SQLite backend: the embedded default (`[store] url = "sqlite:///PATH"`, or just `[store] path`).

Two faces. `connect` and `transaction` are the plain sqlite3 helpers the node-local tables use (the
sinks' spool and local points, the MQTT poison ledger, CAP: the `[store] path` file; the dedup keys: a file
of their own beside it). The
`SqliteDatabase` is the same connection behind the `Database` interface, for the shared state (alerts,
silences, audit, outbox, trackers, component state), which may live in PostgreSQL instead.

Each component opens its own connection (SQLite connections belong to one thread unless told otherwise,
and a transaction is per connection); WAL lets the readers and the one writer at a time proceed together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from ioc.store.errors import StoreError


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection to the store at `path` (created with its folder if missing)."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across a process crash (what we guard against); FULL also covers a
    # power loss at the cost of an fsync per commit.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=30000")
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). The connections are in autocommit mode, where
    `with connection:` begins nothing: every statement of an executemany would be its own transaction
    (measured: 35 µs a dedup key, against ~2 µs in one transaction)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class SqliteDatabase:
    """`Database` over one sqlite3 connection (`connect`'s settings: WAL, synchronous=NORMAL). Errors are
    raised as StoreError. Not locked: each store holds its own lock around its own connection."""

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = connect(path)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the SQLite store {self.path}: {error}") from error
        self.closed = False

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def reopen(self) -> SqliteDatabase:
        return SqliteDatabase(self.path)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error

    def batches(self, sql: str, params: Sequence[Any] = (), size: int = 10_000) -> Iterator[list[Any]]:
        cursor = self.execute(sql, params)
        try:
            while batch := cursor.fetchmany(size):
                yield batch
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error

    @contextmanager
    def transaction(self) -> Iterator[None]:
        try:
            with transaction(self._db):
                yield
        except sqlite3.Error as error:
            raise StoreError(str(error)) from error

    def close(self) -> None:
        self.closed = True
        self._db.close()
