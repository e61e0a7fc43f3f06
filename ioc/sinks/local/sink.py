"""Points kept in the embedded store (docs/configuration.md `[influx] url = ""`: "metrics kept only in the
embedded store"), so `ioc demo` and small installs keep their history with no database to run.

Each `submit` is one SQLite transaction, so the points are durable when it returns and `on_durable`
runs at once, in order. The table is a ring: past `max_points` the oldest go (counted as evicted; they
had been written, so the counting rule of docs/metrics.md still holds: handed = written). `recent()` reads
them back as line protocol for tools and tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.core import Metric

from ioc import failpoints
from ioc.metrics import MetricSource, counter, gauge
from ioc.sinks.base import DurableCallback
from ioc.store import connect, transaction

DEFAULT_MAX_POINTS = 1_000_000
_SCHEMA = "CREATE TABLE IF NOT EXISTS local_points (seq INTEGER PRIMARY KEY, line TEXT NOT NULL)"


class LocalSink:
    def __init__(self, store_path: str | Path, *, max_points: int = DEFAULT_MAX_POINTS,
                 name: str = "local") -> None:
        self.name = name
        self.max_points = max_points
        self._db = connect(store_path)
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._stored = int(self._db.execute("SELECT count(*) FROM local_points").fetchone()[0])
        self._handed = 0
        self._evicted = 0
        self._closed = False

    def start(self) -> None:
        """Nothing runs in the background."""

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        with self._lock:
            if points:
                if failpoints.ACTIVE:
                    failpoints.hit("sink.before_write")
                with transaction(self._db):
                    self._db.executemany("INSERT INTO local_points (line) VALUES (?)",
                                         [(point,) for point in points])
                    excess = self._stored + len(points) - self.max_points
                    if excess > 0:
                        self._db.execute("DELETE FROM local_points WHERE seq IN "
                                         "(SELECT seq FROM local_points ORDER BY seq LIMIT ?)", (excess,))
                        self._evicted += excess
                self._stored = min(self._stored + len(points), self.max_points)
                self._handed += len(points)
        if on_durable is not None:
            on_durable()

    def has_room(self, points: int) -> bool:
        return True  # a ring: it never refuses

    def problems(self) -> list[str]:
        return []

    def recent(self, limit: int = 1000) -> list[str]:
        """The newest `limit` points, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT line FROM local_points ORDER BY seq DESC LIMIT ?", (limit,))
            return [line for (line,) in reversed(rows.fetchall())]

    def metrics(self) -> MetricSource:
        return self._collect

    def _collect(self) -> Iterable[Metric]:
        sink = self.name
        yield counter("ioc_sink_points_handed", "Points handed to the sink.", ("sink",), {(sink,): float(self._handed)})
        yield counter("ioc_sink_points", "Points handled for good, by outcome (and reason when dropped).",
                      ("sink", "outcome", "reason"), {(sink, "written", ""): float(self._handed)})
        yield gauge("ioc_sink_queue_points", "Points in memory: queued or being written.", ("sink",), {(sink,): 0.0})
        yield gauge("ioc_sink_spool_points", "Points in the disk spool, waiting for the database.", ("sink",),
                    {(sink,): 0.0})
        yield gauge("ioc_local_points", "Points kept in the embedded store.", ("sink",), {(sink,): float(self._stored)})
        yield counter("ioc_local_points_evicted", "Oldest points removed to keep the store within max_points.",
                      ("sink",), {(sink,): float(self._evicted)})

    def close(self, timeout: float) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
