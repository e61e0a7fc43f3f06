"""The disk spool: a `Buffer` of point batches in the SQLite store, for while the database is away.

A batch is one row: its points as a JSON list (not joined by newlines: a string field may hold a raw
newline, so only the writer may join them) and, since the sinks were reshaped, the origin key of each
point (`ioc.sinks.base.origin_key`) as a JSON list of strings or nulls (`origins` is NULL when none is
known, as in rows an older daemon wrote: those replay unchanged, their refused points have no origin). Rows are
read oldest first (by rowid, AUTOINCREMENT so an id is never reused), which keeps the order of points
end to end. Bounded in points; the caller checks `has_room`. Several sinks may share the store file:
rows carry the sink's name. The table keeps its first name, `influx_spool`, so old spools are found.

Used from one thread (the sink's batching loop); `points` and `bytes` may be read from others.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from ioc import failpoints
from ioc.errors import SinkFull
from ioc.sinks.buffer import Batch
from ioc.store import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS influx_spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    count INTEGER NOT NULL,
    points BLOB NOT NULL,
    origins BLOB
);
CREATE INDEX IF NOT EXISTS influx_spool_sink ON influx_spool (sink, id);
"""
_SIZE = "LENGTH(points) + COALESCE(LENGTH(origins), 0)"


def _encode_origins(origins: list[str | None]) -> bytes | None:
    return orjson.dumps(origins) if any(origins) else None


def _decode_origins(blob: bytes | None, count: int) -> list[str | None]:
    return [None] * count if blob is None else list(orjson.loads(blob))


class Spool:
    """A bounded FIFO of point batches in the SQLite store at `path`, for the sink named `sink`."""

    def __init__(self, path: str | Path, *, sink: str, max_points: int) -> None:
        self.sink = sink
        self.max_points = max_points
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(influx_spool)")}
        if "origins" not in columns:  # a spool an older daemon created: its rows keep a NULL
            self._db.execute("ALTER TABLE influx_spool ADD COLUMN origins BLOB")
        points, size = self._db.execute(
            f"SELECT COALESCE(SUM(count), 0), COALESCE(SUM({_SIZE}), 0) FROM influx_spool WHERE sink = ?",
            (sink,),
        ).fetchone()
        self.points: int = int(points)
        """Points spooled now (kept in memory; the rows are the truth at start-up)."""
        self.bytes: int = int(size)
        """Bytes of the stored point and origin lists."""

    def __len__(self) -> int:
        return self.points

    def has_room(self, count: int) -> bool:
        return self.points + count <= self.max_points

    def append(self, batch: Batch) -> None:
        """Store a batch after the others; SinkFull when it does not fit, sqlite3.Error or OSError when
        the disk refuses it (then nothing is stored)."""
        if not self.has_room(len(batch)):
            raise SinkFull(f"spool full ({self.points} of {self.max_points} points)")
        blob, origins = orjson.dumps(batch.lines), _encode_origins(batch.origins)
        if failpoints.ACTIVE:
            failpoints.hit("spool.write")
        self._db.execute("INSERT INTO influx_spool (sink, count, points, origins) VALUES (?, ?, ?, ?)",
                         (self.sink, len(batch), blob, origins))
        self.points += len(batch)
        self.bytes += len(blob) + len(origins or b"")

    def begin(self, max_points: int) -> Batch | None:
        """The oldest rows, as many as fit in `max_points` (always at least one), or None when empty."""
        rows = self._db.execute(
            f"SELECT id, count, points, origins, {_SIZE} FROM influx_spool WHERE sink = ? ORDER BY id",
            (self.sink,),
        )
        lines: list[str] = []
        origins: list[str | None] = []
        first_id = last_id = size = 0
        try:
            for row_id, count, blob, origin_blob, row_size in rows:
                if lines and len(lines) + count > max_points:
                    break
                if not lines:
                    first_id = row_id
                lines.extend(orjson.loads(blob))
                origins.extend(_decode_origins(origin_blob, count))
                last_id = row_id
                size += row_size
        finally:
            rows.close()
        if not first_id:
            return None
        return Batch(lines, origins, rows=(first_id, last_id, size))

    def end(self, batch: Batch, handled: int) -> None:
        """Forget the first `handled` points of a batch `begin` returned; the rest stays first in line."""
        first_id, last_id, size = batch.rows
        if handled >= len(batch):
            self._db.execute("DELETE FROM influx_spool WHERE sink = ? AND id BETWEEN ? AND ?",
                             (self.sink, first_id, last_id))
            self.points -= len(batch)
            self.bytes -= size
            return
        if not handled:
            return
        lines, origins = batch.lines[handled:], batch.origins[handled:]
        blob, origin_blob = orjson.dumps(lines), _encode_origins(origins)
        with transaction(self._db):
            self._db.execute("DELETE FROM influx_spool WHERE sink = ? AND id > ? AND id <= ?",
                             (self.sink, first_id, last_id))
            self._db.execute("UPDATE influx_spool SET count = ?, points = ?, origins = ? WHERE id = ?",
                             (len(lines), blob, origin_blob, first_id))
        self.points -= handled
        self.bytes += len(blob) + len(origin_blob or b"") - size

    def close(self) -> None:
        self._db.close()


class NoSpool:
    """A spool that takes nothing (the local store has no database to wait for): a batch that cannot
    be written waits in memory, unacknowledged, and is retried."""

    max_points = 0
    points = 0
    bytes = 0

    def has_room(self, count: int) -> bool:
        return False

    def append(self, batch: Batch) -> None:
        raise SinkFull("no spool")

    def begin(self, max_points: int) -> Batch | None:
        return None

    def end(self, batch: Batch, handled: int) -> None:
        """Nothing to forget."""

    def close(self) -> None:
        """Nothing to release."""
