"""Alert ids and notification ids are derived, not drawn (`ioc.alerts.outbox`, issue 11): two nodes that
evaluated the same events give one episode one id and one change one notification id; distinct changes,
episodes and acknowledgements get distinct ids; a new episode beginning at the very time of a kept earlier
one gets an id of its own, the earlier one intact. On SQLite, one node, as on PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ioc.rules.updates import AlertUpdate

from ioc.alerts.alert import Acknowledgement, Alert
from ioc.alerts.manager import AlertManager
from ioc.alerts.outbox import alert_id, notification_id
from ioc.alerts.store import AlertStore
from tests.doubles import RecordingHook

BASE = Alert(id="a1", fingerprint="f1", rule="aqi-bad", severity="critical", state="firing",
             labels={"area": "22945"}, summary="AQI", value=180.0, started_at=100.0, fired_at=100.0,
             updated_at=10.0)


def update(state: str, at: float, since: float | None = None, area: str = "22945") -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state=state,  # type: ignore[arg-type]
                       summary="AQI", value=180.0, at=at, since=since)


def test_ids_are_digests_of_what_every_node_agrees_on() -> None:
    assert alert_id("f1", 100.0) == alert_id("f1", 100.0) != alert_id("f1", 100.5) != alert_id("f2", 100.5)
    assert alert_id("f1", 100.0, 1) not in {alert_id("f1", 100.0), alert_id("f1", 100.0, 2)}
    assert len(alert_id("f1", 100.0)) == 32
    changes = ["pending", "firing", "resolved"]
    assert len({notification_id(BASE, change) for change in changes}) == 3  # type: ignore[arg-type]
    assert notification_id(BASE, "firing") == notification_id(replace(BASE, updated_at=99.0, value=1.0), "firing")
    assert notification_id(BASE, "firing") != notification_id(replace(BASE, id="a2"), "firing")
    acked = replace(BASE, acknowledged=Acknowledgement("truc-ban", 20.0))
    again = replace(BASE, acknowledged=Acknowledgement("truc-ban", 40.0))
    other = replace(BASE, acknowledged=Acknowledgement("so-tnmt", 20.0))
    assert len({notification_id(alert, "acknowledged") for alert in (acked, again, other)}) == 3
    assert notification_id(acked, "acknowledged") == notification_id(replace(acked, updated_at=77.0), "acknowledged")
    assert notification_id(replace(BASE, updated_at=30.0), "unacknowledged") != notification_id(
        replace(BASE, updated_at=50.0), "unacknowledged")


def test_two_nodes_give_one_episode_and_its_changes_the_same_ids(tmp_path: Path) -> None:
    told: list[list[tuple[str, str, str]]] = []
    for name in ("a", "b"):
        hook = RecordingHook(hold=True)
        manager = AlertManager(AlertStore(tmp_path / f"{name}.db"), notifiers=[hook])
        manager.apply(update("pending", 100.0, since=100.0))
        manager.apply(update("firing", 400.0, since=100.0))
        manager.apply(update("resolved", 500.0))
        manager.close()
        told.append([(note.alert.id, note.change, note.id) for note in hook.got])
    assert told[0] == told[1] and [change for _, change, _ in told[0]] == ["pending", "firing", "resolved"]
    assert {alert for alert, _, _ in told[0]} == {alert_id(update("pending", 0).fingerprint, 100.0)}


def test_a_node_that_saw_the_episode_begin_and_one_that_records_it_firing_agree(tmp_path: Path) -> None:
    """A new leader records the engine's firing group, reported with when its episode began (`since`)."""
    a = AlertManager(AlertStore(tmp_path / "a.db"))
    b = AlertManager(AlertStore(tmp_path / "b.db"))
    a.apply(update("pending", 100.0, since=100.0))
    fired = a.apply(update("firing", 400.0, since=100.0))
    recorded = b.apply(update("firing", 400.0, since=100.0))
    assert fired is not None and recorded is not None
    assert recorded.id == fired.id and recorded.started_at == 100.0 and recorded.fired_at == 400.0
    a.close()
    b.close()


def test_an_episode_beginning_when_a_kept_one_began_gets_an_id_of_its_own(tmp_path: Path) -> None:
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"))
    first = manager.apply(update("firing", 100.0, since=100.0))
    manager.apply(update("resolved", 200.0))
    # A late event (stamped like the first one) begins the next episode at the very same time.
    second = manager.apply(update("firing", 100.0, since=100.0))
    manager.apply(update("resolved", 300.0))
    third = manager.apply(update("firing", 100.0, since=100.0))
    assert first is not None and second is not None and third is not None
    assert len({first.id, second.id, third.id}) == 3
    assert manager.get(first.id).resolved_at == 200.0 and manager.get(second.id).resolved_at == 300.0
    assert manager.get(third.id).state == "firing"
    manager.close()


def test_an_update_without_since_starts_its_episode_at_its_time(tmp_path: Path) -> None:
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"))
    alert = manager.apply(update("pending", 100.0))
    assert alert is not None and alert.started_at == 100.0 and alert.id == alert_id(alert.fingerprint, 100.0)
    manager.close()


def test_an_id_is_looked_up_only_for_an_episode_not_beginning_after_every_kept_one(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "ioc.db")
    manager = AlertManager(store)
    lookups: list[str] = []
    get_alert = store.get_alert
    store.get_alert = lambda alert_id: lookups.append(alert_id) or get_alert(alert_id)  # type: ignore[method-assign]
    for area in ("1", "2", "3"):  # a storm: one event time, many groups
        manager.apply(update("firing", 100.0, since=100.0, area=area))
    manager.apply(update("firing", 150.0, since=150.0, area="4"))
    manager.apply(update("resolved", 200.0, area="1"))
    manager.apply(update("firing", 250.0, since=250.0, area="1"))  # time moved on: the next episode
    assert lookups == []
    manager.apply(update("firing", 120.0, since=120.0, area="5"))  # a late event: looked up, not taken
    assert len(lookups) == 1
    manager.close()
    # After a restart the kept episodes' starts are read again: a late episode of area 1 at 100 is salted.
    restarted = AlertManager(AlertStore(tmp_path / "ioc.db"))
    restarted.apply(update("resolved", 300.0, area="1"))
    late = restarted.apply(update("firing", 100.0, since=100.0, area="1"))
    assert late is not None and late.id != alert_id(late.fingerprint, 100.0)
    assert late.id == alert_id(late.fingerprint, 100.0, 1)
    restarted.close()
