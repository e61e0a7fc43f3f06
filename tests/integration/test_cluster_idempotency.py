"""The idempotency gap of a failover on a real PostgreSQL (CONTRACT §8, issue 11): a leader cut from the store
tells the changes it evaluates without storing them; once it is gone and another node leads, that node
records its own engine's view and tells those changes again. Both derive the same alert ids and
notification ids from the events they both evaluated, so a receiver that de-duplicates on
`notification_id` sees each change once; a resolution is recorded at the event time the engine made it."""

from __future__ import annotations

from collections import defaultdict

from ioc.rules.engine import RuleEngine
from ioc.rules.loader import parse_rules

from ioc.alerts.leadership import Leadership
from ioc.alerts.manager import AlertManager
from ioc.alerts.outbox import Notification
from ioc.alerts.store import AlertStore
from ioc.envelope import AnyEvent
from tests.doubles import RecordingHook
from tests.integration.test_cluster_alerts import Flag
from tests.postgres_server import Postgres
from tests.unit.rules_support import at, tel

RULES = """
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {metric: aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    for: 5m
"""


class Node:
    """An alert manager and the rule engine that feeds it, as a daemon wires them."""

    def __init__(self, url: str, name: str, leads: bool) -> None:
        self.hook = RecordingHook()
        self.leads = Flag(leads)
        self.alerts = AlertManager(AlertStore(url, node=name), notifiers=[self.hook], leader=self.leads)
        self.engine = RuleEngine(parse_rules(RULES), areas=None, on_change=self.alerts.apply, started_at=at(0))

    def promote(self, term: int) -> None:
        self.leads.value = True  # (its store's connection, cut while PostgreSQL was away, fails once)
        leadership = Leadership(self.alerts, self.engine, lambda: term)
        leadership.hot = True  # it evaluated every event as a follower
        leadership.role_changed(True)


def feed(nodes: list[Node], *events: AnyEvent) -> None:
    """Every node receives every event, in the same order (its own MQTT session)."""
    for node in nodes:
        for item in events:
            node.engine.observe(item)


def aqi(offset: str, value: float, area: str) -> AnyEvent:
    return tel(offset, value, metric="aqi", area=area)


def received(*hooks: RecordingHook) -> list[Notification]:
    return [note for hook in hooks for note in hook.got]


def ids_by_change(notes: list[Notification]) -> dict[tuple[str, str], set[str]]:
    found: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for note in notes:
        found[(note.alert.id, note.change)].add(note.id)
    return dict(found)


def assert_one_id_per_change(notes: list[Notification]) -> None:
    by_change = ids_by_change(notes)
    assert all(len(ids) == 1 for ids in by_change.values()), by_change
    assert len({note.id for note in notes}) == len(by_change)  # and no two changes share an id


def test_changes_told_by_a_leader_cut_from_the_store_are_told_again_under_the_same_ids(
        server: Postgres, url: str) -> None:
    a, b = Node(url, "a", leads=True), Node(url, "b", leads=False)
    try:
        feed([a, b], aqi("0s", 180, "22945"))
        assert [note.change for note in a.hook.got] == ["pending"] and b.hook.got == []
        assert a.alerts.outbox.flush()  # its outbox row removed (else b sends it again: same id, but not the point)
        server.stop()  # a tells on, without storing (its lease has not lapsed yet)
        feed([a, b], aqi("5m", 190, "22945"), aqi("6m", 200, "22918"), aqi("7m", 100, "22945"))
        told = [(note.alert.labels["area"], note.change) for note in a.hook.got]
        assert told == [("22945", "pending"), ("22945", "firing"), ("22918", "pending"), ("22945", "resolved")]
        a.leads.value = False  # a is gone (its lease lapses); the store comes back; b leads
        server.start()
        b.promote(2)
        # b records its engine's view: 22945 resolved (the store still had it pending), 22918 pending
        retold = [(note.alert.labels["area"], note.change) for note in b.hook.got]
        assert sorted(retold) == [("22918", "pending"), ("22945", "resolved")]
        # Resolved at the event time b's engine resolved it (as a had), not at b's wall clock.
        assert [note.alert.resolved_at for note in b.hook.got if note.change == "resolved"] == [at("7m")]
        notes = received(a.hook, b.hook)
        assert_one_id_per_change(notes)
        assert len({note.id for note in notes}) == 4  # what a receiver keeps: each change once
        stored = {alert.labels["area"]: alert for alert in b.alerts.store.active_alerts()}
        assert list(stored) == ["22918"] and stored["22918"].id == a.hook.got[2].alert.id
        assert stored["22918"].started_at == at("6m")
        feed([a, b], aqi("12m", 210, "22918"))  # b leads on: the next change has an id of its own
        assert [note.change for note in b.hook.got][-1] == "firing"
        assert_one_id_per_change(received(a.hook, b.hook))
    finally:
        server.start()
        a.alerts.close()
        b.alerts.close()


def test_a_new_episode_begun_while_nobody_stored_resolves_the_stored_one_first(server: Postgres, url: str) -> None:
    a, b = Node(url, "a", leads=True), Node(url, "b", leads=False)
    try:
        feed([a, b], aqi("0s", 180, "22945"), aqi("5m", 190, "22945"))  # firing, stored
        first = a.alerts.active()[0]
        assert a.alerts.outbox.flush()
        server.stop()
        feed([a, b], aqi("8m", 100, "22945"), aqi("9m", 175, "22945"))  # resolved, then a new episode
        assert [note.change for note in a.hook.got] == ["pending", "firing", "resolved", "pending"]
        second = a.hook.got[-1].alert
        assert second.id != first.id and second.fingerprint == first.fingerprint
        a.leads.value = False
        server.start()
        b.promote(2)
        assert [(note.alert.id, note.change) for note in b.hook.got] == [(first.id, "resolved"), (second.id, "pending")]
        assert b.hook.got[0].alert.resolved_at == at("8m") and b.hook.got[0].alert.value == 100.0
        assert_one_id_per_change(received(a.hook, b.hook))
        assert [alert.id for alert in b.alerts.store.active_alerts()] == [second.id]
    finally:
        server.start()
        a.alerts.close()
        b.alerts.close()


def test_a_promotion_with_the_store_up_tells_nothing_again(url: str) -> None:
    """The everyday failover: the old leader stored everything; the new one's engine agrees with the store."""
    a, b = Node(url, "a", leads=True), Node(url, "b", leads=False)
    try:
        feed([a, b], aqi("0s", 180, "22945"), aqi("5m", 190, "22945"), aqi("6m", 170, "22918"))
        assert len(a.hook.got) == 3
        assert a.alerts.outbox.flush()  # delivered and settled: nothing owed for b to send again
        a.leads.value = False
        b.promote(2)
        assert b.hook.got == []
        assert sorted(alert.id for alert in b.alerts.active()) == sorted(alert.id for alert in a.alerts.active())
    finally:
        a.alerts.close()
        b.alerts.close()
