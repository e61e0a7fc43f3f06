"""An operator's change made on a follower is told exactly once, even if the leader dies before it hears of
it (CONTRACT §8, issue 11), on a real PostgreSQL: the follower writes the change's outbox rows with the
alert in one transaction (numbered apart: `ioc.alerts.outbox.FOREIGN`); the leader delivers them when it
hears the alert change (`Delivery.pick_up`), and tells only its own stream itself; a new leader takes them
over with the rest of the outbox. One notification id per change at the receiver, one delivery each."""

from __future__ import annotations

from ioc.rules.updates import AlertUpdate

from ioc.alerts.alert import Alert, Change
from ioc.alerts.manager import AlertManager
from ioc.alerts.outbox import FOREIGN, notification_id
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore
from tests.doubles import RecordingHook
from tests.integration.test_cluster_alerts import Flag
from tests.integration.test_cluster_store_sync import Node
from tests.waiting import wait_until


class Stream:
    """A plain notifier (as the SSE stream): told at once, no outbox."""

    def __init__(self) -> None:
        self.name = "stream"
        self.got: list[tuple[str, Change]] = []

    def notify(self, alert: Alert, change: Change) -> None:
        self.got.append((alert.id, change))


def fire(area: str, at: float) -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state="firing",
                       summary=f"AQI {area}", value=180.0, at=at)


def changes(hook: RecordingHook) -> list[tuple[str, str]]:
    return [(note.alert.id, note.change) for note in hook.got]


class Manager:
    """An alert manager whose leadership the test decides, with a durable hook and a plain stream."""

    def __init__(self, url: str, name: str, leads: bool) -> None:
        self.hook, self.stream, self.leads = RecordingHook(), Stream(), Flag(leads)
        self.alerts = AlertManager(AlertStore(url, node=name), notifiers=[self.hook, self.stream],
                                   leader=self.leads)


def test_an_ack_and_an_unack_on_a_follower_are_told_by_the_next_leader_when_the_leader_died_first(url: str) -> None:
    a, b, c = Manager(url, "a", True), Manager(url, "b", False), Manager(url, "c", False)
    try:
        fired = a.alerts.apply(fire("22945", 100.0))
        assert fired is not None and a.alerts.outbox.flush()
        b.alerts.sync()
        acked = b.alerts.ack(fired.id, "truc-ban-2")
        assert b.hook.got == [] and b.stream.got == [(fired.id, "firing"), (fired.id, "acknowledged")]  # its stream
        rows = b.alerts.store.outbox()
        assert [(row.change, row.seq >= FOREIGN) for row in rows] == [("acknowledged", True)]
        # The leader dies before it hears of the ack: it never syncs again.
        a.leads.value = False
        a.alerts.close()
        b.leads.value = True
        b.alerts.promote(2)
        assert changes(b.hook) == [(fired.id, "acknowledged")]
        assert b.hook.got[0].id == notification_id(acked, "acknowledged") == rows[0].id
        assert b.alerts.outbox.flush() and b.alerts.store.outbox() == []  # delivered: its row is gone
        b.alerts.sync()
        b.alerts.sync()
        assert changes(b.hook) == [(fired.id, "acknowledged")]  # and told once
        assert b.alerts.get(fired.id).acknowledged == acked.acknowledged

        # The normal path, b leading and alive: an unack on follower c is delivered once, from c's row.
        c.alerts.sync()
        unacked = c.alerts.unack(fired.id, "truc-ban-2")
        b.alerts.sync()
        b.alerts.sync()
        assert changes(b.hook) == [(fired.id, "acknowledged"), (fired.id, "unacknowledged")]
        assert b.hook.got[-1].id == notification_id(unacked, "unacknowledged") and b.hook.got[-1].seq >= FOREIGN
        assert b.stream.got[2:] == [(fired.id, "unacknowledged")]  # b's own stream heard it, once
        assert b.alerts.outbox.flush() and b.alerts.store.outbox() == []
    finally:
        for node in (b, c):
            node.alerts.close()


def test_an_ack_on_a_follower_while_the_leader_lives_is_delivered_once_and_not_again_by_a_later_leader(
        url: str) -> None:
    a, b = Manager(url, "a", True), Manager(url, "b", False)
    try:
        fired = a.alerts.apply(fire("22918", 100.0))
        assert fired is not None
        b.alerts.sync()
        b.alerts.ack(fired.id, "truc-ban")
        a.alerts.sync()  # heard (LISTEN/NOTIFY in the daemon), and again by the safety sync
        a.alerts.sync()
        assert changes(a.hook) == [(fired.id, "firing"), (fired.id, "acknowledged")]
        assert a.stream.got == [(fired.id, "firing"), (fired.id, "acknowledged")]
        assert a.alerts.outbox.flush() and a.alerts.store.outbox() == []
        a.leads.value, b.leads.value = False, True
        b.alerts.promote(2)  # the everyday failover after it: nothing owed, nothing told again
        assert b.hook.got == []
    finally:
        a.alerts.close()
        b.alerts.close()


def test_an_ack_on_the_follower_survives_the_leaders_stop_with_real_leases_and_listen(url: str) -> None:
    """As the daemon wires it: leases, LISTEN/NOTIFY, the 1 s rounds. The leader stops hearing before the
    ack (its manager is stopped with it), then leaves; the follower takes the lease and delivers the ack."""
    a = Node(url, "a")
    a.start()
    b = Node(url, "b")
    b.start()
    try:
        assert a.cluster.leader and not b.cluster.leader
        fired = a.alerts.apply(fire("22945", 100.0))
        assert fired is not None
        wait_until("b hears of the alert",
                   lambda: [alert.id for alert in b.alerts.active()] == [fired.id], timeout=10)
        a.cluster.on_store_change.clear()  # a hears nothing more: it is dying
        a._stop.set()
        a._thread.join()
        acked = b.alerts.ack(fired.id, "truc-ban")
        assert a.cluster.leader and b.hook.got == []
        a.close()  # the leader's manager stops, and the lease is given up
        wait_until("b leads", lambda: b.cluster.leader, timeout=15)
        wait_until("b delivers the ack", lambda: changes(b.hook) == [(fired.id, "acknowledged")], timeout=10)
        assert b.hook.got[0].id == notification_id(acked, "acknowledged")
        wait_until("its row is gone", lambda: b.alerts.store.outbox() == [], timeout=10)
        b.alerts.sync()  # what the rounds and LISTEN would do again: nothing more to tell
        assert changes(b.hook) == [(fired.id, "acknowledged")]
        assert changes(a.hook) == [(fired.id, "firing")]  # one notification id per change at the receiver
    finally:
        b.close()


def silence_area(manager: Manager, area: str) -> str:
    request = SilenceRequest.parse({"matchers": [{"name": "area", "value": area}], "duration": "1h"})
    return manager.alerts.create_silence(request, actor="truc-ban").id


def muting(hook: RecordingHook) -> list[tuple[str, str, str]]:
    return [(note.alert.id, note.change, note.id) for note in hook.got if note.change in ("muted", "unmuted")]


def test_a_silence_on_a_follower_is_told_by_the_next_leader_when_the_leader_died_first(url: str) -> None:
    a, b = Manager(url, "a", True), Manager(url, "b", False)
    try:
        fired = a.alerts.apply(fire("22945", 100.0))
        assert fired is not None and a.alerts.outbox.flush()
        b.alerts.sync()
        silence_id = silence_area(b, "22945")
        assert b.hook.got == [] and b.stream.got[-1] == (fired.id, "muted")
        # written with the silence, in its transaction
        assert [(row.change, row.seq >= FOREIGN) for row in b.alerts.store.outbox()] == [("muted", True)]
        a.leads.value = False  # it dies before it hears of the silence
        a.alerts.close()
        b.leads.value = True
        b.alerts.promote(2)
        assert [(alert_id, change) for alert_id, change, _ in muting(b.hook)] == [(fired.id, "muted")]
        assert b.hook.got[0].alert.silenced_by == (silence_id,)
        assert b.alerts.outbox.flush() and b.alerts.store.outbox() == []
        b.alerts.store_changed({"silences", "alerts"})  # heard late: nothing more to tell
        assert len(b.hook.got) == 1
    finally:
        b.alerts.close()


def test_a_silence_made_and_ended_on_a_follower_while_the_leader_lives_is_told_once(url: str) -> None:
    a, b = Manager(url, "a", True), Manager(url, "b", False)
    try:
        fired = a.alerts.apply(fire("22945", 100.0))
        assert fired is not None
        b.alerts.sync()
        silence_id = silence_area(b, "22945")
        a.alerts.store_changed({"silences"})  # the leader works the muting out itself, and sends it
        a.alerts.sync()  # then finds b's rows of the same change: settled, not sent again
        a.alerts.store_changed({"silences", "alerts"})
        assert [(alert_id, change) for alert_id, change, _ in muting(a.hook)] == [(fired.id, "muted")]
        assert a.alerts.outbox.flush() and a.alerts.store.outbox() == []
        b.alerts.expire_silence(silence_id, actor="truc-ban")  # ended on the follower too
        a.alerts.store_changed({"silences"})
        a.alerts.sync()
        assert [change for _, change, _ in muting(a.hook)] == ["muted", "unmuted"]
        assert a.alerts.outbox.flush() and a.alerts.store.outbox() == []
        assert [change for _, change in b.stream.got] == ["firing", "muted", "unmuted"]
        assert len({nid for _, _, nid in muting(a.hook)}) == 2
    finally:
        a.alerts.close()
        b.alerts.close()
