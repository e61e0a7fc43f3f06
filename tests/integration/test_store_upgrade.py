"""A SQLite store made by the release before migrations upgrades in place: its alerts (one acknowledged, one
resolved), silence, audit log, tracker rows and component state are all there afterwards, and the store is
recorded at the latest schema. The old file is rebuilt from test_store_upgrade_v0.sql (its dump; the file
says how it was made)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ioc.aggregators import DossierTracker, StatusTracker, WorkCalendar
from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from ioc.areas import AreaRegistry
from ioc.kpis import Kpi
from ioc.store import load_state, migration_status, open_shared
from ioc.store.migrations import LATEST

DUMP = Path(__file__).with_name("test_store_upgrade_v0.sql")
VN = timezone(timedelta(hours=7))
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=VN)  # the old store's clock


def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "ioc.db"
    db = sqlite3.connect(path)
    db.executescript(DUMP.read_text(encoding="utf-8"))
    db.close()
    return path


def test_the_old_store_has_no_migrations_table(tmp_path: Path) -> None:
    tables = {row[0] for row in sqlite3.connect(old_store(tmp_path)).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "alerts" in tables and "schema_migrations" not in tables and "cluster_nodes" not in tables


def test_a_store_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    path = old_store(tmp_path)
    db = open_shared(f"sqlite:///{path}", node="ioc-a", version="test")  # what `ioc run` does at start
    assert [(state.version, state.applied_at is not None) for state in migration_status(db)] == [
        (version, True) for version in range(1, LATEST + 1)]
    assert load_state(db, "kpis.latest") == b"\x00old-state\xff"

    clock = MONDAY.timestamp() + 300
    manager = AlertManager(AlertStore(db, node="ioc-a"), clock=lambda: clock)
    [firing] = manager.active()
    assert firing.labels["area"] == "22945" and firing.state == "firing"
    assert firing.acknowledged is not None and firing.acknowledged.by == "truc-ban-1"
    assert [alert.labels["area"] for alert in manager.store.resolved_alerts()] == ["22918"]
    [silence] = manager.silences.list()
    assert silence.comment == "bảo trì" and silence.status(clock) == "active"
    old_audit = manager.store.audit_log()
    assert [entry.action for entry in old_audit] == ["silence.create", "alert.ack"]
    # New entries name the node; the old ones have none (the column came with migration 0002).
    manager.unack(firing.id, by="truc-ban-2")
    manager.close()
    nodes = sqlite3.connect(path).execute("SELECT action, node FROM alert_audit ORDER BY seq").fetchall()
    assert nodes == [("alert.ack", None), ("silence.create", None), ("alert.unack", "ioc-a")]

    kpis: list[Kpi] = []
    areas = AreaRegistry.default()
    dossiers = DossierTracker(areas, WorkCalendar(set(), 1), db, kpis.append)
    status = StatusTracker(areas, db, kpis.append)
    dossiers.advance(MONDAY.timestamp() + 60)
    status.advance(MONDAY.timestamp() + 60)
    latest = {(kpi.kpi, kpi.area): kpi.value for kpi in kpis}
    assert latest[("kpi.dossier.open", "22945")] == 2  # received + processing; the done one is finished
    assert latest[("kpi.dossier.on_time_rate", "22945")] == 100
    assert latest[("kpi.coverage.down", "22945")] == 1
    dossiers.close()
    status.close()
    db.close()
