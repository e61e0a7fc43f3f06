"""Two alert managers on one real PostgreSQL, one leading (CONTRACT §8): the follower records and sends
nothing of the rules' updates and takes its view from the store; an ack made on the follower is stored and
notified once, by the leader; a new leader takes the outbox over and sends what the old one left with the
same notification ids; a leader's row it could not store is written if it leads again in the same term."""

from __future__ import annotations

from ioc.rules.updates import AlertUpdate

from ioc.alerts.manager import AlertManager
from ioc.alerts.store import AlertStore
from tests.doubles import RecordingHook
from tests.postgres_server import Postgres


class Flag:
    def __init__(self, value: bool) -> None:
        self.value = value

    def __call__(self) -> bool:
        return self.value


def fire(area: str, at: float) -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state="firing",
                       summary=f"AQI {area}", value=180.0, at=at)


def test_the_follower_records_nothing_and_an_ack_on_it_is_notified_once_by_the_leader(url: str) -> None:
    a_hook, b_hook = RecordingHook(), RecordingHook()
    a = AlertManager(AlertStore(url, node="a"), notifiers=[a_hook], leader=Flag(True))
    b = AlertManager(AlertStore(url, node="b"), notifiers=[b_hook], leader=Flag(False))
    try:
        fired = a.apply(fire("22945", 100.0))
        assert fired is not None
        assert b.apply(fire("22945", 100.0)) is None and b.active() == []
        b.sync()
        assert [alert.id for alert in b.active()] == [fired.id]
        b.ack(fired.id, "truc-ban-2")
        assert b_hook.got == []  # the follower sends nothing
        a.sync()
        assert a.get(fired.id).acknowledged is not None and a.get(fired.id).acknowledged.by == "truc-ban-2"  # type: ignore[union-attr]
        a.sync()  # heard twice: notified once
        assert [(note.alert.id, note.change) for note in a_hook.got] == [(fired.id, "firing"), (fired.id, "acknowledged")]
    finally:
        a.close()
        b.close()


def test_a_new_leader_sends_again_what_the_old_one_left_under_the_same_ids(url: str) -> None:
    a_hook, b_hook = RecordingHook(hold=True), RecordingHook()
    a_leads, b_leads = Flag(True), Flag(False)
    a = AlertManager(AlertStore(url, node="a"), notifiers=[a_hook], leader=a_leads)
    b = AlertManager(AlertStore(url, node="b"), notifiers=[b_hook], leader=b_leads)
    try:
        fired = a.apply(fire("22945", 100.0))
        assert fired is not None and [note.change for note in a_hook.got] == ["firing"]
        a_leads.value, b_leads.value = False, True  # a dies with its delivery under way
        b.promote(2)
        assert [(note.alert.id, note.change, note.id) for note in b_hook.got] == [
            (fired.id, "firing", a_hook.got[0].id)]
        assert b_hook.got[0].seq < 2 << 40  # the old leader's row
        assert [alert.id for alert in b.active()] == [fired.id]
        b.apply(AlertUpdate(rule="aqi-bad", labels={"area": "22945"}, severity="critical", state="resolved",
                            summary="AQI 22945", value=50.0, at=200.0, fingerprint=fired.fingerprint))
        assert [(note.change, note.seq >= 2 << 40) for note in b_hook.got[1:]] == [("resolved", True)]
    finally:
        a.close()
        b.close()


def test_rows_a_leader_could_not_store_are_written_when_it_leads_again_in_the_same_term(
        server: Postgres, url: str) -> None:
    leads = Flag(True)
    hook = RecordingHook()
    a = AlertManager(AlertStore(url, node="a"), notifiers=[hook], leader=leads)
    try:
        a.promote(1)
        server.stop()
        fired = a.apply(fire("22918", 100.0))  # told, not stored
        assert fired is not None and [note.change for note in hook.got] == ["firing"]
        leads.value = False  # its lease lapsed
        a.tick()
        server.start()
        leads.value = True
        a.promote(1)  # the same term: nobody led meanwhile
        assert [alert.id for alert in a.store.active_alerts()] == [fired.id]
        assert [note.change for note in hook.got] == ["firing"]  # not told again
    finally:
        server.start()
        a.close()
