"""A cluster's intake with two `ioc run` nodes on PostgreSQL, Mosquitto and InfluxDB (CONTRACT §8, issue 11),
on MQTT 5 and 3.1.1:

- a bad MQTT message, which both nodes receive and reject, is dead-lettered once: by the leader; the
  follower counts it and holds it, and publishes it (the same `id`) when it leads after the leader's
  SIGKILL: at least once, never zero;
- events posted over HTTP to a node reach the other through the broker, and the node that took them does
  not count them again when its own publish comes back (No Local on MQTT 5, its echoes recognised on
  3.1.1): received = accepted + rejected + duplicate with nothing inflated, on each node; the bad item of
  the post is dead-lettered once, at once, by the node that answered it (a follower too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.e2e.cluster_world import LEASE, VENDOR, Node, role, roster
from tests.e2e.daemon import DaemonProcess, assert_counting_rule
from tests.e2e.test_postgres_store import aqi
from tests.mqtt_tools import Collector, publish_all
from tests.servers import Server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

TOPIC = "ioc/v1/events/qtmt-aqi"
LETTERS = "ioc/v1/deadletter/qtmt-aqi"
QUIET = 2.0  # seconds to wait, once every node has counted a dead letter, for a copy that must not come


@pytest.fixture(params=["5", "3.1.1"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def letters(mosquitto: Server) -> Iterator[Collector]:
    found = Collector("127.0.0.1", mosquitto.port, "ioc/v1/deadletter/#")
    yield found
    found.close()


def started(nodes: dict[str, Node], protocol: str) -> tuple[DaemonProcess, DaemonProcess]:
    """`ioc-a` (the leader: started first) and `ioc-b` on `[mqtt] protocol`."""
    for daemon, env in nodes.values():
        env["IOC_MQTT__PROTOCOL"] = protocol
    (a, a_env), (b, b_env) = nodes["ioc-a"], nodes["ioc-b"]
    a.start(env=a_env)
    b.start(env=b_env)
    assert roster(a) == {"ioc-a": "leader", "ioc-b": "follower"}
    return a, b


def bodies(letters: Collector, marker: str) -> list[dict[str, object]]:
    """The dead letters on `ioc/v1/deadletter/qtmt-aqi` whose payload holds `marker`."""
    found = [orjson.loads(payload) for topic, payload in list(letters.messages) if topic == LETTERS]
    return [body for body in found if marker in str(body["payload"])]


def test_a_bad_mqtt_message_is_dead_lettered_once_by_the_leader_and_again_by_the_next_one(
        protocol: str, nodes: dict[str, Node], mosquitto: Server, letters: Collector, unique: str) -> None:
    a, b = started(nodes, protocol)
    bad = orjson.dumps({"id": f"{unique}-bad", "source": "qtmt-aqi", "type": "nope"})
    publish_all("127.0.0.1", mosquitto.port, [(TOPIC, bad)], qos=1)
    for daemon in (a, b):  # each node rejected it and counts it: the node's own truth
        wait_until("the dead letter counted on both nodes", lambda daemon=daemon: (
            daemon.metric_sum("ioc_dead_letters_total", source="qtmt-aqi") == 1), 20)
    wait_until("the leader's dead letter", lambda: bodies(letters, f"{unique}-bad"), 20)
    time.sleep(QUIET)  # a second copy (the follower's) would have come by now
    (letter,) = bodies(letters, f"{unique}-bad")
    assert letter["payload"] == bad.decode() and len(str(letter["id"])) == 32
    assert b.metric_sum("ioc_cluster_dead_letters_held") == 1
    assert b.metric_sum("ioc_cluster_dead_letters_total", outcome="held") == 1
    assert a.metric_sum("ioc_cluster_dead_letters_total") == 0  # the leader held nothing
    for daemon in (a, b):
        assert daemon.metric_sum("ioc_events_rejected_total", source="qtmt-aqi") == 1
        assert_counting_rule(daemon)

    # The leader dies; for all the follower knows, before it published: the new leader publishes what it
    # holds, under the same id (a reader drops the repeat by it).
    a.kill()
    wait_until("ioc-b leads", lambda: role(b) == "leader", timeout=LEASE + 10)
    wait_until("the held letter published", lambda: len(bodies(letters, f"{unique}-bad")) == 2, timeout=10)
    assert bodies(letters, f"{unique}-bad") == [letter, letter]
    assert b.metric_sum("ioc_cluster_dead_letters_total", outcome="released") == 1
    assert b.metric_sum("ioc_cluster_dead_letters_held") == 0
    assert b.log().count("cluster.dead_letters_released") == 1


def test_events_posted_to_a_node_are_counted_once_on_it(
        protocol: str, nodes: dict[str, Node], mosquitto: Server, letters: Collector, unique: str) -> None:
    a, b = started(nodes, protocol)
    posted = [orjson.loads(aqi(f"{unique}-h{n}", 60 + n)[1]) for n in range(3)]
    bad = {"id": f"{unique}-bad", "source": "qtmt-aqi", "type": "nope"}

    def post(daemon: DaemonProcess, items: list[dict[str, object]]) -> dict[str, object]:
        answer = httpx.post(f"{daemon.api}/api/v1/events", timeout=10, headers=VENDOR, content=orjson.dumps(items))
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    def fence(name: str, accepted: int) -> None:
        """An event published after the republish was acknowledged: once both nodes took it, the broker has
        delivered everything before it, the posting node's own publish included (if it sends it back)."""
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-{name}", 40)], qos=1)
        for daemon in (a, b):
            wait_until(f"{name} on both nodes", lambda daemon=daemon: (
                daemon.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == accepted), 20)

    def counts(daemon: DaemonProcess) -> tuple[float, float, float, float]:
        return tuple(daemon.metric_sum(f"ioc_events_{what}_total", source="qtmt-aqi")  # type: ignore[return-value]
                     for what in ("received", "accepted", "rejected", "duplicate"))

    # To the follower: 3 taken, 1 refused; b took them over HTTP, a through the broker.
    answer = post(b, [*posted, bad])
    assert answer["accepted"] == 3 and [item["index"] for item in answer["rejected"]] == [3]  # type: ignore[union-attr]
    fence("fence-1", 4)
    assert counts(b) == (5, 4, 1, 0)  # not 8 received and 3 duplicates: its own publish is not counted again
    assert counts(a) == (4, 4, 0, 0)
    # The same again, to the leader: duplicates on each node, once.
    answer = post(a, posted)
    assert (answer["accepted"], answer["duplicates"]) == (0, 3)
    fence("fence-2", 5)
    assert counts(a) == (8, 5, 0, 3)
    assert counts(b) == (9, 5, 1, 3)
    for daemon in (a, b):
        assert_counting_rule(daemon)
        assert daemon.metric_sum("ioc_cluster_republished_total", outcome="published") == 3
        if protocol == "3.1.1":  # no No Local: each recognised its own publish when it came back
            # One message: a request's events of one source go out as one JSON array.
            assert daemon.metric_sum("ioc_cluster_echoes_total", outcome="recognised") == 1
            assert daemon.metric_sum("ioc_cluster_echoes_awaited") == 0
        else:  # the broker sent nothing back: nothing awaited, nothing recognised
            assert daemon.metric_sum("ioc_cluster_echoes_total") == 0
    # The refused item is the follower's to dead-letter (it answered the vendor), at once, and only its.
    wait_until("the follower's dead letter", lambda: bodies(letters, f"{unique}-bad"), 20)
    time.sleep(QUIET)
    assert len(bodies(letters, f"{unique}-bad")) == 1
    assert b.metric_sum("ioc_cluster_dead_letters_total") == 0  # not held: published at once
    assert a.metric_sum("ioc_dead_letters_total", source="qtmt-aqi") == 0
