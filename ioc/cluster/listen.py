"""Hearing the other nodes' writes: PostgreSQL LISTEN/NOTIFY on `ioc_changes` (CONTRACT §8).

Triggers on `alerts` and `silences` (migration 0005) notify at the commit of every statement that wrote
them, with the table's name. A thread of its own waits on a connection of its own and tells `on_change`
which tables changed, a burst gathered for GATHER seconds first (an alert storm's commits: one refresh).
While the connection is lost nothing is heard, so after it comes back every table counts as changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog

from ioc.store import StoreError
from ioc.store.postgres import PostgresDatabase

log = structlog.get_logger("ioc.cluster")

CHANNEL = "ioc_changes"
TABLES = frozenset({"alerts", "silences"})
GATHER = 0.02  # seconds a burst of notifications is gathered for
RETRY = 2.0  # seconds between attempts to listen again


class ChangeListener:
    """`on_change(tables)` for the tables written by any node (this one included), from its own thread."""

    def __init__(self, database: PostgresDatabase, on_change: Callable[[set[str]], None]) -> None:
        self._database = database
        self._on_change = on_change
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="cluster-listen", daemon=True)
        self.heard = 0
        self.listening = False  # connected and LISTENing now: every write of another node is heard

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        lost = False
        while not self._stop.is_set():
            try:
                self._conn = self._database.listening(CHANNEL)
            except StoreError as error:
                if not lost:
                    log.warning("cluster.listen_failed", error=str(error), effect=f"tried again every {RETRY:g}s")
                lost = True
                self._stop.wait(RETRY)
                continue
            self.listening = True
            if lost:  # what was written meanwhile was not heard
                log.info("cluster.listening_again")
                self._tell(set(TABLES))
            try:
                self._listen(self._conn)
            except psycopg.Error as error:
                if not self._stop.is_set():
                    log.warning("cluster.listen_lost", error=str(error).strip().splitlines()[0] if str(error) else "")
                lost = True
            finally:
                self.listening = False
                self._conn.close()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            tables = {note.payload for note in conn.notifies(timeout=0.5, stop_after=1)}
            if not tables:
                continue
            deadline = time.monotonic() + GATHER
            while (left := deadline - time.monotonic()) > 0:
                tables |= {note.payload for note in conn.notifies(timeout=left)}
            self._tell(tables & TABLES)

    def _tell(self, tables: set[str]) -> None:
        if not tables:
            return
        self.heard += 1
        try:
            self._on_change(tables)
        except StoreError as error:  # the store went away meanwhile: the next notification or sync catches up
            log.warning("cluster.refresh_failed", error=str(error))
        except Exception as error:  # noqa: BLE001 - a listener's bug must not stop the hearing
            log.error("cluster.refresh_crashed", error=repr(error))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
