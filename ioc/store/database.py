"""The `Database` interface the shared state is written through, and how a store target is opened.

A target is a `Database` (a new connection to the same database is opened: `reopen()`), a URL
(`sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB`), or a plain path (SQLite; `:memory:` for tests).

The SQL is written once, in the subset both SQLite (3.24+) and PostgreSQL (12+) run alike:
- `?` placeholders (the PostgreSQL backend turns them into `%s`); no named parameters;
- `INSERT ... ON CONFLICT (key) DO UPDATE SET c = excluded.c` (see `upsert`), never `INSERT OR REPLACE`;
- no `rowid`, no `PRAGMA`, no `executescript`, no `DELETE ... LIMIT` (delete `WHERE key NOT IN (SELECT
  ... LIMIT ?)`), no `LIMIT -1`; `OFFSET ?` only after a `LIMIT ?`; no booleans (0/1 integers);
- values are TEXT, 64-bit integers, doubles, bytes and NULL; times are Unix seconds (double) or µs (int).
DDL is the exception: the migrations (`ioc.store.migrations`) spell the column types per dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from ioc.store.errors import StoreError

Dialect: TypeAlias = Literal["sqlite", "postgresql"]


class Rows(Protocol):
    """What `execute` returns: a DB-API cursor's reading side (rows are tuples)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@runtime_checkable
class Database(Protocol):
    """One connection to the shared store. Not thread-safe by itself: a store keeps one Database under its
    own lock, and opens another (`reopen`) for another component. Every error is a StoreError."""

    closed: bool

    @property
    def dialect(self) -> Dialect:
        """`sqlite` or `postgresql`: what the migrations spell their DDL for."""

    @property
    def url(self) -> str:
        """The database's URL without any password (for logs and `ioc store status`)."""

    def reopen(self) -> Database:
        """A new connection to the same database (with the same credentials)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Run one statement (autocommit unless inside `transaction()`)."""

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each row (batched: pipelined on PostgreSQL)."""

    def batches(self, sql: str, params: Sequence[Any] = (), size: int = 10_000) -> Iterator[list[Any]]:
        """The rows of a query `size` at a time, never all in memory (a restart's reload of 1M dossiers)."""

    def transaction(self) -> AbstractContextManager[None]:
        """BEGIN ... COMMIT, ROLLBACK on an error; SQLite takes the write lock at once (IMMEDIATE)."""

    def close(self) -> None: ...


StoreTarget: TypeAlias = "Database | str | Path"


def open_database(target: Database | str | Path, *, password: str = "", node: str = "") -> Database:
    """A connection to the store `target` (see the module doc). `password` is PostgreSQL's when the URL has
    none (`[store] password_file`); `node` names the connection in PostgreSQL's `pg_stat_activity`."""
    if isinstance(target, Database):
        return target.reopen()
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from ioc.store.postgres import PostgresDatabase  # psycopg only when PostgreSQL is used

        return PostgresDatabase(text, password=password, node=node)
    from ioc.store.sqlite import SqliteDatabase

    if text.startswith("sqlite://"):
        return SqliteDatabase(sqlite_path(text))
    if "://" in text:
        raise StoreError(f"store url {text.split('://')[0]}://...: not sqlite:/// or postgresql://")
    return SqliteDatabase(text or ":memory:")


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///PATH` URL (`sqlite:////abs/path` or `sqlite:///rel/path`, as SQLAlchemy)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///":
        raise StoreError(f"store url {url!r}: expected sqlite:///PATH")
    return url.removeprefix("sqlite:///")


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """`INSERT INTO table (columns) VALUES (?, ...) ON CONFLICT (key) DO UPDATE SET` every other column:
    the portable "insert or replace" of a row by its primary key."""
    others = [column for column in columns if column not in key]
    update = ", ".join(f"{column} = excluded.{column}" for column in others)
    action = f"DO UPDATE SET {update}" if others else "DO NOTHING"
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(key)}) {action}")
