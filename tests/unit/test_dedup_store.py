"""The dedup keys' own SQLite file (`ioc.ingest.dedup.open_dedup_store`): kept across a restart, apart from
the store's file (whose write lock the alert path needs), and moved over from it once after an upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ioc.ingest.dedup import DedupIndex, dedup_key, dedup_path, open_dedup_store
from ioc.store import connect

NOW = 1_800_000_000.0


def index(connection: sqlite3.Connection, now: float = NOW) -> DedupIndex:
    return DedupIndex(connection, window=3600, max_keys=1000, clock=lambda: now)


def tables(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_the_keys_file_is_beside_the_store() -> None:
    assert dedup_path("var/ioc.db") == "var/ioc.dedup.db"
    assert dedup_path(Path("/srv/state")) == "/srv/state.dedup"
    assert dedup_path(":memory:") == ":memory:"


def test_durable_keys_survive_a_restart_in_their_own_file(tmp_path: Path) -> None:
    store = tmp_path / "ioc.db"
    connect(store).close()  # the daemon's store exists (its other tables are not the keys' business)
    first = index(open_dedup_store(store))
    assert not first.seen_before(dedup_key("qtmt-aqi", "a"))
    assert not first.seen_before(dedup_key("qtmt-aqi", "b"))
    first.mark_durable([dedup_key("qtmt-aqi", "a")])  # "b" never became durable: the broker sends it again
    assert first.persist() == 1

    again = index(open_dedup_store(store), now=NOW + 60)
    assert again.seen_before(dedup_key("qtmt-aqi", "a"))
    assert not again.seen_before(dedup_key("qtmt-aqi", "b"))
    assert "dedup" in tables(tmp_path / "ioc.dedup.db")
    assert "dedup" not in tables(store)


def test_keys_of_an_older_release_move_out_of_the_store_file(tmp_path: Path) -> None:
    store = tmp_path / "ioc.db"
    old = connect(store)  # as releases before this one kept them: a `dedup` table in the store's file
    old.executescript("CREATE TABLE dedup (key TEXT PRIMARY KEY, seen REAL NOT NULL) WITHOUT ROWID;"
                      "CREATE INDEX dedup_seen ON dedup (seen);"
                      "CREATE TABLE kept (x INTEGER);")
    old.executemany("INSERT INTO dedup VALUES (?, ?)", [(dedup_key("qtmt-aqi", "old"), NOW - 10),
                                                         (dedup_key("qtmt-aqi", "stale"), NOW - 7200)])
    old.close()

    keys = index(open_dedup_store(store))
    assert keys.seen_before(dedup_key("qtmt-aqi", "old"))
    assert not keys.seen_before(dedup_key("qtmt-aqi", "stale"))  # older than the window: forgotten
    assert tables(store) == {"kept"}  # the table and its index gone, the rest of the store untouched
    keys.persist()  # drops the expired key from the new file too

    moved_again = open_dedup_store(store)  # a second start finds nothing to move
    assert [key for (key,) in moved_again.execute("SELECT key FROM dedup")] == [dedup_key("qtmt-aqi", "old")]


def test_a_fresh_store_gets_a_keys_file_and_nothing_else(tmp_path: Path) -> None:
    store = tmp_path / "new" / "ioc.db"
    keys = index(open_dedup_store(store))
    assert not keys.seen_before(dedup_key("s", "1"))
    assert (tmp_path / "new" / "ioc.dedup.db").exists()
    assert not store.exists()  # the daemon's own store creates its file; the keys do not
