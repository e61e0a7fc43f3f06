"""PostgreSQL stops under the shared state's stores and comes back: nothing waits on it, what could not be
written is written once it answers, and every connection comes back by itself.

- the trackers go on counting (KPIs still emitted) and write their buffered rows after the outage;
- the alert manager still tells its notifiers of a change it could not store, writes the alert's row when
  PostgreSQL is back (its tick retries), and refuses an operator's ack meanwhile (StoreError, nothing told);
- notifications delivered during the outage leave the outbox once it is over (not again after a restart);
- a Database answers StoreError while the server is down, then works again with no reopening.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from ioc.rules.updates import AlertUpdate

from ioc.aggregators import DossierTracker, StatusTracker, WorkCalendar
from ioc.alerts.alert import Alert
from ioc.alerts.manager import AlertManager
from ioc.alerts.outbox import Outbox
from ioc.alerts.store import AlertStore, OutboxRow
from ioc.areas import AreaRegistry
from ioc.envelope import DossierEvent, StatusEvent
from ioc.kpis import Kpi
from ioc.store import StoreError, open_database, open_shared
from tests.postgres_server import Postgres
from tests.waiting import wait_until

VN = timezone(timedelta(hours=7))
MONDAY = datetime(2026, 3, 2, 8, 0, tzinfo=VN)
AREAS = AreaRegistry.default()


def status(entity: str, state: str, minute: int) -> StatusEvent:
    return StatusEvent.model_validate({"id": f"{entity}-{minute}", "source": "viettel-ran", "type": "status",
                                       "time": MONDAY + timedelta(minutes=minute), "area": "22945",
                                       "entity": entity, "state": state})


def dossier(dossier_id: str, minute: int) -> DossierEvent:
    at = MONDAY + timedelta(minutes=minute)
    return DossierEvent.model_validate({
        "id": f"{dossier_id}-{minute}", "source": "dvc-lamdong", "type": "dossier", "time": at,
        "dossier_id": dossier_id, "procedure": "1.001612", "status": "received", "received_at": at,
        "due_at": at + timedelta(days=10), "channel": "online", "level": "commune", "area": "22945"})


def test_a_database_fails_while_postgresql_is_down_and_reconnects_by_itself(server: Postgres, url: str) -> None:
    db = open_shared(url)
    db.execute("INSERT INTO agg_clock (name, clock_us) VALUES (?, ?)", ("before", 1))
    server.stop()
    with pytest.raises(StoreError):
        db.execute("SELECT count(*) FROM agg_clock")
    with pytest.raises(StoreError, match="cannot connect"):
        db.execute("SELECT count(*) FROM agg_clock")  # and again: a clean error, not a hang
    server.start()
    assert db.execute("SELECT count(*) FROM agg_clock").fetchone() == (1,)
    server.kill()  # a crash this time
    with pytest.raises(StoreError):
        db.execute("SELECT 1")
    server.start()
    assert db.execute("SELECT name FROM agg_clock").fetchall() == [("before",)]
    db.close()


def test_the_trackers_count_through_an_outage_and_write_their_rows_after_it(server: Postgres, url: str) -> None:
    kpis: list[Kpi] = []
    latest = lambda kpi, area: [k.value for k in kpis if (k.kpi, k.area) == (kpi, area)][-1]
    entities = StatusTracker(AREAS, url, kpis.append)
    dossiers = DossierTracker(AREAS, WorkCalendar(set(), 1), url, kpis.append)
    entities.observe(status("cell-1", "down", 0))
    dossiers.observe(dossier("d1", 0))
    entities.persist()
    dossiers.persist()

    server.stop()
    entities.observe(status("cell-2", "down", 1))
    dossiers.observe(dossier("d2", 1))
    for tracker in (entities, dossiers):
        tracker.advance(MONDAY.timestamp() + 120)  # tries to write, fails, keeps the rows; still emits
    assert latest("kpi.coverage.down", "22945") == 2 and latest("kpi.dossier.open", "22945") == 2
    entities.observe(status("cell-3", "down", 2))  # while the store is known away: no attempt, no wait
    server.start()

    check = open_database(url)
    count = lambda table: check.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def written() -> bool:
        entities.advance(MONDAY.timestamp() + 180)
        dossiers.advance(MONDAY.timestamp() + 180)
        return count("agg_entities") == 3 and count("agg_dossiers") == 2

    wait_until("the buffered rows written", written, 30)
    entities.close()
    dossiers.close()
    again: list[Kpi] = []
    restarted = StatusTracker(AREAS, url, again.append)
    restarted.advance(MONDAY.timestamp() + 240)
    assert [k.value for k in again if (k.kpi, k.area) == ("kpi.coverage.down", "22945")] == [3]
    restarted.close()
    check.close()


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.got: list[tuple[Alert, str]] = []

    def notify(self, alert: Alert, change: str) -> None:
        self.got.append((alert, change))


def fire(area: str, at: float) -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state="firing",
                       summary=f"AQI {area}", value=180.0, at=at)


def test_alerts_are_told_during_an_outage_and_stored_after_it(server: Postgres, url: str) -> None:
    recorder = Recorder()
    manager = AlertManager(AlertStore(url, node="ioc-a"), notifiers=[recorder])
    first = manager.apply(fire("22945", time.time()))
    assert first is not None

    server.stop()
    second = manager.apply(fire("22918", time.time()))
    assert second is not None and [(a.labels["area"], c) for a, c in recorder.got] == [
        ("22945", "firing"), ("22918", "firing")]  # told at once, store or no store
    with pytest.raises(StoreError):
        manager.ack(first.id, by="truc-ban-1")  # an operator's action is refused, not half done
    assert manager.get(first.id).acknowledged is None and len(recorder.got) == 2
    server.start()

    check = AlertStore(url)
    wait_until("the alert stored after the outage",
               lambda: (manager.tick(), check.get_alert(second.id))[1], 30)
    manager.ack(first.id, by="truc-ban-1")
    stored = check.get_alert(first.id)
    assert stored is not None and stored.acknowledged is not None and stored.acknowledged.by == "truc-ban-1"
    assert [(entry.action, entry.actor) for entry in check.audit_log(target=first.id)] == [
        ("alert.ack", "truc-ban-1")]
    manager.close()
    check.close()


def test_delivered_notifications_leave_the_outbox_after_an_outage(server: Postgres, url: str) -> None:
    store = AlertStore(url)
    store.commit([], [OutboxRow(seq, "webhook:a", f"n{seq}", "firing", b"{}") for seq in (1, 2, 3)])
    outbox = Outbox(store)
    server.stop()
    outbox.settle(1, now=True)  # delivered while PostgreSQL is away: its row cannot be removed yet
    assert outbox.errors == 1
    server.start()
    outbox.settle(2, now=True)  # the next settlement takes the one left behind
    assert [row.seq for row in store.outbox()] == [3]
    server.stop()
    outbox.settle(3, now=True)
    server.start()
    outbox.close()  # and closing does too
    assert store.outbox() == []
    store.close()
