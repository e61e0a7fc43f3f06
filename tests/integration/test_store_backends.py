"""The `Database` interface on both backends (a SQLite file, a real PostgreSQL): the same SQL gives the same
answers, values keep their types and precision, transactions are all or nothing, migrations run once even
when two connections race, and `ioc store migrate` / `status` work on each."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ioc.aggregators import DossierTracker, WorkCalendar
from ioc.areas import AreaRegistry
from ioc.envelope import DossierEvent
from ioc.kpis import Kpi
from ioc.store import StoreError, migrate, migration_status, open_database, open_shared, upsert
from ioc.store.migrations import LATEST, MIGRATIONS
from tests.servers import free_port


def test_values_keep_their_types_and_precision(store_url: str) -> None:
    db = open_shared(store_url, node="n1")
    blob = bytes(range(256))
    at = 1772413200.123456  # a REAL of 4 bytes (PostgreSQL's REAL) would keep 1772413184.0
    micro = 1772413200123456  # µs: beyond 32 bits
    db.execute(upsert("component_state", ("name", "data"), ("name",)), ("k", blob))
    assert bytes(db.execute("SELECT data FROM component_state WHERE name = ?", ("k",)).fetchone()[0]) == blob
    db.execute("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", ("x", micro))
    assert db.execute("SELECT clock_us FROM agg_clock WHERE name = ?", ("x",)).fetchone() == (micro,)
    db.execute("INSERT INTO silences (id, matchers, starts_at, ends_at, comment, author, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", ("s1", "[]", at, at + 1, "bảo trì 100%", "trực ban", at, at))
    row = db.execute("SELECT starts_at, comment, author FROM silences WHERE comment LIKE ?", ("%100%%",)).fetchone()
    assert row == (at, "bảo trì 100%", "trực ban")
    db.close()


def test_a_failed_transaction_leaves_nothing_and_the_connection_goes_on(store_url: str) -> None:
    db = open_shared(store_url)
    with pytest.raises(StoreError), db.transaction():
        db.execute("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", ("a", 1))
        db.execute("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", ("a", 2))  # the key again
    assert db.execute("SELECT count(*) FROM agg_clock").fetchone() == (0,)
    with db.transaction():
        db.executemany("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", [(f"c{n}", n) for n in range(2500)])
    assert db.execute("SELECT count(*), sum(clock_us) FROM agg_clock").fetchone() == (2500, sum(range(2500)))
    batches = list(db.batches("SELECT name FROM agg_clock WHERE clock_us >= ? ORDER BY clock_us", (500,),
                              size=1000))
    assert [len(batch) for batch in batches] == [1000, 1000]
    assert db.execute("DELETE FROM agg_clock WHERE clock_us BETWEEN ? AND ?", (0, 99)).rowcount == 100
    db.close()


def test_two_connections_migrating_at_once_apply_each_migration_once(store_url: str) -> None:
    connections = [open_database(store_url) for _ in range(4)]
    results: list[object] = []
    start = threading.Barrier(len(connections))

    def run(db: object) -> None:
        start.wait()
        try:
            results.append(len(migrate(db)))  # type: ignore[arg-type]
        except StoreError as error:
            results.append(error)

    threads = [threading.Thread(target=run, args=(db,)) for db in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [0, 0, 0, LATEST], results  # type: ignore[type-var]
    assert [state.applied_at is not None for state in migration_status(connections[0])] == [True] * LATEST
    for db in connections:
        db.close()


def test_ioc_store_migrate_and_status(store_url: str, tmp_path: Path) -> None:
    config = tmp_path / "ioc.toml"
    config.write_text(f'[store]\npath = "{tmp_path / "local.db"}"\nurl = "{store_url}"\n')

    def ioc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ioc.cli", "store", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)

    pending = ioc("status")
    assert pending.returncode == 0, pending.stderr
    assert pending.stdout.splitlines()[1:] == [f"{m.version:04d} {m.name:<12} pending" for m in MIGRATIONS]
    assert pending.stdout.splitlines()[1:3] == ["0001 initial      pending", "0002 nodes        pending"]
    applied = ioc("migrate")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[1].endswith("applied 0002 nodes")
    assert applied.stdout.splitlines()[-1].endswith(f"applied {LATEST:04d} {MIGRATIONS[-1].name}")
    assert ioc("migrate").stdout.strip().endswith(f"up to date (schema version {LATEST})")
    status = ioc("status").stdout.splitlines()
    assert all(" applied 20" in line for line in status[1:]) and len(status) == 1 + LATEST
    if store_url.startswith("postgresql"):  # the node-local file is not the shared store's
        assert not (tmp_path / "local.db").exists()


def test_an_unreachable_postgresql_is_one_line_and_exit_1() -> None:
    url = f"postgresql://ioc:hunter2@127.0.0.1:{free_port()}/ioc"
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "store", "status"], capture_output=True, text=True,
                            timeout=60, check=False, env={**os.environ, "IOC_STORE__URL": url})
    assert result.returncode == 1
    assert result.stderr.startswith("ioc: cannot connect to postgresql://ioc:***@127.0.0.1:")
    assert "hunter2" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_finished_dossier_is_looked_up_in_the_store_and_a_new_one_costs_no_query(store_url: str) -> None:
    monday = datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=7)))

    def event(dossier_id: str, status: str, minute: int) -> DossierEvent:
        at = monday + timedelta(minutes=minute)
        fields = {"id": f"{dossier_id}-{minute}", "source": "dvc-lamdong", "type": "dossier", "time": at,
                  "dossier_id": dossier_id, "procedure": "1.001612", "status": status, "received_at": monday,
                  "due_at": monday + timedelta(days=10), "channel": "online", "level": "commune",
                  "area": "22945"}
        if status == "done":
            fields["finished_at"] = at
        return DossierEvent.model_validate(fields)

    kpis: list[Kpi] = []
    tracker = DossierTracker(AreaRegistry.default(), WorkCalendar(set(), 1), store_url, kpis.append)
    tracker.observe(event("d1", "done", 0))
    tracker.persist()  # the row is only in the store now
    queries: list[str] = []
    real = tracker._rows.db.execute

    def counted(sql: str, params: Any = ()) -> Any:
        queries.append(sql)
        return real(sql, params)

    tracker._rows.db.execute = counted  # type: ignore[method-assign]
    tracker.observe(event("d1", "done", 0))  # a repeat: found in the store, counted once
    assert len(queries) == 1
    tracker.observe(event("d2", "received", 1))  # new: no lookup
    tracker.observe(event("d3", "done", 2))  # new and finished: no lookup either
    assert len(queries) == 1
    received = [k.value for k in kpis if (k.kpi, k.area) == ("kpi.dossier.online_share", "22945")]
    assert received[-1] == 100 and tracker._outcomes == {"applied": 4, "out_of_order": 0, "no_area": 0}
    assert [k.value for k in kpis if (k.kpi, k.area) == ("kpi.dossier.open", "22945")][-1] == 1
    tracker.close()
