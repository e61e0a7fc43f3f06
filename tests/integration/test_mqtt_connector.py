"""The MQTT connector against real Mosquitto brokers: intake, dead letters, durable acknowledgements,
persistent sessions, reconnects, MQTT 3.1.1, TLS and a denied subscription."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from ioc.connectors.mqtt import MqttConnector, MqttSession
from ioc.connectors.mqtt.topics import topic_source
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from ioc.config import MqttSettings, load_settings
from ioc.errors import ConfigError
from ioc.ingest.deadletter import dead_letter_body
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import DeadLetterTarget, Pipeline
from ioc.metrics import Metrics, MetricSource
from ioc.sinks.base import DurableCallback, Sink
from tests.mqtt_tools import Collector, assemble_mqtt, publish_all
from tests.servers import Server, find_binary, free_port, start_mosquitto
from tests.waiting import wait_until

TIME = "2026-03-02T08:00:00+07:00"
CLIENTS = ["fast", "paho"]  # [mqtt] client: FastClient, and stock paho (the way back should paho break it)


# --- helpers ---------------------------------------------------------------------------------------------


def event(source: str, index: int, **extra: object) -> bytes:
    return orjson.dumps({"id": f"e-{index}", "source": source, "type": "telemetry", "time": TIME,
                         "metric": "env.aqi", "value": index, **extra})


class HoldingSink:
    """A sink that makes nothing durable until the test says so: the seam for acknowledgement timing."""

    name = "holding"

    def __init__(self) -> None:
        self.held: list[DurableCallback | None] = []
        self.points = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        with self._lock:
            self.points += len(points)
            self.held.append(on_durable)

    def release(self) -> int:
        """Report everything held as durable (from the test's thread, as a writer thread would)."""
        with self._lock:
            callbacks, self.held = self.held, []
        for callback in callbacks:
            if callback is not None:
                callback()
        return len(callbacks)

    def count(self) -> int:
        """Callbacks held (the connector hands messages over in bursts: one callback per burst)."""
        with self._lock:
            return len(self.held)

    def has_room(self, points: int) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> MetricSource:
        return list

    def close(self, timeout: float) -> None:
        pass


def make_pipeline(*sinks: Sink, dead_letters: list[DeadLetterTarget] | None = None) -> Pipeline:
    return Pipeline(sinks=list(sinks), dedup=DedupIndex(None, window=86400, max_keys=10**6), max_bytes=8 << 20,
                    max_future=300, dead_letters=dead_letters or [])


def assemble(settings: MqttSettings, *sinks: Sink, pipeline: Pipeline | None = None,
             max_pending: int = 1000) -> tuple[MqttConnector, Pipeline]:
    """The connector and its pipeline over `sinks` (or on a given `pipeline`), as ioc/app.py assembles them."""
    return assemble_mqtt(settings, pipeline or (lambda letters: make_pipeline(*sinks, dead_letters=letters)),
                         max_pending=max_pending)


def sample(connector: MqttConnector, name: str, **labels: str) -> float:
    metrics = Metrics()
    metrics.add(connector.metrics())
    for family in text_string_to_metric_families(metrics.render().decode()):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    raise KeyError(name)


def drop_connection(connector: MqttConnector) -> None:
    """Break the TCP connection under paho, as a network failure would (no DISCONNECT, no acks)."""
    client = connector.session.client
    assert client is not None
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)


Make = Callable[..., tuple[MqttConnector, Pipeline]]


@pytest.fixture
def connectors() -> Iterator[Make]:
    """Makes started connectors with fast reconnects (and their pipelines, over `sinks`, dead letters to
    the broker; or on a given `pipeline`) and closes them after the test."""
    made: list[MqttConnector] = []

    def make(server: Server, *sinks: Sink, pipeline: Pipeline | None = None, start: bool = True,
             wait: bool = True, **settings: object) -> tuple[MqttConnector, Pipeline]:
        values: dict[str, object] = {"url": server.url, "reconnect_min": "50ms", "reconnect_max": "300ms",
                                     "session_expiry": "60s"}
        values.update(settings)
        connector, pipeline = assemble(MqttSettings.model_validate(values), *sinks, pipeline=pipeline)
        made.append(connector)
        if start:
            connector.start()
            if wait:
                wait_until("the SUBACK", lambda: connector.subscribed)
        return connector, pipeline

    yield make
    for connector in made:
        connector.close(1)


# --- pure helpers ----------------------------------------------------------------------------------------


def test_topic_source_and_dead_letter_body() -> None:
    assert topic_source("ioc/v1/events/qtmt-aqi") == "qtmt-aqi"
    assert topic_source("ioc/v1/events/qtmt-aqi/batch") == "qtmt-aqi"
    assert topic_source("site/other/dvc") == "dvc"
    assert topic_source("ioc/v1/events/") == ""
    assert orjson.loads(dead_letter_body("bad", b'{"x": "\xc3\xa1"}')) == {"reason": "bad", "payload": '{"x": "á"}'}
    assert orjson.loads(dead_letter_body("bad", b"\xff\x00")) == {
        "reason": "bad", "payload": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"}


# --- intake ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_good_event_is_accepted_and_acknowledged(mosquitto: Server, unique: str,
                                                 connectors: Make, client: str) -> None:
    source = f"s-{unique}"
    connector, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[f"ioc/v1/events/{source}"],
                                     client=client)
    assert connector.problems() == []
    publish_all("127.0.0.1", mosquitto.port, [(f"ioc/v1/events/{source}", event(source, 1))])
    publish_all("127.0.0.1", mosquitto.port, [(f"ioc/v1/events/{source}", event(source, 2))], qos=0)
    wait_until("two accepted events", lambda: pipeline.accepted[(source,)] == 2)
    wait_until("the ack", lambda: sample(connector, "ioc_mqtt_acks_sent_total") == 1)
    assert sample(connector, "ioc_mqtt_messages_received_total", qos="1") == 1
    assert sample(connector, "ioc_mqtt_messages_received_total", qos="0") == 1
    assert sample(connector, "ioc_mqtt_connected") == 1
    assert sample(connector, "ioc_mqtt_connects_total") == 1
    assert sample(connector, "ioc_mqtt_acks_skipped_total") == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_bad_events_become_dead_letters_and_good_ones_all_pass(
        mosquitto: Server, unique: str, connectors: Make, client: str) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    _, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[topic], client=client)
    dead = Collector("127.0.0.1", mosquitto.port, f"ioc/v1/deadletter/{source}")
    bad = [
        b'{"id": "x", "source": ',  # invalid JSON
        orjson.dumps({"id": "t", "source": source, "type": "weather", "time": TIME}),  # wrong type
        event("someone-else", 1000),  # source does not match the topic
        b'{"id": "\xff\xfe"}',  # not UTF-8
    ]
    messages = []
    for index in range(40):
        messages.append((topic, event(source, index)))
        if index % 10 == 5:
            messages.append((topic, bad[index // 10]))
    try:
        publish_all("127.0.0.1", mosquitto.port, messages)
        letters = dead.wait_for(4)
        wait_until("all 40 good events", lambda: pipeline.accepted[(source,)] == 40)
    finally:
        dead.close()
    assert len(letters) == 4
    bodies = [orjson.loads(payload) for _, payload in letters]
    assert {topic for topic, _ in letters} == {f"ioc/v1/deadletter/{source}"}
    assert [body["payload"] for body in bodies[:3]] == [item.decode() for item in bad[:3]]
    assert "encoding" not in bodies[0]
    assert bodies[1]["reason"].startswith("type: ")
    assert bodies[2]["reason"] == f"source: 'someone-else' does not match the topic's '{source}'"
    assert bodies[3]["encoding"] == "base64" and base64.b64decode(bodies[3]["payload"]) == bad[3]
    assert all(body["reason"] for body in bodies)
    assert sum(count for (src, _), count in pipeline.rejected.items() if src == source) == 4
    assert pipeline.received[(source,)] == 44


# --- durable acknowledgement -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_ack_waits_for_durability_and_survives_a_broken_connection(
        mosquitto: Server, unique: str, connectors: Make, client: str) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    sink = HoldingSink()
    connector, pipeline = connectors(mosquitto, sink, client_id=f"ioc-{unique}", subscribe=[topic], client=client)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(5)])
    wait_until("five held events", lambda: pipeline.accepted[(source,)] == 5)
    assert sample(connector, "ioc_mqtt_acks_sent_total") == 0  # not durable: not acknowledged

    # The connection breaks before the points are durable: the broker must send all five again.
    drop_connection(connector)
    wait_until("a reconnect",
               lambda: sample(connector, "ioc_mqtt_connects_total") == 2 and connector.connected)
    wait_until("the redelivery of the five", lambda: pipeline.duplicates[(source,)] == 5)
    # The repeats add no points, only callbacks ordered behind the first ones (one per burst at least).
    assert sink.count() >= 2 and sink.points == 5

    # Now durable: the old connection's acks are skipped (their ids mean nothing now), the new ones go.
    assert sink.release() >= 2
    wait_until("five acks", lambda: sample(connector, "ioc_mqtt_acks_sent_total") == 5)
    assert sample(connector, "ioc_mqtt_acks_skipped_total") == 5

    # Acknowledged for good: after another break nothing comes back, while a new event does.
    client_ = connector.session.client
    wait_until("the PUBACKs out", lambda: client_ is not None and not client_.want_write())
    drop_connection(connector)
    wait_until("a reconnect",
               lambda: sample(connector, "ioc_mqtt_connects_total") == 3 and connector.connected)
    wait_until("the SUBACK", lambda: connector.subscribed)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, 99))])
    wait_until("the new event", lambda: pipeline.accepted[(source,)] == 6)
    assert pipeline.duplicates[(source,)] == 5
    assert sample(connector, "ioc_mqtt_disconnects_total") == 2


def test_receive_maximum_bounds_what_the_broker_sends_before_acks(
        mosquitto: Server, unique: str, connectors: Make) -> None:
    """MQTT 5 Receive Maximum reaches the broker: with 3, it sends 3 and waits for their PUBACKs."""
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    sink = HoldingSink()
    _, pipeline = connectors(mosquitto, sink, client_id=f"ioc-{unique}", subscribe=[topic], receive_maximum=3)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(10)])
    wait_until("three deliveries", lambda: pipeline.accepted[(source,)] == 3)
    time.sleep(0.2)  # a negative: the broker must not send a fourth before an ack
    assert pipeline.accepted[(source,)] == 3
    wait_until("the rest, as acks go out",
               lambda: sink.release() >= 0 and pipeline.accepted[(source,)] == 10)


@pytest.mark.parametrize("client", CLIENTS)
def test_closing_with_unacknowledged_messages_gets_them_again(
        mosquitto: Server, unique: str, connectors: Make, client: str) -> None:
    """A stop before the points are durable (the sink's flush failed) leaves them with the broker."""
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    sink = HoldingSink()
    connector, pipeline = connectors(mosquitto, sink, client_id=f"ioc-{unique}", subscribe=[topic], client=client)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(3)])
    wait_until("three held events", lambda: pipeline.accepted[(source,)] == 3)
    connector.close(1)
    connector.close(1)  # twice is fine
    assert connector.problems() == [f"mqtt: not connected to {connector.url} (closed)"]
    sink.release()  # too late: the connection is gone, so these acks are skipped
    assert sample(connector, "ioc_mqtt_acks_skipped_total") == 3
    connector.start()  # same client id: the session and its unacknowledged messages are still there
    wait_until("the redelivery", lambda: pipeline.duplicates[(source,)] == 3)
    sink.release()
    wait_until("three acks", lambda: sample(connector, "ioc_mqtt_acks_sent_total") == 3)


def test_paused_intake_neither_processes_nor_acknowledges(
        mosquitto: Server, unique: str, connectors: Make) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    connector, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[topic])
    connector.pause_intake()
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(3)])
    time.sleep(0.3)  # a negative: give the broker time to deliver what would be processed
    assert pipeline.received[(source,)] == 0
    connector.close(1)
    connector.start()
    wait_until("the three after the restart", lambda: pipeline.accepted[(source,)] == 3)


# --- sessions and outages --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("client", CLIENTS)
def test_events_published_while_down_arrive_on_return(
        mosquitto: Server, unique: str, connectors: Make, protocol: str, client: str) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    first, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[topic], protocol=protocol,
                                 client=client)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, 0))])
    wait_until("the first event", lambda: pipeline.accepted[(source,)] == 1)
    first.close(2)
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(1, 21)])
    # A new connector (a restarted daemon) with the same client id resumes the session.
    connectors(mosquitto, pipeline=pipeline, client_id=f"ioc-{unique}", subscribe=[topic], protocol=protocol,
               client=client)
    wait_until("the 20 events published while down", lambda: pipeline.accepted[(source,)] == 21)
    assert pipeline.duplicates[(source,)] == 0


def test_broker_down_at_start_then_restarted(private_mosquitto: Server, unique: str,
                                             connectors: Make) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    private_mosquitto.stop()
    with capture_logs() as logs:
        connector, pipeline = connectors(private_mosquitto, client_id=f"ioc-{unique}", wait=False)
        wait_until("a reconnect attempt", lambda: any(e["event"] == "mqtt.reconnecting" for e in logs))
    assert not connector.connected
    assert connector.problems()[0].startswith(f"mqtt: not connected to mqtt://127.0.0.1:{private_mosquitto.port} (")
    assert sample(connector, "ioc_mqtt_connected") == 0
    retry = next(e for e in logs if e["event"] == "mqtt.reconnecting")
    assert 0.05 <= retry["delay"] <= 0.3

    private_mosquitto.restart()
    wait_until("the first connection", lambda: connector.subscribed)
    publish_all("127.0.0.1", private_mosquitto.port, [(topic, event(source, i)) for i in range(5)])
    wait_until("five events", lambda: pipeline.accepted[(source,)] == 5)

    with capture_logs() as logs:
        private_mosquitto.restart()
        wait_until("the reconnect after the broker's restart",
                   lambda: sample(connector, "ioc_mqtt_connects_total") == 2 and connector.connected)
    disconnected = next(e for e in logs if e["event"] == "mqtt.disconnected")
    assert "reason_code" in disconnected
    wait_until("the SUBACK", lambda: connector.subscribed)
    publish_all("127.0.0.1", private_mosquitto.port, [(topic, event(source, i)) for i in range(5, 10)])
    wait_until("the events after the restart", lambda: pipeline.accepted[(source,)] == 10)
    assert sample(connector, "ioc_mqtt_disconnects_total") == 1


def test_dead_letters_wait_while_disconnected_within_a_bound(tmp_path: Path) -> None:
    """With no broker, dead letters queue up to `max_pending`; the rest are counted as dropped. When the
    broker comes, the queued ones are delivered."""
    port = free_port()
    settings = MqttSettings.model_validate({"url": f"mqtt://127.0.0.1:{port}", "client_id": "dl",
                                            "reconnect_min": "50ms", "reconnect_max": "200ms"})
    connector, pipeline = assemble(settings, max_pending=3)
    publisher = connector.publisher
    assert publisher is not None
    pipeline.publish_dead_letter("src", "before start", b"x")  # not started: dropped
    connector.start()
    try:
        for index in range(5):
            pipeline.publish_dead_letter("src", "no broker", f"payload {index}".encode())
        assert publisher.pending() == 3
        assert sample(connector, "ioc_mqtt_dead_letters_published_total") == 3
        assert sample(connector, "ioc_mqtt_dead_letters_dropped_total") == 3
        server = start_mosquitto(tmp_path / "late", port=port)
        try:
            wait_until("the connection", lambda: connector.connected)
            wait_until("the queued dead letters to be acknowledged", lambda: publisher.pending() == 0)
            assert publisher.publish("ioc/v1/alerts/x", b"{}")
        finally:
            connector.close(2)
            server.stop()
    finally:
        connector.close(1)
    assert not publisher.publish("ioc/v1/alerts/x", b"{}")
    assert sample(connector, "ioc_mqtt_publishes_dropped_total") == 1


def test_the_sample_config_builds_a_connector() -> None:
    settings = load_settings(Path(__file__).resolve().parents[2] / "connectors" / "mqtt" / "sample.conf")
    connector, _ = assemble(settings.mqtt)
    assert connector.problems() == ["mqtt: not connected to mqtt://127.0.0.1:1883 (not started)"]
    assert settings.mqtt.protocol == "5" and settings.mqtt.subscribe == ["ioc/v1/events/#"]


def test_config_mistakes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="tls_ca: set, but url"):
        MqttSession(MqttSettings(url="mqtt://broker:1883", tls_ca="/etc/ca.pem"))
    with pytest.raises(ConfigError, match="embedded"):
        MqttSession(MqttSettings(url="embedded"))
    with pytest.raises(ConfigError, match="tls_key: set without tls_cert"):
        MqttSession(MqttSettings(url="mqtts://broker", tls_key="/etc/key.pem"))


# --- variants --------------------------------------------------------------------------------------------


def test_shared_subscription(mosquitto: Server, unique: str, connectors: Make) -> None:
    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    _, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[topic], share_group=f"g{unique}")
    publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, i)) for i in range(10)])
    wait_until("ten events through the shared subscription", lambda: pipeline.accepted[(source,)] == 10)


def _openssl_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    openssl = find_binary("openssl", "openssl")
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                          "server.pem"))
    ext = directory / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ioc test CA",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


def test_tls_with_a_ca_and_insecure(tmp_path: Path, unique: str, connectors: Make) -> None:
    ca, cert, key = _openssl_certificates(tmp_path)
    server = start_mosquitto(tmp_path / "broker", extra_conf=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    try:
        url = f"mqtts://127.0.0.1:{server.port}"
        verified, _ = connectors(server, url=url, client_id=f"a-{unique}", tls_ca=str(ca))
        insecure, _ = connectors(server, url=url, client_id=f"b-{unique}", tls_insecure=True, client="paho")
        assert verified.connected and insecure.connected
        untrusted, _ = connectors(server, url=url, client_id=f"c-{unique}", wait=False)
        time.sleep(0.3)  # a negative: the system CAs do not know our test CA
        assert not untrusted.connected
    finally:
        server.stop()


def test_denied_subscription_is_logged_with_its_topic(tmp_path: Path, unique: str,
                                                      connectors: Make) -> None:
    """Mosquitto's dynamic-security plugin checks subscriptions (acl_file does not): a user with no role
    gets a SUBACK failure, which the connector logs as an error naming the topic."""
    plugin = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
    if not os.path.exists(plugin):
        pytest.skip("mosquitto's dynamic security plugin is not installed")
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_bytes(orjson.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [{"username": "ioc", "password": base64.b64encode(digest).decode(),
                     "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": []}],
        "groups": [], "roles": [],
    }))
    server = start_mosquitto(tmp_path / "broker", extra_conf=f"plugin {plugin}\nplugin_opt_config_file {dynsec}\n")
    try:
        with capture_logs() as logs:
            connector, _ = connectors(server, client_id=f"ioc-{unique}", username="ioc", password="pw")
        failed = [e for e in logs if e["event"] == "mqtt.subscribe_failed"]
        assert len(failed) == 1 and failed[0]["topic"] == "ioc/v1/events/#"
        assert failed[0]["log_level"] == "error" and failed[0]["reason_code"] >= 0x80
        assert connector.problems() == [
            "mqtt: subscription refused: ioc/v1/events/# (Not authorized)"]
    finally:
        server.stop()


# --- failpoints on the MQTT path -------------------------------------------------------------------------


def test_failpoints_before_ack_and_at_hand_over(mosquitto: Server, unique: str,
                                                connectors: Make) -> None:
    """`mqtt.before_ack=error` fails the acknowledgements as a broken socket would: the connection drops
    and the broker redelivers (a duplicate, then acknowledged). `mqtt.handle=error` fails a hand-over: the
    messages stay unacknowledged, nothing is counted, and they come back after a reconnect."""
    from ioc import failpoints

    source = f"s-{unique}"
    topic = f"ioc/v1/events/{source}"
    connector, pipeline = connectors(mosquitto, client_id=f"ioc-{unique}", subscribe=[topic])
    try:
        failpoints.configure("mqtt.before_ack=1*error")
        with capture_logs() as logs:
            publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, 1))])
            wait_until("the redelivery after the failed ack", lambda: pipeline.duplicates[(source,)] == 1)
            wait_until("the second ack", lambda: sample(connector, "ioc_mqtt_acks_sent_total") == 1)
        assert [entry["event"] for entry in logs if entry["event"] == "mqtt.ack_failed"] == ["mqtt.ack_failed"]
        assert sample(connector, "ioc_mqtt_acks_skipped_total") == 1
        assert sample(connector, "ioc_mqtt_connects_total") == 2
        assert pipeline.accepted[(source,)] == 1

        failpoints.configure("mqtt.handle=1*error")
        with capture_logs() as logs:
            publish_all("127.0.0.1", mosquitto.port, [(topic, event(source, 2))])
            wait_until("the failed hand-over", lambda: failpoints.hits("mqtt.handle") == 1)
        assert pipeline.received[(source,)] == 2  # the failed one was not counted
        assert any(entry["event"] == "mqtt.message_failed" for entry in logs)
        drop_connection(connector)  # unacknowledged: the broker sends it again on the next connection
        wait_until("the event after the reconnect", lambda: pipeline.accepted[(source,)] == 2)
    finally:
        failpoints.configure("")
