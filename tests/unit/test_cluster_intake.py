"""A cluster's intake as pure logic (CONTRACT §8; the two-node behaviour is in
tests/e2e/test_cluster_intake.py): the dead-letter id, the leader's gate and what a follower holds, and the
echo of a node's own HTTP republish on MQTT 3.1.1, recognised by the MQTT intake."""

from __future__ import annotations

import threading

import orjson
import pytest
from ioc.connectors.mqtt.echoes import Echoes
from ioc.connectors.mqtt.intake import MqttIntake
from ioc.connectors.mqtt.session import MqttSession

from ioc.config import MqttSettings
from ioc.ingest.deadletter import dead_letter_body, letter_id
from ioc.ingest.letter_gate import HeldLetters, LeaderGate
from ioc.ingest.letters import DeadLetterOffice, node_local, node_local_letters
from tests.doubles import SettableClock
from tests.unit.test_mqtt_parts import FakeSession, RecordingIntake


class Bodies:
    """A BodyTarget that records what it is given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def publish_dead_letter_body(self, source: str, body: bytes) -> None:
        self.sent.append((source, orjson.loads(body)))


# --- the dead letter's id ------------------------------------------------------------------------------

def test_a_dead_letters_id_is_its_source_reason_and_whole_payload() -> None:
    body = orjson.loads(dead_letter_body("bad", b'{"x": 1}', source="src-a"))
    assert body == {"id": letter_id("src-a", "bad", b'{"x": 1}'), "reason": "bad", "payload": '{"x": 1}'}
    assert len(body["id"]) == 32  # 128 bits, hex
    again = orjson.loads(dead_letter_body("bad", b'{"x": 1}', source="src-a"))
    assert again["id"] == body["id"]  # what another node computes for the same message
    others = {letter_id("src-b", "bad", b'{"x": 1}'), letter_id("src-a", "worse", b'{"x": 1}'),
              letter_id("src-a", "bad", b'{"x": 2}'), body["id"]}
    assert len(others) == 4
    # Two payloads that differ only past the 64 KiB cut are two letters, though their bodies show the same.
    one, two = (b"a" * 70_000 + end for end in (b"1", b"2"))
    cut = [orjson.loads(dead_letter_body("big", payload, source="s")) for payload in (one, two)]
    assert cut[0]["payload"] == cut[1]["payload"] and cut[0]["truncated"] is True
    assert cut[0]["id"] != cut[1]["id"]


def test_without_a_source_the_body_is_as_before() -> None:
    assert orjson.loads(dead_letter_body("bad", b"x")) == {"reason": "bad", "payload": "x"}


# --- what a follower holds -------------------------------------------------------------------------------

def test_held_letters_expire_after_hold_oldest_first() -> None:
    clock = SettableClock(1000.0)
    held = HeldLetters(hold=25.0, clock=clock)
    held.add("a", b"1")
    clock.now += 10
    held.add("a", b"22")
    assert len(held) == 2 and held.bytes == 3
    clock.now += 15  # the first is 25 s old: gone; the second is kept
    assert held.take() == [("a", b"22")]
    assert (held.held, held.expired, held.evicted, len(held), held.bytes) == (2, 1, 0, 0, 0)


def test_held_letters_are_bounded_by_count_and_bytes() -> None:
    held = HeldLetters(hold=60.0, max_letters=3, max_bytes=10, clock=SettableClock(1000.0))
    for index in range(5):
        held.add("s", b"%d" % index)
    assert held.take() == [("s", b"2"), ("s", b"3"), ("s", b"4")]  # the oldest went first
    held.add("s", b"x" * 6)
    held.add("s", b"y" * 6)  # 12 bytes > 10: the first goes
    assert [body for _, body in held.take()] == [b"y" * 6]
    held.add("s", b"z" * 11)  # alone over the bound: not held at all
    assert held.take() == [] and held.evicted == 4 and held.bytes == 0


def test_nothing_held_expires_while_nobody_can_lead() -> None:
    clock = SettableClock(1000.0)
    held = HeldLetters(hold=25.0, clock=clock)
    held.add("s", b"1")
    clock.now += 20
    held.unsettled()  # the store is away: no leader publishes what this node holds
    clock.now += 20  # 40 s after it was held, 20 s after the store was last seen away
    held.add("s", b"2")
    assert [body for _, body in held.take()] == [b"1", b"2"]


def test_the_leader_publishes_a_follower_holds_and_publishes_once_promoted() -> None:
    clock, bodies = SettableClock(1000.0), Bodies()
    leading = [False]
    gate = LeaderGate(bodies, leader=lambda: leading[0], hold=25.0, clock=clock)
    office = DeadLetterOffice([gate])
    office.publish("src-a", "bad", b"one")
    office.publish("src-a", "bad", b"two", items=3)
    assert bodies.sent == [] and gate.held == 2
    assert office.counts[("src-a",)] == 4  # the node's own count, leader or not
    clock.now += 30
    office.publish("src-a", "bad", b"three")  # the first two expired meanwhile
    leading[0] = True
    gate.role_changed(True)
    assert bodies.sent == [("src-a", orjson.loads(dead_letter_body("bad", b"three", source="src-a")))]
    office.publish("src-b", "worse", b"four")  # as leader: at once
    assert [body["payload"] for _, body in bodies.sent] == ["three", "four"] and gate.held == 0
    samples = {family.name: family.samples for family in gate.metrics()}
    assert {s.labels["outcome"]: s.value for s in samples["ioc_cluster_dead_letters"]} == {
        "held": 3.0, "released": 1.0, "expired": 2.0, "evicted": 0.0}
    assert samples["ioc_cluster_dead_letters_held"][0].value == 0.0


def test_a_follower_publishes_the_http_intakes_letters_at_once() -> None:
    bodies = Bodies()
    gate = LeaderGate(bodies, leader=lambda: False, hold=25.0)
    assert not node_local_letters()
    with node_local():
        assert node_local_letters()
        gate.publish_dead_letter("src-a", "bad", b"posted")
    assert not node_local_letters()
    gate.publish_dead_letter("src-a", "bad", b"received")
    assert [body["payload"] for _, body in bodies.sent] == ["posted"] and gate.held == 1

    seen: list[bool] = []  # the mark is the calling thread's alone
    with node_local():
        thread = threading.Thread(target=lambda: seen.append(node_local_letters()))
        thread.start()
        thread.join()
    assert seen == [False]


def test_a_letter_held_as_the_node_is_promoted_is_not_left_behind() -> None:
    bodies = Bodies()
    answers = iter([False, True])  # a follower when it looks, the leader right after (its release ran)
    gate = LeaderGate(bodies, leader=lambda: next(answers), hold=25.0)
    gate.publish_dead_letter("src-a", "bad", b"x")
    assert [body["payload"] for _, body in bodies.sent] == ["x"] and gate.held == 0


def test_a_gate_holds_nothing_expired_while_its_store_is_away() -> None:
    clock, bodies = SettableClock(1000.0), Bodies()
    settled = [False]
    gate = LeaderGate(bodies, leader=lambda: False, hold=25.0, settled=lambda: settled[0], clock=clock)
    gate.publish_dead_letter("s", "bad", b"1")
    clock.now += 60
    gate.publish_dead_letter("s", "bad", b"2")  # still away: the first is kept
    settled[0] = True
    clock.now += 20
    gate.role_changed(True)
    assert [body["payload"] for _, body in bodies.sent] == ["1", "2"]


# --- the echo of the HTTP republish ------------------------------------------------------------------

def test_an_echo_is_recognised_once_each_time_it_was_published() -> None:
    echoes = Echoes(clock=SettableClock(1000.0))
    assert echoes.waiting == 0 and not echoes.take("s", b"e")
    echoes.expect("s", b"e")
    echoes.expect("s", b"e")  # published twice (a retry after a 503)
    assert echoes.waiting == 2 and echoes.bytes == 2
    assert not echoes.take("other", b"e")  # another source's identical bytes are not it
    assert echoes.take("s", b"e") and echoes.take("s", b"e")
    assert not echoes.take("s", b"e")  # a third is a vendor's repeat
    assert (echoes.waiting, echoes.bytes, echoes.recognised) == (0, 0, 2)


def test_echoes_expire_and_are_bounded() -> None:
    clock = SettableClock(1000.0)
    echoes = Echoes(expiry=60.0, max_echoes=2, max_bytes=5, clock=clock)
    echoes.expect("s", b"1")
    echoes.expect("s", b"2")
    echoes.expect("s", b"3")  # over the count: "1" is evicted
    assert not echoes.take("s", b"1") and echoes.evicted == 1
    echoes.expect("s", b"4444")  # 1 + 4 bytes... plus "2": 6 > 5, "2" is evicted
    assert echoes.evicted == 2 and echoes.bytes == 5
    clock.now += 60
    assert not echoes.take("s", b"3") and echoes.expired == 2 and echoes.waiting == 0
    samples = {family.name: family.samples for family in echoes.collect()}
    assert {s.labels["outcome"]: s.value for s in samples["ioc_cluster_echoes"]} == {
        "recognised": 0.0, "expired": 2.0, "evicted": 2.0}


@pytest.mark.parametrize("raw", [True, False])
def test_the_mqtt_intake_acknowledges_an_echo_and_hands_over_the_rest(raw: bool) -> None:
    session, intake, echoes = FakeSession(), RecordingIntake(), Echoes()
    mqtt_intake = MqttIntake(session, intake, echoes=echoes)  # type: ignore[arg-type]
    echoes.expect("src-a", b'{"id": "1"}')

    def receive(payload: bytes, mid: int) -> None:
        if raw:  # FastClient's path
            mqtt_intake.on_raw_message(b"ioc/v1/events/src-a", payload, mid, 1)
        else:
            mqtt_intake.on_message("ioc/v1/events/src-a", payload, mid, 1)

    receive(b'{"id": "1"}', 11)  # the echo: handed to nothing, acknowledged behind what came before
    assert intake.batches == []
    (items, on_durable), = intake.refused
    assert items == [] and on_durable is not None
    on_durable()
    assert session.acked == [(7, 11, 1)]
    receive(b'{"id": "1"}', 12)  # the same bytes again: a vendor's repeat, the pipeline's to count
    (messages, on_durable), = intake.batches
    assert messages == [(b'{"id": "1"}', "src-a")] and on_durable is not None
    assert echoes.recognised == 1 and echoes.waiting == 0


def test_no_local_is_asked_for_on_mqtt_5_without_a_shared_subscription() -> None:
    assert MqttSession(MqttSettings(protocol="5")).no_local
    assert not MqttSession(MqttSettings(protocol="3.1.1")).no_local  # no such option: echoes recognised
    assert not MqttSession(MqttSettings(protocol="5", share_group="ioc")).no_local  # forbidden there by MQTT 5


def test_republished_messages_are_arrays_per_source_within_the_bounds() -> None:
    """A request's events go out as one JSON array per source (a lone event as itself), split past
    `max_items` events or `max_bytes`, in the order posted; every event once."""
    from ioc.api.cluster import messages
    from ioc.envelope import EVENT_ADAPTER
    from ioc.ingest.decode import Accepted

    def item(number: int, source: str) -> Accepted:
        raw = orjson.dumps({"id": f"e{number}", "source": source, "time": "2026-03-02T08:00:00+07:00",
                            "type": "telemetry", "metric": "env.aqi", "value": number})
        return Accepted(EVENT_ADAPTER.validate_json(raw), raw)

    items = [item(number, "qtmt-aqi" if number % 3 else "dvc") for number in range(10)]
    sent = list(messages(items, max_items=4, max_bytes=1 << 20))
    assert [source for source, _ in sent] == ["dvc", "qtmt-aqi", "qtmt-aqi"]
    decoded = {source: [] for source, _ in sent}
    for source, payload in sent:
        body = orjson.loads(payload)
        assert isinstance(body, list) and len(body) <= 4
        decoded[source] += [event["id"] for event in body]
    assert decoded == {"qtmt-aqi": [f"e{n}" for n in range(10) if n % 3], "dvc": ["e0", "e3", "e6", "e9"]}
    one = list(messages(items[:1], max_items=4, max_bytes=1 << 20))
    assert one == [("dvc", items[0].raw)]
    small = list(messages(items[1:3], max_items=100, max_bytes=len(items[1].raw) + 2))  # one event fits
    assert [payload for _, payload in small] == [items[1].raw, items[2].raw]
