"""The PostgreSQL backend (`[store] url = "postgresql://USER@HOST:PORT/DB"`), on psycopg 3.

One connection per `PostgresDatabase`, in autocommit mode (a read never leaves a transaction open);
`transaction()` wraps a BEGIN ... COMMIT. The portable SQL's `?` placeholders become psycopg's `%s`
(a literal `%` is doubled); statements run often are prepared by psycopg itself (`prepare_threshold`).
`executemany` is pipelined by psycopg (one round trip for a batch, not one a row).

A lost connection (PostgreSQL restarted, a network cut) fails the statement with StoreError; the next
statement outside a transaction connects again, so a store catches up once PostgreSQL is back. TCP
keepalives make a silent cut (no RST) fail within ~25 s instead of the kernel's two hours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import psycopg

from ioc.redact import redact_url
from ioc.store.errors import StoreError

CONNECT_TIMEOUT = 5  # seconds: an unreachable server is an error, not a hang of the evaluation thread
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
_TRANSLATED: dict[str, str] = {}


def _pg(sql: str) -> str:
    """`?` -> `%s` (and `%` -> `%%`), remembered per statement text (the statements are a fixed set)."""
    found = _TRANSLATED.get(sql)
    if found is None:
        found = sql.replace("%", "%%").replace("?", "%s")
        if len(_TRANSLATED) < 10_000:
            _TRANSLATED[sql] = found
    return found


class PostgresDatabase:
    """`Database` over one psycopg connection (see the module doc)."""

    dialect: Literal["postgresql"] = "postgresql"

    def __init__(self, url: str, *, password: str = "", node: str = "", timeout: float | None = None) -> None:
        """`timeout`: seconds any statement (`statement_timeout`) or its wait for a lock (`lock_timeout`)
        may take before it fails with StoreError (the cluster's lease: a hung server must not hang it past
        the lease); None: PostgreSQL's default, no limit."""
        self._url = url
        self._password = password
        self._node = node
        self._timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._in_transaction = False
        self.closed = False
        self._connection()  # a wrong URL or an unreachable server is found when the store opens

    @property
    def url(self) -> str:
        return redact_url(self._url)

    def reopen(self, *, timeout: float | None = None) -> PostgresDatabase:
        """A new connection to the same database; `timeout` as for the constructor."""
        return PostgresDatabase(self._url, password=self._password, node=self._node, timeout=timeout)

    def listening(self, channel: str) -> psycopg.Connection[Any]:
        """A new connection of its own (autocommit) that LISTENs on `channel`: read it with
        `notifies()` (`ioc.cluster.listen`). StoreError when the server does not answer."""
        options: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, **_KEEPALIVE,
                                   "application_name": f"ioc {self._node} listen".strip()}
        if self._password:
            options["password"] = self._password
        try:
            conn = psycopg.connect(self._url, **options)
            conn.execute(f"LISTEN {channel}".encode())
        except psycopg.Error as error:
            raise StoreError(f"cannot listen on {self.url}: {_first_line(error)}") from error
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self.closed:
            raise StoreError(f"the store {self.url} is closed")
        if self._in_transaction:
            raise StoreError(f"the connection to {self.url} was lost in a transaction")
        options: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, **_KEEPALIVE,
                                   "application_name": f"ioc {self._node}".strip()}
        if self._password:
            options["password"] = self._password
        if self._timeout is not None:
            ms = max(1, round(self._timeout * 1000))
            options["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
            # libpq's least connect timeout is 2 s; a connection that cannot be made in time fails as well
            options["connect_timeout"] = max(2, min(CONNECT_TIMEOUT, math.ceil(self._timeout)))
        try:
            self._conn = conn = psycopg.connect(self._url, **options)
        except psycopg.Error as error:
            raise StoreError(f"cannot connect to {self.url}: {_first_line(error)}") from error
        return conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        try:
            if params:
                return self._connection().execute(_pg(sql), params)
            return self._connection().execute(sql.encode())  # no placeholders: `%` is itself
        except psycopg.Error as error:
            raise StoreError(_first_line(error)) from error

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            with self._connection().cursor() as cursor:
                cursor.executemany(_pg(sql), rows)
        except psycopg.Error as error:
            raise StoreError(_first_line(error)) from error

    def batches(self, sql: str, params: Sequence[Any] = (), size: int = 10_000) -> Iterator[list[Any]]:
        """A server-side cursor (it needs a transaction): memory stays at one batch."""
        with self.transaction():
            try:
                with self._connection().cursor(name="ioc_batches") as cursor:
                    cursor.execute(_pg(sql) if params else sql.encode(), params or None)
                    while batch := cursor.fetchmany(size):
                        yield batch
            except psycopg.Error as error:
                raise StoreError(_first_line(error)) from error

    @contextmanager
    def transaction(self) -> Iterator[None]:
        conn = self._connection()
        self._in_transaction = True
        try:
            with conn.transaction():
                yield
        except psycopg.Error as error:
            raise StoreError(_first_line(error)) from error
        finally:
            self._in_transaction = False

    def close(self) -> None:
        self.closed = True
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass  # closing a broken connection: nothing to keep


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
