"""The disk spool: batches of points kept in the SQLite store while InfluxDB cannot take them.

A batch is one row, its points stored as a JSON list (not joined by newlines: a string field may hold a
raw newline, so only the writer may join them). Rows are replayed oldest first (by rowid, AUTOINCREMENT so
an id is never reused), which keeps the order of points end to end. The spool is bounded in points; the
caller checks `has_room` and decides what to do when it is full. Several sinks may share the store file:
rows carry the sink's name.

Used from one thread (the sink's writer); the counters are plain attributes other threads may read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from ioc import failpoints
from ioc.errors import SinkFull
from ioc.store import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS influx_spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    count INTEGER NOT NULL,
    points BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS influx_spool_sink ON influx_spool (sink, id);
"""


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """The oldest rows of the spool, read together: their points in order and what they occupy."""

    first_id: int
    last_id: int
    points: list[str]
    size: int  # bytes stored


class Spool:
    """A bounded FIFO of point batches in the SQLite store at `path`, for the sink named `sink`."""

    def __init__(self, path: str | Path, *, sink: str, max_points: int) -> None:
        self.sink = sink
        self.max_points = max_points
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)
        points, size = self._db.execute(
            "SELECT COALESCE(SUM(count), 0), COALESCE(SUM(LENGTH(points)), 0) FROM influx_spool WHERE sink = ?",
            (sink,),
        ).fetchone()
        self.points: int = int(points)
        """Points spooled now (kept in memory; the rows are the truth at start-up)."""
        self.bytes: int = int(size)
        """Bytes of the stored point lists."""

    def __len__(self) -> int:
        return self.points

    def has_room(self, points: int) -> bool:
        """Whether `points` more fit under `max_points`."""
        return self.points + points <= self.max_points

    def append(self, points: list[str]) -> None:
        """Store a batch after the others; raise SinkFull when it does not fit."""
        if not self.has_room(len(points)):
            raise SinkFull(f"spool full ({self.points} of {self.max_points} points)")
        blob = orjson.dumps(points)
        if failpoints.ACTIVE:
            failpoints.hit("spool.write")
        self._db.execute("INSERT INTO influx_spool (sink, count, points) VALUES (?, ?, ?)",
                         (self.sink, len(points), blob))
        self.points += len(points)
        self.bytes += len(blob)

    def peek(self, max_points: int) -> SpooledBatch | None:
        """The oldest rows, as many as fit in `max_points` (always at least one), or None when empty."""
        rows = self._db.execute(
            "SELECT id, count, points FROM influx_spool WHERE sink = ? ORDER BY id", (self.sink,)
        )
        points: list[str] = []
        first_id = last_id = size = 0
        try:
            for row_id, count, blob in rows:
                if points and len(points) + count > max_points:
                    break
                if not points:
                    first_id = row_id
                points.extend(orjson.loads(blob))
                last_id = row_id
                size += len(blob)
        finally:
            rows.close()
        if not first_id:
            return None
        return SpooledBatch(first_id, last_id, points, size)

    def delete(self, batch: SpooledBatch) -> None:
        """Forget a batch that `peek` returned (it was written or handled otherwise)."""
        self._db.execute("DELETE FROM influx_spool WHERE sink = ? AND id BETWEEN ? AND ?",
                         (self.sink, batch.first_id, batch.last_id))
        self.points -= len(batch.points)
        self.bytes -= batch.size

    def replace(self, batch: SpooledBatch, remainder: list[str]) -> None:
        """Keep only `remainder` of a peeked batch, still first in line (part of it was handled)."""
        if not remainder:
            self.delete(batch)
            return
        blob = orjson.dumps(remainder)
        with transaction(self._db):
            self._db.execute("DELETE FROM influx_spool WHERE sink = ? AND id > ? AND id <= ?",
                             (self.sink, batch.first_id, batch.last_id))
            self._db.execute("UPDATE influx_spool SET count = ?, points = ? WHERE id = ?",
                             (len(remainder), blob, batch.first_id))
        self.points += len(remainder) - len(batch.points)
        self.bytes += len(blob) - batch.size

    def close(self) -> None:
        self._db.close()
