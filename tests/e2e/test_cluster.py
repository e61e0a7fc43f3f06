"""Two `ioc run` nodes on one PostgreSQL, Mosquitto and InfluxDB (CONTRACT §8, issue 11 phase 2).

- one leader is elected and both nodes list the roster, name their role on `/readyz` and in
  `ioc_cluster_leader{node}`; SIGKILL the leader and the other leads within `lease + 5 s` (the roster shows the
  killed node down); the killed node
  comes back as a follower; every node takes every event, a repeat is a duplicate on each; events posted
  over HTTP to the follower reach both (published to the broker before the 202), a bad one is answered and
  dead-lettered by the follower alone, and the counting rule holds on each node;
- only the leader records and notifies: an alert fires once on `ioc/v1/alerts/{rule}`, both nodes serve it
  under one id; an ack and a silence made on the follower hold on the leader (LISTEN/NOTIFY) and the ack
  is notified once; the leader is killed
  and the new one resolves the alert and notifies it: each (alert, change) on the broker exactly once
  and at a webhook receiver (repeats of one notification id, from an outbox taken over, count once);
- PostgreSQL away and back: nobody leads meanwhile, both nodes are not ready and ingest on; the alert
  resolved meanwhile is recorded and sent once by the next leader.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.cluster_world import LEASE, VENDOR, Node, leader, notified, role, roster, two_nodes
from tests.e2e.daemon import OPERATOR_TOKEN, assert_counting_rule
from tests.e2e.test_postgres_store import alerts, aqi
from tests.e2e.webhook import Receiver
from tests.mqtt_tools import Collector, publish_all
from tests.postgres_server import start_postgres
from tests.servers import Server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def test_one_leader_and_a_follower_that_takes_over_after_a_sigkill(
        nodes: dict[str, Node], mosquitto: Server, unique: str) -> None:
    (a, a_env), (b, b_env) = nodes["ioc-a"], nodes["ioc-b"]
    a.start(env=a_env)
    b.start(env=b_env)
    assert roster(a) == roster(b) == {"ioc-a": "leader", "ioc-b": "follower"}
    assert (role(a), role(b)) == ("leader", "follower")
    assert a.metric_sum("ioc_cluster_leader", node="ioc-a") == 1
    assert b.metric_sum("ioc_cluster_leader", node="ioc-b") == 0
    # Every node takes every event, and a repeat is a duplicate on each (dedup is per node).
    events = [aqi(f"{unique}-{n}", 50 + n) for n in range(3)]
    publish_all("127.0.0.1", mosquitto.port, [*events, events[0]], qos=1)
    for daemon in (a, b):
        wait_until("the events on both nodes", lambda daemon=daemon: (
            daemon.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == 3
            and daemon.metric_sum("ioc_events_duplicate_total", source="qtmt-aqi") == 1), 20)
        assert_counting_rule(daemon)
    # Posted to the follower over HTTP: published to the broker before the 202, so it reaches both nodes;
    # the bad item is answered and dead-lettered by the follower alone; the follower does not count its own
    # publish again (MQTT 5's No Local keeps it away; on 3.1.1 its echo is recognised).
    posted = [orjson.loads(aqi(f"{unique}-h{n}", 60 + n)[1]) for n in range(2)]
    answer = httpx.post(f"{b.api}/api/v1/events", timeout=10, headers=VENDOR,
                        content=orjson.dumps([*posted, {"id": "bad", "source": "qtmt-aqi", "type": "nope"}]))
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2 and [item["index"] for item in answer.json()["rejected"]] == [2]
    wait_until("the posted events on a",
               lambda: a.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == 5, 20)
    time.sleep(1.0)  # b's own publish, had it been counted again, would be by now
    assert b.metric_sum("ioc_events_received_total", source="qtmt-aqi") == 7  # 3, the repeat, 3 posted
    assert b.metric_sum("ioc_events_duplicate_total", source="qtmt-aqi") == 1
    assert b.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == 5
    assert a.metric_sum("ioc_events_rejected_total", source="qtmt-aqi") == 0
    assert b.metric_sum("ioc_events_rejected_total", source="qtmt-aqi") == 1
    assert b.metric_sum("ioc_cluster_republished_total", outcome="published") == 2
    for daemon in (a, b):
        assert_counting_rule(daemon)

    a.kill()
    killed = time.monotonic()
    wait_until("ioc-b leads", lambda: role(b) == "leader", timeout=LEASE + 10)
    took = time.monotonic() - killed
    assert took <= LEASE + 5, took
    wait_until("ioc-a down in the roster (silent for longer than the lease)", lambda: roster(b) == {
        "ioc-a": "down", "ioc-b": "leader"}, timeout=LEASE + 5)

    a.start(env=a_env)  # back, as a follower: the lease is b's
    assert (role(a), role(b)) == ("follower", "leader")
    assert b.terminate() == 0  # a graceful stop gives the lease up: a leads at its next round
    wait_until("ioc-a leads", lambda: role(a) == "leader", timeout=LEASE + 5)


def test_only_the_leader_notifies_and_the_next_one_takes_over(
        nodes: dict[str, Node], mosquitto: Server, unique: str,
        receiver: Receiver) -> None:
    (a, a_env), (b, b_env) = nodes["ioc-a"], nodes["ioc-b"]
    collector = Collector("127.0.0.1", mosquitto.port, "ioc/v1/alerts/aqi-bad")
    try:
        a.start(env=a_env)
        b.start(env=b_env)
        assert (role(a), role(b)) == ("leader", "follower")
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-1", 180)], qos=1)
        [fired] = wait_until("the alert firing on a", lambda: alerts(a, state="firing"), 20)
        wait_until("the alert on b, same id",
                   lambda: [alert["id"] for alert in alerts(b, state="firing")] == [fired["id"]], 20)
        for daemon in (a, b):  # every node serves the (node-local) CAP feed
            wait_until("the CAP message", lambda daemon=daemon: httpx.get(
                f"{daemon.api}/api/v1/cap", timeout=5).text.count("<entry") == 1, 20)
        acked = httpx.post(f"{b.api}/api/v1/alerts/{fired['id']}/ack", timeout=5,
                           headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert acked.status_code == 200, acked.text
        wait_until("the ack on a", lambda: alerts(a, state="acknowledged"), timeout=5)
        made = httpx.post(f"{b.api}/api/v1/silences", timeout=5, headers={
            "Authorization": f"Bearer {OPERATOR_TOKEN}"}, json={
            "matchers": [{"name": "area", "value": "22918"}], "duration": "2h", "comment": "bảo trì trạm"})
        assert made.status_code in (200, 201), made.text
        wait_until("the silence on a", lambda: [silence["id"] for silence in httpx.get(
            f"{a.api}/api/v1/silences", timeout=5).json()] == [made.json()["id"]], timeout=5)

        changes = lambda: notified(collector)
        wait_until("firing and acknowledged sent", lambda: set(changes()) == {
            (fired["id"], "firing"), (fired["id"], "acknowledged")}, 20)
        a.kill()
        wait_until("b leads", lambda: role(b) == "leader", timeout=LEASE + 10)
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-2", 100)], qos=1)
        wait_until("the alert resolved on b", lambda: alerts(b, state="resolved"), 20)
        wait_until("resolved sent", lambda: (fired["id"], "resolved") in changes(), 20)
        wait_until("resolved at the webhook", lambda: any(
            call["change"] == "resolved" for call in list(receiver.notifications)), 20)
        time.sleep(1.0)  # a grace in which a duplicate (under a new notification id) would arrive
        assert sorted(changes().items()) == sorted({(fired["id"], "firing"): 1, (fired["id"], "acknowledged"): 1,
                                                    (fired["id"], "resolved"): 1}.items())
        # The webhook (firing and resolved by default): each once, repeats of one notification id aside.
        calls: dict[tuple[str, str], set[str]] = {}
        for call in list(receiver.notifications):
            calls.setdefault((call["alert"]["id"], call["change"]), set()).add(call["notification_id"])
        assert {key: len(ids) for key, ids in calls.items()} == {(fired["id"], "firing"): 1,
                                                                 (fired["id"], "resolved"): 1}
    finally:
        collector.close()


def test_postgresql_away_and_back_no_leader_meanwhile_and_the_change_made_meanwhile_sent_once(
        tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str) -> None:
    server = start_postgres()  # this test's own: it stops it
    found = two_nodes(tmp_path, mosquitto, influxdb, database, unique, server)
    (a, a_env), (b, b_env) = found["ioc-a"], found["ioc-b"]
    collector = Collector("127.0.0.1", mosquitto.port, "ioc/v1/alerts/aqi-bad")
    try:
        a.start(env=a_env)
        b.start(env=b_env)
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-1", 180)], qos=1)
        [fired] = wait_until("the alert firing", lambda: alerts(a, state="firing"), 20)
        server.stop()
        for daemon in (a, b):  # cut from the store: not ready, and nobody leads
            wait_until("not ready", lambda daemon=daemon: httpx.get(
                f"{daemon.api}/readyz", timeout=5).status_code == 503 and role(daemon) == "follower",
                timeout=LEASE + 30)
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-2", 100)], qos=1)  # it resolves meanwhile
        for daemon in (a, b):  # both ingest on
            wait_until("the event taken", lambda daemon=daemon: daemon.metric_sum(
                "ioc_events_accepted_total", source="qtmt-aqi") == 2, 20)
        server.start()
        now_leading = wait_until("a leader again", lambda: leader(a, b), timeout=LEASE + 30)
        wait_until("the resolution recorded and sent",
                   lambda: (fired["id"], "resolved") in notified(collector), 20)
        assert [alert["id"] for alert in alerts(now_leading, state="resolved")] == [fired["id"]]
        time.sleep(1.0)  # a grace in which a duplicate (under a new notification id) would arrive
        assert notified(collector) == {(fired["id"], "firing"): 1, (fired["id"], "resolved"): 1}
        for daemon in (a, b):
            assert_counting_rule(daemon)
    finally:
        collector.close()
        for daemon, _ in found.values():
            daemon.stop()
        server.close()
