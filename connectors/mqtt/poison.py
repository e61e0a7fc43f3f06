"""Poison messages (docs/operations.md): a message whose handling kills the process is handled at most
`[intake] max_deliveries` times, counted across restarts; then it is acknowledged and dead-lettered as
`poison`, unprocessed. Without this, a QoS 1 message that crashes the daemon is redelivered by the broker
on every restart: a crash loop, a permanent outage.

How a crash is pinned on one message, at almost no cost while nothing crashes:

1. Before a burst of QoS 1 messages is handed to the pipeline, their MQTT packet ids are written to a small
   in-flight journal file with one `pwrite` (no fsync: a process that is killed leaves its writes in the
   page cache, and the kernel keeps them); when the burst returns, a second `pwrite` marks it empty. Two
   system calls a burst (up to 256 messages); no hashing, no allocation per message.
2. At start, a journal that is not empty names the messages being handled when the process died. On a
   resumed session the broker resends every unacknowledged QoS 1 PUBLISH with its original packet
   identifier (MQTT 3.1.1 and 5, §4.4), and a packet id stays taken until we acknowledge it, so the first
   message that arrives with a journaled packet id is the one that was in flight. Only then is it keyed
   (blake2b-64 of its source and payload: what its handling depends on) and charged one crash in the
   ledger, a table of the daemon's SQLite store, so the count survives any number of restarts.
3. A charged message, a "suspect", is handled alone (a burst of one, journaled alone), so a further crash
   is pinned on exactly it. A suspect that survives is cleared from the ledger; the good messages of a
   crashed burst are thus each handled alone once and go on as usual. A suspect whose crashes reached
   `max_deliveries`, one of them at least while it was handled alone, is not handled: the connector
   acknowledges it and dead-letters it as `poison`. (A crash of a burst of many cannot tell the guilty
   message from its neighbours, and those must never be quarantined; so with `max_deliveries = 1` a
   poison that first crashed among others is handled once more, alone.)
4. A burst handed over while a sink had no room may have been waiting there (a full spool with
   `spool_on_full = "block"`), not processing, when the process was killed: its journal says so, and its
   messages are then handled alone without being charged.
5. Ledger rows expire (after the session expiry, at least a day: the broker cannot redeliver anything
   older) and are capped in number, so the ledger stays small. A quarantined message keeps its row until
   then: if the vendor sends the same bytes again, one more crash is enough to quarantine them.

A session the broker no longer has (CONNACK with session present = 0) redelivers nothing, so the journaled
packet ids are then dropped: a new message that reuses one must not be taken for the crashed one.
"""

from __future__ import annotations

import array
import hashlib
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ioc.store import connect, transaction

_MAGIC = b"IOCJ"
_HEADER = struct.Struct("=4sHH")  # magic, flags, number of packet ids that follow (uint16 each)
_ALONE = 1  # flag: the burst was one message (of any QoS), so a crash is pinned on it
_WAITING = 2  # flag: a sink had no room when it was handed over: a crash may be no message's fault
_EMPTY_COUNT = struct.pack("=H", 0)
_COUNT_OFFSET = 6
# The failpoint `mqtt.poison` fires only while a burst holding these bytes is handled (ioc/failpoints.py).
FAILPOINT_MARKER = b"IOC-FAILPOINT-POISON"
_MAX_IDS = 65535  # packet ids are 16-bit and distinct among unacknowledged messages
MIN_EXPIRY = 86_400.0  # seconds a ledger row is kept at least
MAX_ROWS = 100_000  # ledger rows kept at most (a crash charges at most one burst: ~256 rows)

_TABLE = """CREATE TABLE IF NOT EXISTS mqtt_poison (
    key BLOB PRIMARY KEY,
    source TEXT NOT NULL,
    crashes INTEGER NOT NULL,
    alone INTEGER NOT NULL,
    updated_at REAL NOT NULL
)"""


def message_key(source: str, payload: bytes) -> bytes:
    """A message's identity across redeliveries: blake2b-64 of its topic's source and its payload."""
    digest = hashlib.blake2b(source.encode("utf-8", "replace"), digest_size=8)
    digest.update(b"\0")
    digest.update(payload)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class InFlight:
    """A journal's content: the packet ids of the burst, whether it was one message, whether a sink was
    full when it was handed over."""

    ids: list[int] = field(default_factory=list)
    alone: bool = False
    waiting: bool = False


class InflightJournal:
    """The packet ids of the burst being handled, in a file that outlives a killed process.

    Layout: `IOCJ`, uint16 flags, a uint16 count, then `count` uint16 packet ids, in the host's byte order
    (the file never leaves the host). A shorter burst leaves stale ids behind its count; never read.

    The file is mapped (MAP_SHARED): a write is a store into the page cache, which a killed process leaves
    behind as surely as a `pwrite` (neither is fsynced: the journal guards against crashes, not power
    loss), at a fraction of a system call's cost. It is written twice per burst on the intake's hot path:
    with `pwrite` that was ~17 % of the MQTT thread's busy time in the live benchmark."""

    _SIZE = _HEADER.size + 2 * _MAX_IDS

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self._SIZE:
                os.ftruncate(fd, self._SIZE)  # zeros: an empty journal (no magic), or an old short one's tail
            self._map: mmap.mmap | None = mmap.mmap(fd, self._SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file
        self._dirty = True  # unknown until read or written: the first clear() writes

    def read(self) -> InFlight:
        """What a killed process was handling: the packet ids written and not cleared, and how."""
        data = self._require()
        magic, flags, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or count == 0:
            return InFlight()
        ids = array.array("H")
        ids.frombytes(data[_HEADER.size:_HEADER.size + 2 * count])
        return InFlight(list(ids), alone=bool(flags & _ALONE) and len(ids) == 1, waiting=bool(flags & _WAITING))

    def write(self, packet_ids: Sequence[int], *, alone: bool, waiting: bool = False) -> None:
        """Record the burst about to be handled (`alone`: it is one message; `waiting`: a sink has no
        room, so the hand-over may wait there). The ids go first and the header last, so a kill between
        the two leaves the previous (cleared) count, never a count over ids not yet written."""
        data = self._require()
        count = min(len(packet_ids), _MAX_IDS)
        ids = array.array("H", packet_ids[:count]).tobytes()
        data[_HEADER.size:_HEADER.size + len(ids)] = ids
        _HEADER.pack_into(data, 0, _MAGIC, (_ALONE if alone else 0) | (_WAITING if waiting else 0), count)
        self._dirty = True

    def clear(self) -> None:
        """The burst returned: nothing is in flight."""
        if self._dirty:
            self._require()[_COUNT_OFFSET:_COUNT_OFFSET + 2] = _EMPTY_COUNT
            self._dirty = False

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _require(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError(f"{self.path}: the journal is closed")
        return self._map


class PoisonLedger:
    """Crash counts by message key, in the `mqtt_poison` table of the daemon's store (SQLite)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db: sqlite3.Connection = connect(path)
        self._db.execute(_TABLE)
        self._clock = clock
        self._lock = threading.Lock()

    def charge(self, key: bytes, source: str, *, alone: bool) -> tuple[int, int]:
        """One more crash while `key` was being handled (`alone`: and nothing else); returns its crashes
        and how many of them were alone."""
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO mqtt_poison (key, source, crashes, alone, updated_at) VALUES (?, ?, 1, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET crashes = crashes + 1, alone = alone + excluded.alone, "
                "updated_at = excluded.updated_at",
                (key, source, int(alone), self._clock()))
            row = self._db.execute("SELECT crashes, alone FROM mqtt_poison WHERE key = ?", (key,)).fetchone()
        return int(row[0]), int(row[1])

    def clear(self, key: bytes) -> None:
        """`key` was handled and the process survived: it is not poison."""
        with self._lock:
            self._db.execute("DELETE FROM mqtt_poison WHERE key = ?", (key,))

    def crashes(self, key: bytes) -> int:
        with self._lock:
            row = self._db.execute("SELECT crashes FROM mqtt_poison WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def expire(self, max_age: float, max_rows: int = MAX_ROWS) -> int:
        """Forget rows not charged for `max_age` seconds, and the oldest beyond `max_rows`."""
        with self._lock, transaction(self._db):
            before = self._db.total_changes
            self._db.execute("DELETE FROM mqtt_poison WHERE updated_at < ?", (self._clock() - max_age,))
            self._db.execute(
                "DELETE FROM mqtt_poison WHERE key IN (SELECT key FROM mqtt_poison ORDER BY updated_at DESC "
                "LIMIT -1 OFFSET ?)", (max_rows,))
            return self._db.total_changes - before

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM mqtt_poison").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    key: bytes
    crashes: int  # times the process died while handling it, this one included
    poison: bool  # quarantine it: do not handle it again


class PoisonGuard:
    """The journal and the ledger together, as the MQTT connector uses them (see the module docstring).

    Not thread-safe by itself: the connector calls it under its burst lock (and `recover` before its
    threads start)."""

    def __init__(self, store_path: str | Path, *, name: str = "mqtt", max_deliveries: int = 3,
                 expiry: float = MIN_EXPIRY, clock: Callable[[], float] = time.time) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.max_deliveries = max_deliveries
        self.expiry = max(expiry, MIN_EXPIRY)
        self.journal = InflightJournal(f"{store_path}.{name}-inflight")
        self.ledger = PoisonLedger(store_path, clock=clock)
        # Packet ids that were in flight when the last process died, until their redelivery arrives.
        self.suspects: set[int] = set()
        self._alone = False  # whether that was a burst of one
        self._charge = True  # false when a sink was full then: the crash may be no message's fault

    def recover(self) -> int:
        """At start: take the dead process's journal as suspects; expire old ledger rows. Returns how many.

        The journal is not cleared here: if this process dies before the first burst, the next start
        finds the same suspects. The first burst overwrites it."""
        in_flight = self.journal.read()
        self.suspects = set(in_flight.ids)
        self._alone, self._charge = in_flight.alone, not in_flight.waiting
        self.ledger.expire(self.expiry)
        return len(self.suspects)

    def session(self, present: bool) -> None:
        """The broker answered CONNECT: without the old session nothing is redelivered."""
        if not present:
            self.suspects.clear()

    def take_suspect(self, packet_id: int) -> bool:
        """Whether this delivery is a suspect's redelivery (each packet id matches once)."""
        try:
            self.suspects.remove(packet_id)
        except KeyError:
            return False
        return True

    def judge(self, source: str, payload: bytes) -> Verdict:
        """A suspect arrived: count the crash it was in flight for, and say whether it is poison."""
        key = message_key(source, payload)
        if not self._charge:
            return Verdict(key, self.ledger.crashes(key), False)
        crashes, alone = self.ledger.charge(key, source, alone=self._alone)
        return Verdict(key, crashes, crashes >= self.max_deliveries and alone > 0)

    def close(self) -> None:
        """A clean stop: nothing is in flight."""
        try:
            self.journal.clear()
        finally:
            self.journal.close()
            self.ledger.close()
