"""The local store's `Writer`: points kept in the embedded SQLite store, as a ring of `max_points`.

Each batch is one transaction; past `max_points` the oldest go (counted as evicted; they had been
written, so the counting rule of docs/metrics.md still holds). A failing disk is a retryable `io` error:
the batching loop holds the batch in memory, unacknowledged, and retries it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import Metric

from ioc.metrics import counter, gauge
from ioc.sinks.writer import WriteError
from ioc.store import connect, transaction

_SCHEMA = "CREATE TABLE IF NOT EXISTS local_points (seq INTEGER PRIMARY KEY, line TEXT NOT NULL)"


class LocalWriter:
    def __init__(self, store_path: str | Path, *, max_points: int) -> None:
        self.max_points = max_points
        self._db = connect(store_path)
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()  # `recent()` reads from other threads
        self.stored = int(self._db.execute("SELECT count(*) FROM local_points").fetchone()[0])
        self.evicted = 0

    def write(self, points: list[str]) -> None:
        try:
            with self._lock, transaction(self._db):
                self._db.executemany("INSERT INTO local_points (line) VALUES (?)", [(point,) for point in points])
                excess = self.stored + len(points) - self.max_points
                if excess > 0:
                    self._db.execute("DELETE FROM local_points WHERE seq IN "
                                     "(SELECT seq FROM local_points ORDER BY seq LIMIT ?)", (excess,))
        except (sqlite3.Error, OSError) as error:
            raise WriteError(f"io: {type(error).__name__}: {error}", kind="io", retryable=True) from error
        self.evicted += max(0, excess)
        self.stored = min(self.stored + len(points), self.max_points)

    def recent(self, limit: int) -> list[str]:
        """The newest `limit` points, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT line FROM local_points ORDER BY seq DESC LIMIT ?", (limit,))
            return [line for (line,) in reversed(rows.fetchall())]

    def metrics(self, sink: str) -> Iterable[Metric]:
        yield gauge("ioc_local_points", "Points kept in the embedded store.", ("sink",), {(sink,): float(self.stored)})
        yield counter("ioc_local_points_evicted", "Oldest points removed to keep the store within max_points.",
                      ("sink",), {(sink,): float(self.evicted)})

    def close(self) -> None:
        with self._lock:
            self._db.close()
