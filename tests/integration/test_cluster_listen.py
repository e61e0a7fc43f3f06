"""LISTEN/NOTIFY on a real PostgreSQL (migration 0005, `ioc.cluster.listen`): a write to `alerts` or
`silences` by any connection is heard, a burst is heard as one, other tables say nothing, and after
PostgreSQL restarts the listener comes back and counts every table as changed (it heard nothing meanwhile)."""

from __future__ import annotations

import threading
import time

from ioc.cluster.listen import ChangeListener
from ioc.store import open_shared
from ioc.store.postgres import PostgresDatabase
from tests.postgres_server import Postgres
from tests.waiting import wait_until

SILENCE = ("INSERT INTO silences (id, matchers, starts_at, ends_at, comment, author, created_at, updated_at) "
           "VALUES (?, '[]', 0, 1, '', 'x', 0, 0)")


def test_writes_of_any_node_are_heard(url: str) -> None:
    db = open_shared(url)
    other = open_shared(url)
    assert isinstance(db, PostgresDatabase)
    heard: list[set[str]] = []
    lock = threading.Lock()

    def told(tables: set[str]) -> None:
        with lock:
            heard.append(tables)

    listener = ChangeListener(db, told)
    listener.start()
    try:
        time.sleep(0.5)  # LISTEN is in place once the thread has connected
        wait_until("listening", lambda: other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'").fetchone()[0] == 1, 30)
        other.execute(SILENCE, ("s1",))
        wait_until("the silence heard", lambda: heard == [{"silences"}], timeout=5)
        with other.transaction():  # a burst of statements: heard once
            for n in range(20):
                other.execute(SILENCE, (f"b{n}",))
        other.execute("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", ("c", 1))  # not listened to
        other.execute("DELETE FROM alerts WHERE id = ?", ("none",))
        wait_until("the burst and the alerts heard",
                   lambda: any("alerts" in tables for tables in heard), timeout=5)
        assert heard[0] == {"silences"} and len(heard) <= 3 and set().union(*heard) == {"silences", "alerts"}
    finally:
        listener.close()
        db.close()
        other.close()


def test_after_a_restart_of_postgresql_every_table_counts_as_changed(server: Postgres, url: str) -> None:
    db = open_shared(url)
    assert isinstance(db, PostgresDatabase)
    heard: list[set[str]] = []
    listener = ChangeListener(db, heard.append)
    listener.start()
    try:
        time.sleep(0.5)
        server.stop()
        server.start()
        wait_until("told after the restart", lambda: {"alerts", "silences"} in heard, timeout=30)
        assert listener.heard >= 1
        other = open_shared(url)
        heard.clear()
        other.execute(SILENCE, ("s2",))
        wait_until("listening again", lambda: {"silences"} in heard, timeout=10)
        other.close()
    finally:
        server.start()
        listener.close()
        db.close()
