"""The store package on SQLite (no server): targets, the portable SQL helpers, migrations, component state,
the write-behind outage, and the `[store]` / `[cluster]` config. Both backends: tests/integration/test_store*."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ioc.config import load_settings
from ioc.errors import ConfigError
from ioc.store import (
    StoreError,
    connect,
    load_state,
    migrate,
    migration_status,
    open_database,
    open_shared,
    save_state,
    upsert,
)
from ioc.store.database import sqlite_path
from ioc.store.migrations import LATEST, MIGRATIONS
from ioc.store.outage import Outage
from ioc.store.outage import metrics as outage_metrics
from ioc.store.postgres import _pg


def test_upsert_inserts_then_replaces_by_key(tmp_path: Path) -> None:
    sql = upsert("t", ("k", "a", "b"), ("k",))
    assert sql == ("INSERT INTO t (k, a, b) VALUES (?, ?, ?) ON CONFLICT (k) DO UPDATE SET a = excluded.a, "
                   "b = excluded.b")
    db = open_database(tmp_path / "s.db")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, a INTEGER, b TEXT)")
    db.execute(sql, ("x", 1, "one"))
    db.executemany(sql, [("x", 2, "two"), ("y", 3, "three")])
    assert db.execute("SELECT k, a, b FROM t ORDER BY k").fetchall() == [("x", 2, "two"), ("y", 3, "three")]
    assert upsert("t", ("k",), ("k",)).endswith("ON CONFLICT (k) DO NOTHING")


def test_placeholders_become_psycopgs_and_a_percent_stays_itself() -> None:
    assert _pg("SELECT * FROM t WHERE a = ? AND b LIKE 'x%'") == "SELECT * FROM t WHERE a = %s AND b LIKE 'x%%'"


def test_targets_a_path_a_url_memory_and_another_connection(tmp_path: Path) -> None:
    first = open_database(f"sqlite:///{tmp_path / 'a.db'}")
    assert first.dialect == "sqlite" and first.url == f"sqlite:///{tmp_path / 'a.db'}"
    first.execute("CREATE TABLE t (v TEXT)")
    first.execute("INSERT INTO t VALUES (?)", ("Đà Lạt",))
    again = open_database(first)  # another connection to the same file
    assert again is not first and again.execute("SELECT v FROM t").fetchone() == ("Đà Lạt",)
    assert open_database(tmp_path / "a.db").execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert open_database(":memory:").execute("SELECT 1").fetchone() == (1,)
    assert sqlite_path("sqlite:////var/lib/ioc/ioc.db") == "/var/lib/ioc/ioc.db"
    assert sqlite_path("sqlite:///var/ioc.db") == "var/ioc.db"
    with pytest.raises(StoreError, match="not sqlite:/// or postgresql://"):
        open_database("mysql://db/ioc")


def test_errors_are_store_errors_and_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = open_database(tmp_path / "s.db")
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    with pytest.raises(StoreError), db.transaction():
        db.execute("INSERT INTO t VALUES (?)", ("a",))
        db.execute("INSERT INTO t VALUES (?)", ("a",))  # the key again
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with pytest.raises(StoreError):
        db.execute("SELECT nothing FROM nowhere")
    assert isinstance(StoreError("x"), Exception)


def test_batches_read_a_query_in_pieces(tmp_path: Path) -> None:
    db = open_database(tmp_path / "s.db")
    db.execute("CREATE TABLE t (n INTEGER)")
    db.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(25)])
    sizes = [len(batch) for batch in db.batches("SELECT n FROM t WHERE n >= ?", (0,), size=10)]
    assert sizes == [10, 10, 5]


def test_migrations_apply_once_in_order_and_say_so(tmp_path: Path) -> None:
    db = open_database(tmp_path / "s.db")
    assert [state.applied_at for state in migration_status(db)] == [None] * len(MIGRATIONS)
    applied = migrate(db, clock=1000.0)
    assert [migration.version for migration in applied] == list(range(1, LATEST + 1))
    assert migrate(db) == []  # up to date
    states = migration_status(open_database(tmp_path / "s.db"))
    assert [(state.version, state.name, state.applied_at) for state in states] == [
        (1, "initial", 1000.0), (2, "nodes", 1000.0), (3, "alert_summary_en", 1000.0), (4, "cluster_lease", 1000.0),
        (5, "notify_changes", 1000.0), (6, "alert_muting", 1000.0)]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alerts", "alert_outbox", "alert_audit", "silences", "agg_dossiers", "agg_clock", "agg_entities",
            "component_state", "cluster_nodes", "cluster_lease", "schema_migrations"} <= tables


def test_a_schema_newer_than_this_release_is_refused(tmp_path: Path) -> None:
    db = open_database(tmp_path / "s.db")
    migrate(db)
    db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
               (LATEST + 1, "from-the-future", 0.0))
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}, newer than this release's {LATEST}"):
        migrate(db)
    assert migration_status(db)[-1].name == "(unknown: a newer release)"


def test_every_migration_is_written_for_both_dialects() -> None:
    for migration in MIGRATIONS:
        sqlite, postgres = migration.statements("sqlite"), migration.statements("postgresql")
        if migration.dialects == ("postgresql",):  # PostgreSQL's own (LISTEN/NOTIFY triggers)
            assert sqlite == [] and len(postgres) > 0
            continue
        assert len(sqlite) == len(postgres) > 0
        assert not any("{" in statement for statement in sqlite + postgres)  # every token known
        assert not any(word in statement.upper() for statement in postgres
                       for word in ("WITHOUT ROWID", "AUTOINCREMENT", " BLOB", " REAL"))
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_component_state_on_a_database_and_on_a_bare_connection(tmp_path: Path) -> None:
    db = open_shared(f"sqlite:///{tmp_path / 's.db'}", node="node-a", version="9.9")
    assert load_state(db, "rules.engine") is None
    save_state(db, "rules.engine", b"\x00one")
    save_state(db, "rules.engine", b"\x00two")
    assert load_state(db, "rules.engine") == b"\x00two"
    assert db.execute("SELECT node, version FROM cluster_nodes").fetchall() == [("node-a", "9.9")]
    bare = connect(":memory:")  # a bench's or a node-local file: the table is made on first use
    save_state(bare, "x", b"1")
    assert load_state(bare, "x") == b"1"
    assert isinstance(bare, sqlite3.Connection)


def test_an_outage_holds_writes_for_a_while_and_tells_once(capsys: pytest.CaptureFixture[str]) -> None:
    now = [0.0]
    outage = Outage("dossiers", retry=2.0, clock=lambda: now[0])
    assert outage.ready() and not outage.down
    outage.failed(StoreError("connection refused"), buffered=10)
    outage.failed(StoreError("connection refused"), buffered=11)
    assert outage.down and outage.errors == 2 and not outage.ready()
    now[0] = 2.5
    assert outage.ready()
    outage.recovered(written=11)
    assert not outage.down and outage.ready()
    logged = capsys.readouterr().out
    assert logged.count("store.write_failed") == 1 and logged.count("store.write_recovered") == 1
    samples = {(family.name, sample.labels.get("component")): sample.value
               for family in outage_metrics() for sample in family.samples}
    assert samples[("ioc_store_outage", "dossiers")] == 0 and samples[("ioc_store_write_failures", "dossiers")] == 2
    outage.failed(StoreError("again"), buffered=1)
    assert {sample.value for family in outage_metrics() if family.name == "ioc_store_outage"
            for sample in family.samples if sample.labels["component"] == "dossiers"} == {1.0}


# --- config -----------------------------------------------------------------------------------------------

def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "ioc.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    return raised.value.problems


def test_store_url_defaults_to_the_sqlite_file_and_takes_postgresql(tmp_path: Path) -> None:
    settings = load_settings(None)
    assert settings.store.database_url() == "sqlite:///var/ioc.db" and settings.store.password() == ""
    assert settings.cluster.node_name() == os.uname().nodename
    secret = tmp_path / "pg-password"
    secret.write_text("s3cret\n")
    path = tmp_path / "ioc.toml"
    path.write_text(f'[store]\nurl = "postgresql://ioc@db.example:5432/ioc"\npassword_file = "{secret}"\n'
                    '[cluster]\nnode = "ioc-a"\n')
    settings = load_settings(path)
    assert settings.store.database_url() == "postgresql://ioc@db.example:5432/ioc"
    assert settings.store.password() == "s3cret" and settings.cluster.node_name() == "ioc-a"
    for url in ("sqlite:////var/lib/ioc/ioc.db", "postgresql://[::1]:5432/ioc", "postgres://db/ioc?sslmode=require",
                "postgresql://ioc:p%40ss@db:5432/ioc"):
        path.write_text(f'[store]\nurl = "{url}"\n')
        assert load_settings(path).store.url == url


@pytest.mark.parametrize(("text", "expected"), [
    ('[store]\nurl = "mysql://db/ioc"',
     "ioc.toml:2: store.url: 'mysql://db/ioc': expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ('[store]\nurl = "postgresql://ioc:hunter2@db:54x/ioc"',
     "ioc.toml:2: store.url: 'postgresql://ioc:***@db:54x/ioc': expected postgresql://USER@HOST:PORT/DB"),
    ('[store]\nurl = "postgresql://db:5432"', "expected postgresql://USER@HOST:PORT/DB"),
    ('[store]\nurl = "sqlite://relative.db"', "expected sqlite:///PATH"),
    ('[store]\npassword_file = "/nonexistent/pg"', "cannot read /nonexistent/pg"),
    ('[cluster]\nnode = "a b"', "ioc.toml:2: cluster.node: String should match pattern"),
])
def test_bad_store_and_cluster_keys_are_config_errors(tmp_path: Path, text: str, expected: str) -> None:
    (problem,) = _problems(tmp_path, text)
    assert expected in problem and "hunter2" not in problem


def test_store_status_of_a_file_not_made_yet_creates_nothing(tmp_path: Path) -> None:
    from ioc.store.cli import status_lines

    url = f"sqlite:///{tmp_path / 'var' / 'ioc.db'}"
    lines = status_lines(url)
    assert lines[0].endswith("(sqlite, not created yet)") and all(line.endswith("pending") for line in lines[1:])
    assert len(lines) == 1 + LATEST and not (tmp_path / "var").exists()
