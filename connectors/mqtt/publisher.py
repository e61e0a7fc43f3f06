"""What the daemon publishes on its MQTT session: dead letters (the pipeline's), alerts and the retained
alert state (the alerts side's, through `ioc.alerts.notify.MqttNotifier`).

QoS 1 publishes wait in paho while disconnected and are sent on reconnect; at most `max_pending` may wait
(paho rescans its queue on every PUBACK, and a flood of dead letters must not grow memory without bound):
past that a publish is dropped and counted, with one log line per episode of drops.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

import paho.mqtt.client as mqtt
import structlog
from ioc.connectors.mqtt.session import MqttSession
from ioc.connectors.mqtt.topics import DEAD_LETTER_PREFIX
from prometheus_client.core import Metric

from ioc.ingest.deadletter import dead_letter_body
from ioc.metrics import MetricSource, counter, gauge

log = structlog.get_logger("ioc.mqtt")

DEFAULT_MAX_PENDING = 1_000  # QoS 1 publishes waiting for the broker; paho rescans them on every PUBACK


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether a publish needs no more waiting: acknowledged, or failed for good (paho raises then)."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return True


class MqttPublisher:
    """Publishes on `session`'s connection: the pipeline's dead-letter target (`publish_dead_letter`) and
    the alerts' publisher (`publish`, `pending`)."""

    def __init__(self, session: MqttSession, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.session = session
        self.name = session.name
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()  # QoS>0 publishes not yet acknowledged
        self._pending_client: mqtt.Client | None = None  # whose queue they are in
        self._dropping = False
        self._dead_letters_published = 0
        self._dead_letters_dropped = 0
        self._publishes_dropped = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message (alerts). Returns False (and counts it) when it was dropped."""
        return self._publish(topic, payload, qos, retain, dead_letter=False)

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """The pipeline's dead-letter target: `{"id", "reason", "payload"}` on `ioc/v1/deadletter/{source}`,
        QoS 1."""
        self.publish_dead_letter_body(source, dead_letter_body(reason, payload, source=source))

    def publish_dead_letter_body(self, source: str, body: bytes) -> None:
        """A dead letter's finished body (ioc.ingest.letter_gate's, a cluster's follower held it) on
        `ioc/v1/deadletter/{source}`, QoS 1."""
        self._publish(DEAD_LETTER_PREFIX + source, body, 1, False, dead_letter=True)

    def pending(self) -> int:
        """QoS 1 publishes (dead letters, alerts) not yet acknowledged by the broker."""
        with self._lock:
            return self._prune_pending(self.session.client)

    def _prune_pending(self, client: mqtt.Client | None) -> int:
        pending = self._pending
        if client is not self._pending_client:  # a new start: the old client's queue is gone with it
            pending.clear()
            self._pending_client = client
        while pending and _settled(pending[0]):
            pending.popleft()
        return len(pending)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, *, dead_letter: bool) -> bool:
        session = self.session
        with self._lock:
            client = session.client
            if client is None or session.closed:
                refused = "the connector is closed"
            elif qos > 0 and self._prune_pending(client) >= self._max_pending:
                refused = f"{self._max_pending} publishes already wait for the broker"
            else:
                refused = ""
            if refused:
                self._count_drop(dead_letter)
                first, self._dropping = not self._dropping, True
            else:
                self._dropping = False
        if refused or client is None:
            if refused and first:  # one line per episode of drops; the counters have the rest
                log.warning("mqtt.publish_dropped", connector=self.name, topic=topic, reason=refused)
            return False
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as error:  # a topic paho refuses (wildcards, empty): a bug upstream, not an outage
            log.error("mqtt.publish_failed", connector=self.name, topic=topic, error=str(error))
            with self._lock:
                self._count_drop(dead_letter)
            return False
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
            # Kept in paho's queue and sent on reconnect; clear the code so `is_published()` tells when.
            info.rc = mqtt.MQTT_ERR_SUCCESS
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:  # QoS 0 while disconnected is lost
            with self._lock:
                self._count_drop(dead_letter)
            return False
        with self._lock:
            if qos > 0:
                self._pending.append(info)
            if dead_letter:
                self._dead_letters_published += 1
        return True

    def _count_drop(self, dead_letter: bool) -> None:
        if dead_letter:
            self._dead_letters_dropped += 1
        else:
            self._publishes_dropped += 1

    # --- metrics ---------------------------------------------------------------------------------------

    def metrics(self) -> MetricSource:
        return self.collect

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            pending = self._prune_pending(self.session.client)
            published, dropped = self._dead_letters_published, self._dead_letters_dropped
            publishes_dropped = self._publishes_dropped
        yield counter("ioc_mqtt_dead_letters_published", "Dead letters queued for the broker.", (),
                      {(): float(published)})
        yield counter("ioc_mqtt_dead_letters_dropped",
                      "Dead letters dropped: too many waiting for the broker, or the connector closed.", (),
                      {(): float(dropped)})
        yield counter("ioc_mqtt_publishes_dropped", "Other publishes (alerts) dropped for the same reasons.", (),
                      {(): float(publishes_dropped)})
        yield gauge("ioc_mqtt_pending_publishes", "QoS 1 publishes waiting for the broker's PUBACK.", (),
                    {(): float(pending)})
