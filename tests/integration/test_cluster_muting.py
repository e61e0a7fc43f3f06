"""A silence that ends (or starts) by the clock while no node leads is told by the next leader, once, under
the id the old leader would have given it (CONTRACT §8, issue 11), on a real PostgreSQL. The leader
records what it told of each alert's muting with the alert (migration 0006); a node promoted compares
that with the silences now and tells the difference.
"""

from __future__ import annotations

from ioc.rules.updates import AlertUpdate

from ioc.alerts.manager import AlertManager
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore
from tests.doubles import RecordingHook, SettableClock
from tests.integration.test_cluster_alerts import Flag

T0 = 1_772_409_600.0


def fire(area: str) -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": area}, severity="critical", state="firing",
                       summary=f"AQI {area}", value=180.0, at=T0)


class Node:
    def __init__(self, url: str, name: str, leads: bool, clock: SettableClock) -> None:
        self.hook, self.leads = RecordingHook(), Flag(leads)
        self.alerts = AlertManager(AlertStore(url, node=name), notifiers=[self.hook], leader=self.leads,
                                   clock=clock)

    def told(self) -> list[tuple[str, str, str]]:
        return [(note.alert.id, note.change, note.id) for note in self.hook.got]


def test_a_silence_that_ends_while_nobody_leads_is_told_by_the_next_leader_once(url: str) -> None:
    clock = SettableClock(T0)
    a, b = Node(url, "a", True, clock), Node(url, "b", False, clock)
    try:
        fired = a.alerts.apply(fire("22945"))
        quiet = a.alerts.apply(fire("22918"))
        assert fired is not None and quiet is not None
        a.alerts.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22945"}],
                                                      "duration": "30m"}), actor="truc-ban-1")
        assert [(alert_id, change) for alert_id, change, _ in a.told()][-1] == (fired.id, "muted")
        assert a.alerts.outbox.flush()
        b.alerts.store_changed({"alerts", "silences"})
        assert b.alerts.get(fired.id).silenced

        # The leader dies; the silence ends while nobody leads; the follower's own tick tells its stream
        # only (a follower sends nothing).
        a.leads.value = False
        a.alerts.close()
        clock.now = T0 + 3600
        b.alerts.tick()
        assert b.hook.got == []
        b.leads.value = True
        b.alerts.promote(2)
        assert b.alerts.outbox.flush()
        unmuted = [(alert_id, change) for alert_id, change, _ in b.told()]
        assert unmuted == [(fired.id, "unmuted")]
        # Recorded with the alert: a later promotion (another term, as after another failover) tells nothing.
        b.alerts.promote(3)
        assert b.alerts.outbox.flush()
        assert [(alert_id, change) for alert_id, change, _ in b.told()] == unmuted
    finally:
        b.alerts.close()


def test_the_old_leaders_id_for_the_same_unmute_is_the_new_leaders(url: str) -> None:
    """Had the old leader told the unmute before dying (without storing it: PostgreSQL away), the next
    leader's is the same notification id, so receivers drop the repeat."""
    clock = SettableClock(T0)
    a, b = Node(url, "a", True, clock), Node(url, "b", False, clock)
    try:
        fired = a.alerts.apply(fire("22945"))
        assert fired is not None
        a.alerts.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22945"}],
                                                      "duration": "30m"}), actor="truc-ban-1")
        assert a.alerts.outbox.flush()
        b.alerts.store_changed({"alerts", "silences"})
        clock.now = T0 + 3600
        witness = Node(url, "w", True, clock)  # what a leader alive at that moment tells (then gone)
        witness.alerts.tick()
        told_live = [(alert_id, change, nid) for alert_id, change, nid in witness.told() if change == "unmuted"]
        witness.leads.value = False
        witness.alerts.close()
        assert told_live and told_live[0][0] == fired.id
        # The store still says muted for the next leader, whose unmute then carries the same id.
        store = AlertStore(url)
        with store.database.transaction():
            store.database.execute("UPDATE alerts SET muting = ? WHERE id = ?", (f'[["{_silence(store)}"],null]', fired.id))
        store.close()
        a.leads.value = False
        a.alerts.close()
        b.leads.value = True
        b.alerts.promote(2)
        assert b.alerts.outbox.flush()
        assert [(alert_id, change, nid) for alert_id, change, nid in b.told() if change == "unmuted"] == told_live
    finally:
        b.alerts.close()


def _silence(store: AlertStore) -> str:
    return str(store.database.execute("SELECT id FROM silences").fetchone()[0])
