"""Repeats of (`source`, `id`) within `[intake] dedup_window`, across transports and restarts.

Keys live in memory for the hot path and in the store so a restart still knows them. A key is written
to the store only once its event's points are durable: if the daemon dies before that, the broker
redelivers the event and it must be accepted again, not taken for a duplicate of something lost.

The keys have a SQLite file of their own beside `[store] path` (`ioc.db` -> `ioc.dedup.db`:
`open_dedup_store`). In the store's file their second's batch (thousands of rows a second at full
intake, written by the housekeeping thread) held the one write lock the alert path needs: the
evaluation thread waited in SQLite's busy handler, which sleeps in growing steps (1, 2, 5, 10, ... ms),
and it grew the WAL that some commit of the alert path then checkpointed. At 5k events/s that was 28 %
of the evaluation thread's busy time (py-spy) and the event -> alert latency's tail. Keys an older
release kept in the store's file are moved over once, at the first start.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from ioc.store import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, seen REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup (seen);
"""


def dedup_key(source: str, event_id: str) -> str:
    return f"{source}\x00{event_id}"


def dedup_path(store_path: str | Path) -> str:
    """The dedup keys' file beside the store's: `var/ioc.db` -> `var/ioc.dedup.db` (`:memory:` stays)."""
    if str(store_path) == ":memory:":
        return ":memory:"
    path = Path(store_path)
    return str(path.with_name(f"{path.stem}.dedup{path.suffix}"))


def open_dedup_store(store_path: str | Path) -> sqlite3.Connection:
    """The connection `DedupIndex` keeps its keys in: `dedup_path(store_path)`, with the keys an older
    release kept in the store's own file moved over (once: the table is dropped there afterwards)."""
    connection = connect(dedup_path(store_path))
    try:
        connection.executescript(_SCHEMA)
        if str(store_path) != ":memory:" and Path(store_path).exists():
            _move_old_keys(connection, str(store_path))
    except BaseException:
        connection.close()
        raise
    return connection


def _move_old_keys(connection: sqlite3.Connection, store_path: str) -> None:
    """Copy the store file's `dedup` table into this one, then drop it there. Copied and committed before
    the drop, so a crash in between copies it again at the next start (INSERT OR REPLACE: the same)."""
    connection.execute("ATTACH DATABASE ? AS store", (store_path,))
    try:
        found = connection.execute(
            "SELECT 1 FROM store.sqlite_master WHERE type = 'table' AND name = 'dedup'").fetchone()
        if found is None:
            return
        with transaction(connection):
            connection.execute("INSERT OR REPLACE INTO main.dedup (key, seen) SELECT key, seen FROM store.dedup")
        with transaction(connection):
            connection.execute("DROP TABLE store.dedup")  # its index `dedup_seen` goes with it
    finally:
        connection.execute("DETACH DATABASE store")


class DedupIndex:
    """Which (source, id) pairs were seen within the window. Not thread-safe: the pipeline serialises."""

    def __init__(
        self,
        connection: sqlite3.Connection | None,
        *,
        window: float,
        max_keys: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        # Insertion order is age order; OrderedDict pops its oldest in O(1) where a dict rescans holes.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._durable: list[tuple[float, list[str]]] = []  # (when, keys): one entry per call, not per key
        self._durable_lock = threading.Lock()
        self.evicted = 0  # keys forgotten early because of max_keys
        if connection is not None:
            connection.executescript(_SCHEMA)
            horizon = clock() - window
            rows = connection.execute(
                "SELECT key, seen FROM dedup WHERE seen >= ? ORDER BY seen DESC LIMIT ?", (horizon, max_keys)
            ).fetchall()
            for key, seen in reversed(rows):
                self._seen[key] = seen

    def __len__(self) -> int:
        return len(self._seen)

    def seen_before(self, key: str) -> bool:
        """True if `key` is a repeat; otherwise remember it and return False."""
        if key in self._seen:
            return True
        now = self._clock()
        self._seen[key] = now
        if len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
            self.evicted += 1
        return False

    def forget(self, keys: Iterable[str]) -> None:
        """Undo `seen_before` for events that were not kept after all (their sink refused them)."""
        for key in keys:
            self._seen.pop(key, None)

    def mark_durable(self, keys: list[str]) -> None:
        """Called (from any thread) once the points of these keys are durable."""
        if keys and self._connection is not None:
            entry = (self._clock(), keys)
            with self._durable_lock:
                self._durable.append(entry)

    def expire(self) -> int:
        """Forget keys older than the window, in memory; return how many."""
        horizon = self._clock() - self._window
        expired = 0
        seen = self._seen
        while seen and seen[next(iter(seen))] < horizon:
            seen.popitem(last=False)
            expired += 1
        return expired

    def persist(self) -> int:
        """Write the durable keys to the store and drop expired ones there; return keys written."""
        if self._connection is None:
            return 0
        with self._durable_lock:
            entries, self._durable = self._durable, []
        rows = [(key, seen) for seen, keys in entries for key in keys]
        with transaction(self._connection):
            if rows:
                self._connection.executemany("INSERT OR REPLACE INTO dedup (key, seen) VALUES (?, ?)", rows)
            self._connection.execute("DELETE FROM dedup WHERE seen < ?", (self._clock() - self._window,))
        return len(rows)
