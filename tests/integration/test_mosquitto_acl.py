"""The generated password and ACL files on a real Mosquitto: who may publish and read what."""

from __future__ import annotations

import base64
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from structlog.testing import capture_logs

from ioc.config import MqttSettings, Settings, load_settings, token_sha256
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.mosquitto_acl import mosquitto_password_hash, write_mosquitto_files
from tests.mqtt_tools import assemble_mqtt
from tests.servers import Server, find_binary, start_mosquitto
from tests.waiting import wait_until

TOKENS = {"vendor-a": "token-a", "vendor-b": "token-b", "ioc": "daemon-password"}
A_TOPIC = "ioc/v1/events/a-src"
B_TOPIC = "ioc/v1/events/b-src"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    path = tmp_path_factory.mktemp("config") / "ioc.toml"
    path.write_text(f"""
[[vendors]]
name = "vendor-a"
token_sha256 = "{token_sha256(TOKENS["vendor-a"])}"
sources = ["a-src"]

[[vendors]]
name = "vendor-b"
token_sha256 = "{token_sha256(TOKENS["vendor-b"])}"
sources = ["b-src"]
""")
    return load_settings(path)


@pytest.fixture(scope="module")
def broker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One Mosquitto for the module, configured only by the generated files."""
    out = tmp_path_factory.mktemp("acl")
    passwords, acl = write_mosquitto_files(settings, out, dict(TOKENS))
    server = start_mosquitto(out / "broker", password_file=passwords, acl_file=acl)
    yield server
    server.stop()


@dataclass
class Client:
    """A paho client that records its CONNACK, SUBACKs and messages, for assertions."""

    user: str
    password: str
    port: int
    protocol: MQTTProtocolVersion = mqtt.MQTTv5
    connack: ReasonCode | None = None
    subacks: list[list[ReasonCode]] = field(default_factory=list)
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=self.protocol)
        self.client.username_pw_set(self.user, self.password)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho takes float seconds
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None, "no CONNACK")

    def _on_connect(self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        with self._changed:
            self.connack = reason
            self._changed.notify_all()

    def _on_subscribe(self, _c: object, _u: object, _mid: int, reasons: list[ReasonCode], _p: object) -> None:
        with self._changed:
            self.subacks.append(reasons)
            self._changed.notify_all()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def wait(self, predicate: object, what: str, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):  # type: ignore[arg-type]
                raise AssertionError(what)

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        count = len(self.subacks)
        self.client.subscribe([(topic, 1) for topic in topics])
        self.wait(lambda: len(self.subacks) > count, f"no SUBACK for {topics}")
        return self.subacks[count]

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, waiting for the PUBACK. Mosquitto 2.0 closes a 3.1.1 client's connection after a denied
        publish; paho then reconnects and resends what is queued, so a publish that found the connection
        closed still goes out."""
        info = self.client.publish(topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            info.rc = mqtt.MQTT_ERR_SUCCESS  # queued in paho; let wait_for_publish wait for the resend
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def topics(self) -> list[str]:
        with self._changed:
            return [topic for topic, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: Server) -> Iterator[dict[str, Client]]:
    made: dict[str, Client] = {}

    class Factory(dict[str, Client]):
        def __missing__(self, key: str) -> Client:
            user, _, protocol = key.partition("@")
            client = Client(user, TOKENS[user], broker.port, mqtt.MQTTv311 if protocol == "3.1.1" else mqtt.MQTTv5)
            made[key] = client
            self[key] = client
            return client

    yield Factory()
    for client in made.values():
        client.close()


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """The same password and salt give the same line as the tool Mosquitto ships."""
    tool = find_binary("mosquitto_passwd", "mosquitto")
    path = tmp_path / "pw"
    path.write_text("")
    subprocess.run([tool, "-b", str(path), "alice", "s3cret"], check=True, capture_output=True)
    line = path.read_text().strip()
    salt = line.split("$")[3]
    assert line == "alice:" + mosquitto_password_hash("s3cret", salt=base64.b64decode(salt))


def test_vendor_publishes_its_own_source_and_the_daemon_receives(clients: dict[str, Client]) -> None:
    daemon = clients["ioc"]
    assert not daemon.subscribe("ioc/v1/events/#")[0].is_failure
    vendor = clients["vendor-a"]
    vendor.publish(A_TOPIC, b"one")
    vendor.publish(A_TOPIC + "/batch", b"two")  # below its source topic is its own too
    daemon.wait(lambda: len(daemon.messages) >= 2, "the daemon got nothing")
    assert daemon.messages == [(A_TOPIC, b"one"), (A_TOPIC + "/batch", b"two")]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_vendor_cannot_publish_for_another_vendors_source(clients: dict[str, Client], protocol: str) -> None:
    daemon = clients["ioc"]
    daemon.subscribe("ioc/v1/events/#")
    vendor = clients[f"vendor-a@{protocol}"]
    vendor.publish(B_TOPIC, b"forged")  # the broker acknowledges it and drops it silently
    vendor.publish(A_TOPIC, b"control")
    daemon.wait(lambda: (A_TOPIC, b"control") in daemon.messages, "the control message did not arrive")
    assert B_TOPIC not in daemon.topics()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_wrong_password_is_refused_at_connect(broker: Server, protocol: MQTTProtocolVersion) -> None:
    client = Client("vendor-a", "token-b", broker.port, protocol)
    try:
        assert client.connack is not None and client.connack.is_failure
        assert "authori" in str(client.connack).lower() or "password" in str(client.connack).lower()
    finally:
        client.close()
    stranger = Client("nobody", "token-a", broker.port, protocol)
    try:
        assert stranger.connack is not None and stranger.connack.is_failure
    finally:
        stranger.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_vendor_cannot_read_all_events(clients: dict[str, Client], protocol: str) -> None:
    """A vendor subscribing to every event gets none of another vendor's, while its alerts arrive.

    Mosquitto 2.0's acl_file does not check subscriptions (its SUBACK grants `ioc/v1/events/#`); it checks
    each message against the reader's `topic read` lines when delivering, which is what protects the data.
    A broker that does check them answers with a SUBACK failure code instead; both are fine here.
    """
    vendor = clients[f"vendor-b@{protocol}"]
    reasons = vendor.subscribe("ioc/v1/events/#", "ioc/v1/alerts/#")
    clients["vendor-a"].publish(A_TOPIC, b"not for b")
    clients["ioc"].publish("ioc/v1/alerts/test-rule", b"control")
    vendor.wait(lambda: ("ioc/v1/alerts/test-rule", b"control") in vendor.messages, "no alert arrived")
    assert A_TOPIC not in vendor.topics()
    assert not reasons[1].is_failure
    assert reasons[0].is_failure or reasons[0].value == 1  # denied, or granted and filtered on delivery


def test_vendor_reads_only_its_own_dead_letters(clients: dict[str, Client]) -> None:
    vendor = clients["vendor-a@3.1.1"]
    vendor.subscribe("ioc/v1/deadletter/b-src", "ioc/v1/deadletter/a-src")
    daemon = clients["ioc"]
    daemon.publish("ioc/v1/deadletter/b-src", b"b's")
    daemon.publish("ioc/v1/deadletter/a-src", b"a's")
    vendor.wait(lambda: len(vendor.messages) >= 1, "no dead letter arrived")
    assert vendor.messages == [("ioc/v1/deadletter/a-src", b"a's")]


def test_connector_as_daemon_user_end_to_end(broker: Server, clients: dict[str, Client], unique: str) -> None:
    """The daemon logs in with its generated password; a vendor's good event is accepted and its bad one
    comes back to the vendor as a dead letter it is allowed to read."""
    settings = MqttSettings.model_validate({"url": broker.url, "client_id": f"ioc-{unique}", "username": "ioc",
                                            "password": TOKENS["ioc"], "session_expiry": "10s"})
    connector, pipeline = assemble_mqtt(settings, lambda letters: Pipeline(
        sinks=[], dedup=DedupIndex(None, window=86400, max_keys=1000), max_bytes=1 << 20, max_future=300,
        dead_letters=letters))
    vendor = clients["vendor-a"]
    vendor.subscribe("ioc/v1/deadletter/a-src")
    connector.start()
    try:
        wait_until("the SUBACK", lambda: connector.subscribed, 5, explain=connector.problems)
        assert connector.problems() == []
        good = {"id": f"g-{unique}", "source": "a-src", "type": "telemetry", "time": "2026-03-02T08:00:00+07:00",
                "metric": "env.aqi", "value": 42}
        vendor.publish(A_TOPIC, orjson.dumps(good))
        vendor.publish(A_TOPIC, orjson.dumps({**good, "id": f"b-{unique}", "value": "42"}))
        vendor.wait(lambda: len(vendor.messages) >= 1, "no dead letter for the vendor")
        letter = orjson.loads(vendor.messages[0][1])
        assert letter["reason"].startswith("value: ")
        assert orjson.loads(letter["payload"])["id"] == f"b-{unique}"
        assert pipeline.accepted[("a-src",)] == 1
    finally:
        connector.close(2)


def test_connector_with_a_wrong_password_is_refused_and_says_so(broker: Server, unique: str) -> None:
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=86400, max_keys=1000), max_bytes=1 << 20,
                        max_future=300)
    with capture_logs() as logs:
        settings = MqttSettings.model_validate({"url": broker.url, "client_id": f"r-{unique}", "username": "ioc",
                                                "password": "wrong", "reconnect_min": "100ms"})
        refused, _ = assemble_mqtt(settings, pipeline, name="refused")
        refused.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not any(e["event"] == "mqtt.connect_refused" for e in logs):
                time.sleep(0.02)
            assert not refused.connected
            assert refused.problems() == [f"refused: not connected to {broker.url} (refused: Not authorized)"]
        finally:
            refused.close(1)
    refusal = next(e for e in logs if e["event"] == "mqtt.connect_refused")
    assert refusal["log_level"] == "error" and refusal["connector"] == "refused"
