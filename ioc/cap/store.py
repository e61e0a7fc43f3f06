"""The CAP messages published, in the daemon's SQLite store (table `cap_messages`): what the feed lists
and what later messages of the same alert refer to. Bounded: past `keep` messages the oldest go.

Thread-safe (one connection behind a lock): the alert manager's notifier chain adds from the evaluation
thread and from requests' threads; the feed reads from the HTTP server's.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioc.store import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    identifier TEXT NOT NULL UNIQUE,
    alert_id TEXT NOT NULL,
    msg_type TEXT NOT NULL,
    sent REAL NOT NULL,
    headline TEXT NOT NULL,
    digest TEXT NOT NULL,
    xml BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cap_messages_alert ON cap_messages (alert_id, seq);
"""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    identifier: str
    alert_id: str
    msg_type: str
    sent: float
    headline: str
    digest: str  # what the public sees of the alert (severity, headline, area): an Update when it changes
    xml: bytes


class CapStore:
    def __init__(self, path: str | Path | sqlite3.Connection, *, keep: int = 500) -> None:
        self._db = path if isinstance(path, sqlite3.Connection) else connect(path)
        self._db.executescript(_SCHEMA)
        self._keep = keep
        self._lock = threading.Lock()

    def add(self, message: StoredMessage) -> None:
        """Keep a message (its `seq` is assigned here), dropping the oldest beyond `keep`."""
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO cap_messages (identifier, alert_id, msg_type, sent, headline, digest, xml)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message.identifier, message.alert_id, message.msg_type, message.sent, message.headline,
                 message.digest, message.xml))
            self._db.execute("DELETE FROM cap_messages WHERE seq <= "
                             "(SELECT MAX(seq) FROM cap_messages) - ?", (self._keep,))

    def latest(self, limit: int | None = None) -> list[StoredMessage]:
        """The newest messages first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM cap_messages ORDER BY seq DESC LIMIT ?",
                                    (limit if limit is not None else self._keep,)).fetchall()
        return [_message(row) for row in rows]

    def get(self, identifier: str) -> StoredMessage | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM cap_messages WHERE identifier = ?",
                                   (identifier,)).fetchone()
        return _message(row) if row else None

    def of_alert(self, alert_id: str) -> list[StoredMessage]:
        """The messages published for one alert (episode), oldest first."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM cap_messages WHERE alert_id = ? ORDER BY seq",
                                    (alert_id,)).fetchall()
        return [_message(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = "seq, identifier, alert_id, msg_type, sent, headline, digest, xml"


def _message(row: tuple[Any, ...]) -> StoredMessage:
    seq, identifier, alert_id, msg_type, sent, headline, digest, xml = row
    return StoredMessage(int(seq), str(identifier), str(alert_id), str(msg_type), float(sent), str(headline),
                         str(digest), bytes(xml))
