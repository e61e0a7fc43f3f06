"""MQTT helpers for tests and benchmarks: a publisher that waits for every PUBACK, a collector, and the
daemon's MQTT connector assembled as ioc/app.py does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from ioc.connectors.mqtt import MqttConnector, MqttPublisher, MqttSession

from ioc.config import MqttSettings
from ioc.ingest.pipeline import DeadLetterTarget, Pipeline


def assemble_mqtt(settings: MqttSettings, pipeline: Pipeline | Callable[[list[DeadLetterTarget]], Pipeline], *,
                  name: str = "mqtt", max_pending: int = 1000, **connector: Any) -> tuple[MqttConnector, Pipeline]:
    """As ioc/app.py assembles it: the session, its publisher, the pipeline made with the publisher as its
    dead-letter target (`pipeline` is then a factory taking the targets), the connector on the session.
    With a ready `pipeline` (a second connector on the same one), its dead letters stay where they go."""
    session = MqttSession(settings, name=name)
    publisher = MqttPublisher(session, max_pending=max_pending)
    if not isinstance(pipeline, Pipeline):
        pipeline = pipeline([publisher])
    return MqttConnector(session, pipeline, publisher=publisher, **connector), pipeline


def publish_all(host: str, port: int, messages: Iterable[tuple[str, bytes]], *, qos: int = 1,
                username: str | None = None, password: str | None = None, window: int = 1000,
                rate: float | None = None, client_id: str = "", timeout: float = 120.0) -> int:
    """Publish every (topic, payload) and return once the broker acknowledged them all (QoS 1).

    paho's own in-flight limit rescans its table on each ack; a window of our own is faster (NOTES.md).
    `rate` (messages/s) paces the stream, for tests that act while it flows.
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    pending = threading.Semaphore(window)
    done = threading.Condition()
    acked = [0]

    def on_publish(*_: object) -> None:
        pending.release()
        with done:
            acked[0] += 1
            done.notify_all()

    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    sent = 0
    started = time.monotonic()
    try:
        for topic, payload in messages:
            if not pending.acquire(timeout=timeout):
                raise TimeoutError("the broker stopped acknowledging")
            client.publish(topic, payload, qos=qos)
            sent += 1
            if qos == 0:
                pending.release()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if qos > 0:
            with done:
                if not done.wait_for(lambda: acked[0] >= sent, timeout):
                    raise TimeoutError(f"{sent - acked[0]} of {sent} publishes not acknowledged")
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


class Collector:
    """Subscribes and keeps every message received, for assertions on dead letters and alerts."""

    def __init__(self, host: str, port: int, topic: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        if username is not None:
            self._client.username_pw_set(username, password)
        subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(host, port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, message.payload))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
