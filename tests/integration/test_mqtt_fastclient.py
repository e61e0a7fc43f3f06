"""FastClient (connectors/mqtt/fastclient.py) against a real Mosquitto: the buffered, lean receive path
delivers exactly what stock paho delivers, in order, for both protocols, at both QoS, across packets that
straddle the read buffer, and hands packets with MQTT 5 properties to paho's own decoding."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from ioc.connectors.mqtt.fastclient import READ_SIZE, FastClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mqtt_tools import publish_all
from tests.servers import Server

Received = tuple[str, bytes, int]  # topic, payload, qos


class Subscriber:
    """A FastClient that records what arrives through each path."""

    def __init__(self, server: Server, topic: str, *, protocol: int, qos: int) -> None:
        self.raw: list[Received] = []
        self.decoded: list[tuple[str, bytes, int, Properties | None]] = []
        self.changed = threading.Condition()
        client = FastClient(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol, manual_ack=qos > 0,
                            client_id="", clean_session=True if protocol != mqtt.MQTTv5 else None)
        self.client = client
        client.on_raw_message = self._on_raw
        client.on_message = self._on_message
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", server.port)
        client.loop_start()
        client.subscribe(topic, qos)
        assert subscribed.wait(10), "no SUBACK"

    def _on_raw(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        if qos:
            self.client.ack(mid, qos)
        with self.changed:
            self.raw.append((topic.decode(), payload, qos))
            self.changed.notify_all()

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.qos:
            self.client.ack(message.mid, message.qos)
        with self.changed:
            self.decoded.append((message.topic, bytes(message.payload), message.qos, message.properties))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        with self.changed:
            arrived = self.changed.wait_for(lambda: len(self.raw) + len(self.decoded) >= count, timeout)
        assert arrived, f"{len(self.raw) + len(self.decoded)} of {count} messages arrived"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for subscriber in made:
        subscriber.close()


def payloads() -> list[bytes]:
    """Sizes that cross every boundary the reader cares about: empty, 1-4 length bytes, over a buffer."""
    sizes = [0, 1, 120, 127, 128, 300, 16_383, 16_384, 70_000, READ_SIZE, READ_SIZE + 1, 2 * READ_SIZE + 7]
    sizes += [170] * 3000  # a burst of small ones, many per read and straddling each read's end
    return [bytes([65 + index % 26]) * size for index, size in enumerate(sizes)]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
@pytest.mark.parametrize("qos", [0, 1])
def test_every_message_arrives_whole_and_in_order(mosquitto: Server, unique: str, protocol: int, qos: int,
                                                  subscribers: list[Subscriber]) -> None:
    topic = f"fast/{unique}/{protocol}/{qos}"
    subscriber = Subscriber(mosquitto, f"{topic}/#", protocol=protocol, qos=qos)
    subscribers.append(subscriber)
    sent = [(f"{topic}/{index % 5}", payload) for index, payload in enumerate(payloads())]
    publish_all("127.0.0.1", mosquitto.port, sent, qos=1)  # QoS 1 publishing: the broker loses none
    subscriber.wait_for(len(sent))
    assert subscriber.decoded == []  # nothing needed paho's own decoding
    assert [(t, p) for t, p, _ in subscriber.raw] == sent
    assert {q for _, _, q in subscriber.raw} == {qos}
    assert subscriber.client.raw_messages == len(sent)


def test_properties_go_through_paho_decoding_in_order(mosquitto: Server, unique: str,
                                                      subscribers: list[Subscriber]) -> None:
    topic = f"fast/{unique}/props"
    subscriber = Subscriber(mosquitto, topic, protocol=mqtt.MQTTv5, qos=1)
    subscribers.append(subscriber)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = ("vendor", "vnpt")
        infos = [publisher.publish(topic, b"plain-1", qos=1),
                 publisher.publish(topic, b"with-props", qos=1, properties=properties),
                 publisher.publish(topic, b"plain-2", qos=1)]
        for info in infos:
            info.wait_for_publish(10)
        subscriber.wait_for(3)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    assert [p for _, p, _ in subscriber.raw] == [b"plain-1", b"plain-2"]
    [(decoded_topic, payload, qos, received_properties)] = subscriber.decoded
    assert (decoded_topic, payload, qos) == (topic, b"with-props", 1)
    assert received_properties is not None
    assert received_properties.UserProperty == [("vendor", "vnpt")]


def test_acknowledged_messages_are_not_redelivered(mosquitto: Server, unique: str) -> None:
    """manual_ack through the lean path: what was acked is gone from the persistent session."""
    topic = f"fast/{unique}/acks"
    client_id = f"fast-{unique}"
    got: list[bytes] = []
    done = threading.Event()

    def connect() -> FastClient:
        client = FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                            clean_session=False, manual_ack=True)

        def on_raw(_topic: bytes, payload: bytes, mid: int, qos: int) -> None:
            got.append(payload)
            if payload != b"unacked":
                client.ack(mid, qos)
            if len(got) >= 3:
                done.set()

        client.on_raw_message = on_raw
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        client.subscribe(topic, 1)
        assert subscribed.wait(10)
        return client

    first = connect()
    publish_all("127.0.0.1", mosquitto.port, [(topic, b"one"), (topic, b"two"), (topic, b"unacked")], qos=1)
    assert done.wait(10)
    time.sleep(0.3)  # the PUBACKs leave
    first.disconnect()
    first.loop_stop()
    got.clear()
    done.clear()
    second = connect()
    try:
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        second.disconnect()
        second.loop_stop()
    assert got == [b"unacked"]


class CountingSocket:
    """Wraps paho's wake-up socket to count the bytes written into it (one per `send`)."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_packets_queued_in_paho_thread_or_a_batch_wake_it_once_at_most(mosquitto: Server, unique: str) -> None:
    """A publish from a message callback needs no wake-up of paho's thread; acknowledgements queued from
    another thread inside `batched()` share one. Either way every packet goes out: the echo arrives and
    nothing acknowledged comes back on the next connection."""
    topic, echo = f"fast/{unique}/in", f"fast/{unique}/echo"
    client_id = f"fast-{unique}"
    mids: list[int] = []
    changed = threading.Condition()

    def on_raw(_topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        if payload == b"0":
            client.publish(echo, b"echo", qos=1)  # from paho's own thread
        with changed:
            mids.append(mid)
            changed.notify_all()

    client = FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=False, manual_ack=True)
    client.on_raw_message = on_raw
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe(topic, 1)
    assert subscribed.wait(10)
    wakeups = CountingSocket(client._sockpairW)
    client._sockpairW = wakeups  # type: ignore[assignment]
    listener = Subscriber(mosquitto, echo, protocol=mqtt.MQTTv311, qos=1)
    try:
        publish_all("127.0.0.1", mosquitto.port, [(topic, str(i).encode()) for i in range(50)])
        with changed:
            assert changed.wait_for(lambda: len(mids) == 50, 10)
        listener.wait_for(1)
        assert wakeups.sends == 0  # the echo was written without one
        with client.batched():
            for mid in mids:
                client.ack(mid, 1)
        assert wakeups.sends == 1
        deadline = time.monotonic() + 5
        while client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()
        listener.close()
    mids.clear()
    again = FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                       clean_session=False, manual_ack=True)
    again.on_raw_message = on_raw
    again.connect("127.0.0.1", mosquitto.port)
    again.loop_start()
    try:
        time.sleep(0.5)  # a negative: every message was acknowledged, none may come back
    finally:
        again.disconnect()
        again.loop_stop()
    assert mids == []
