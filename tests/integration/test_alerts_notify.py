"""Alert notification against real servers: Mosquitto (through the daemon's own `MqttConnector`) for
`ioc/v1/alerts/{rule}` and the retained `ioc/v1/alerts/state/{fingerprint}`, and a local HTTP receiver
(`http.server` in a thread) for webhooks with retries; each delivery leaves the outbox only once the
broker acknowledged it or the receiver answered."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from ioc.connectors.mqtt import MqttConnector
from ioc.rules.updates import AlertUpdate, fingerprint

from ioc.alerts.config import AlertsSettings, WebhookSettings
from ioc.alerts.manager import AlertManager
from ioc.alerts.notify import MqttNotifier, Queued, webhook
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore
from ioc.config import MqttSettings
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from tests.mqtt_tools import assemble_mqtt
from tests.servers import Server, free_port
from tests.waiting import wait_until

T0 = 1_772_409_600.0


def update(rule: str, state: str, area: str = "22723", at: float = T0) -> AlertUpdate:
    return AlertUpdate(rule=rule, labels={"area": area}, severity="critical", state=state,  # type: ignore[arg-type]
                       summary=f"{rule} tại {area}", value=55.0, at=at)


# --- MQTT ----------------------------------------------------------------------------------------------

class Subscriber:
    """A paho MQTT 3.1.1 client keeping (topic, payload, qos, retain) of every message."""

    def __init__(self, server: Server, *topics: str) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self._cond = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", server.port)
        self._client.subscribe([(topic, 1) for topic in topics])
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topics}")

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), message.qos, bool(message.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, int, bool]]], bool],
                 timeout: float = 10.0) -> list[tuple[str, bytes, int, bool]]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"timed out; got {self.messages}")
            return list(self.messages)

    def on(self, topic: str) -> list[tuple[bytes, int, bool]]:
        with self._cond:
            return [(payload, qos, retain) for t, payload, qos, retain in self.messages if t == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def connector(mosquitto: Server, unique: str) -> Iterator[MqttConnector]:
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=60, max_keys=100), max_bytes=1 << 20,
                        max_future=300)
    settings = MqttSettings.model_validate({"url": mosquitto.url, "client_id": f"ioc-alerts-{unique}",
                                            "subscribe": [f"ioc/v1/events/{unique}"]})
    connector, _ = assemble_mqtt(settings, pipeline)
    connector.start()
    wait_until("the broker connection", lambda: connector.connected)
    yield connector
    connector.close()


@pytest.fixture
def manager(tmp_path: Path, connector: MqttConnector) -> Iterator[AlertManager]:
    assert connector.publisher is not None
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"), notifiers=[MqttNotifier(connector.publisher)])
    yield manager
    manager.close()


def test_a_change_arrives_at_qos1_and_the_state_is_retained_then_cleared(
        mosquitto: Server, manager: AlertManager, unique: str) -> None:
    rule = f"outage-{unique}"
    # Only this test's own state topic: the shared broker holds other tests' retained states.
    live = Subscriber(mosquitto, f"ioc/v1/alerts/{rule}",
                      f"ioc/v1/alerts/state/{fingerprint(rule, {'area': '22723'})}")
    try:
        alert = manager.apply(update(rule, "firing"))
        assert alert is not None
        state_topic = f"ioc/v1/alerts/state/{alert.fingerprint}"
        live.wait_for(lambda got: len(got) >= 2)
        (payload, qos, _), = live.on(f"ioc/v1/alerts/{rule}")
        body = orjson.loads(payload)
        assert qos == 1
        assert (body["id"], body["state"], body["change"]) == (alert.id, "firing", "firing")
        assert body["silenced"] is False
        assert body["labels"] == {"area": "22723"} and body["fingerprint"] == alert.fingerprint

        late = Subscriber(mosquitto, state_topic)
        try:
            late.wait_for(lambda got: len(got) >= 1)
            (retained, qos, retain), = late.on(state_topic)
            assert retain and qos == 1 and orjson.loads(retained)["id"] == alert.id
        finally:
            late.close()

        manager.apply(update(rule, "resolved", at=T0 + 60))
        live.wait_for(lambda got: len(got) >= 4)
        resolved = [orjson.loads(p) for p, _, _ in live.on(f"ioc/v1/alerts/{rule}")]
        assert [(b["state"], b["change"]) for b in resolved] == [("firing", "firing"),
                                                                 ("resolved", "resolved")]
        assert live.on(state_topic)[-1][0] == b""  # the retained state cleared
    finally:
        live.close()
    # A subscriber after the resolve finds no retained state: a marker published after its SUBACK comes
    # first (the broker sends retained messages while handling the SUBSCRIBE).
    marker = f"ioc/test/{unique}/marker"
    after = Subscriber(mosquitto, state_topic, marker)
    try:
        assert manager_publish(manager, marker)
        got = after.wait_for(lambda got: any(topic == marker for topic, *_ in got))
        assert [topic for topic, *_ in got] == [marker]
    finally:
        after.close()


def owed(manager: AlertManager) -> list[tuple[str, str]]:
    """(notifier, change) of what the outbox still holds, once settled rows are removed."""
    assert manager.outbox.flush(5)
    return [(row.notifier, row.change) for row in manager.store.outbox()]


def test_an_mqtt_delivery_leaves_the_outbox_once_the_broker_acknowledged_it(
        private_mosquitto: Server, store_url: str, unique: str) -> None:  # on SQLite and on PostgreSQL
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=60, max_keys=100), max_bytes=1 << 20,
                        max_future=300)
    settings = MqttSettings.model_validate({"url": private_mosquitto.url, "client_id": f"ioc-out-{unique}",
                                            "subscribe": [f"ioc/v1/events/{unique}"]})
    connector, _ = assemble_mqtt(settings, pipeline)
    connector.start()
    wait_until("the broker connection", lambda: connector.connected)
    assert connector.publisher is not None
    manager = AlertManager(AlertStore(store_url), notifiers=[MqttNotifier(connector.publisher)])
    rule = f"outbox-{unique}"
    live = Subscriber(private_mosquitto, f"ioc/v1/alerts/{rule}")
    try:
        private_mosquitto.pause()  # no PUBACK while it is frozen
        try:
            alert = manager.apply(update(rule, "firing"))
            time.sleep(0.3)  # ample for a PUBACK, were the broker running
            assert alert is not None and owed(manager) == [("mqtt", "firing")]
        finally:
            private_mosquitto.resume()
        wait_until("the outbox emptied after the PUBACKs", lambda: owed(manager) == [])
        live.wait_for(lambda got: len(got) >= 1)
        (payload, _, _), = live.on(f"ioc/v1/alerts/{rule}")
        body = orjson.loads(payload)
        assert body["id"] == alert.id and len(body["notification_id"]) > 8
    finally:
        live.close()
        manager.close()
        connector.close()


def manager_publish(manager: AlertManager, topic: str) -> bool:
    notifier = manager.chain.notifiers[0]
    assert isinstance(notifier, MqttNotifier)
    return notifier.publisher.publish(topic, b"marker", qos=1)


def test_a_silenced_alert_is_retained_but_not_published(
        mosquitto: Server, manager: AlertManager, unique: str) -> None:
    rule = f"cells-{unique}"
    manager.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
                                                 "duration": "1h"}), actor="truc-ban-1")
    live = Subscriber(mosquitto, f"ioc/v1/alerts/{rule}",
                      *(f"ioc/v1/alerts/state/{fingerprint(rule, {'area': area})}" for area in ("22723", "22724")))
    try:
        silenced = manager.apply(update(rule, "firing", area="22723"))
        loud = manager.apply(update(rule, "firing", area="22724"))
        assert silenced and loud and silenced.silenced and not loud.silenced
        live.wait_for(lambda got: len(live.on(f"ioc/v1/alerts/{rule}")) >= 1 and len(got) >= 3)
        published = [orjson.loads(p)["id"] for p, _, _ in live.on(f"ioc/v1/alerts/{rule}")]
        assert published == [loud.id]  # QoS 1 from one client keeps order: the silenced one never came
        (retained, _, _), = live.on(f"ioc/v1/alerts/state/{silenced.fingerprint}")
        assert orjson.loads(retained)["silenced"] is True
    finally:
        live.close()
    late = Subscriber(mosquitto, f"ioc/v1/alerts/state/{silenced.fingerprint}")
    try:
        late.wait_for(lambda got: len(got) >= 1)
        (payload, _, retain), = late.on(f"ioc/v1/alerts/state/{silenced.fingerprint}")
        assert retain and orjson.loads(payload)["id"] == silenced.id
    finally:
        late.close()
    # Clean the retained messages this test left on the shared broker.
    for alert in (silenced, loud):
        manager.apply(update(rule, "resolved", area=alert.labels["area"], at=T0 + 60))


# --- webhooks ------------------------------------------------------------------------------------------

class Receiver:
    """A local HTTP server answering each POST with the next status of `statuses` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[int, dict[str, str], Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((status, dict(self.headers), orjson.loads(body)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ioc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver([500, 500])
    yield receiver
    receiver.close()


def hook_settings(url: str, **values: Any) -> WebhookSettings:
    return WebhookSettings.model_validate({"url": url, "backoff_min": "20ms", "backoff_max": "100ms",
                                           "timeout": "2s", "headers": {"Authorization": "Bearer hook"},
                                           **values})


def test_a_webhook_is_retried_after_5xx_and_delivered_once(store_url: str, receiver: Receiver) -> None:
    hook = webhook(hook_settings(receiver.url))
    manager = AlertManager(AlertStore(store_url), notifiers=[hook])
    try:
        started = time.monotonic()
        alert = manager.apply(update("coverage-outage", "firing"))
        assert time.monotonic() - started < 1.0  # apply queued it; it did not wait for the retries
        assert alert is not None and hook.wait_idle(10)
        assert [status for status, _, _ in receiver.requests] == [500, 500, 200]
        _, headers, body = receiver.requests[-1]
        assert headers["Authorization"] == "Bearer hook" and headers["Content-Type"] == "application/json"
        assert body["change"] == "firing" and body["alert"]["id"] == alert.id
        assert body["alert"]["state"] == "firing" and body["alert"]["acknowledged"] is None
        assert hook.outcomes() == {"sent": 1, "failed": 0, "dropped": 0} and hook.retries == 2
        # Every attempt carries the same idempotency key; delivered, it leaves the outbox.
        keys = {headers["Idempotency-Key"] for _, headers, _ in receiver.requests}
        assert keys == {body["notification_id"]} and owed(manager) == []
        port = receiver.server.server_address[1]
        assert hook.name == f"webhook:127.0.0.1:{port}"  # the default name: host and port, never the path
        assert manager.chain.outcomes()[(hook.name, "sent")] == 1
    finally:
        manager.close()


def test_a_muted_alert_is_not_sent_to_webhooks(tmp_path: Path) -> None:
    receiver = Receiver([])
    hook = webhook(hook_settings(receiver.url))
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"), notifiers=[hook])
    try:
        manager.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
                                                     "duration": "1h"}), actor="op")
        muted = manager.apply(update("coverage-outage", "firing", area="22723"))
        manager.apply(update("coverage-outage", "resolved", area="22723", at=T0 + 1))
        loud = manager.apply(update("coverage-outage", "firing", area="22724"))
        assert muted and muted.silenced and loud
        assert hook.wait_idle(10)
        sent = [(body["alert"]["id"], body["change"]) for _, _, body in receiver.requests]
        assert sent == [(loud.id, "firing")]
    finally:
        manager.close()
        receiver.close()


def test_a_4xx_is_not_retried_and_a_dead_receiver_fails_after_max_attempts(tmp_path: Path) -> None:
    receiver = Receiver([404])
    refused = webhook(hook_settings(f"http://127.0.0.1:{free_port()}/", name="nobody", max_attempts=3))
    gone = webhook(hook_settings(receiver.url, name="gone"))
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"), notifiers=[refused, gone])
    try:
        manager.apply(update("coverage-outage", "firing"))
        assert refused.wait_idle(10) and gone.wait_idle(10)
        assert [status for status, _, _ in receiver.requests] == [404]
        assert gone.outcomes()["failed"] == 1 and gone.retries == 0
        assert refused.outcomes()["failed"] == 1 and refused.retries == 2  # connection refused, 3 attempts
        text = b"".join(orjson.dumps([s.labels, s.value]) for m in manager.metrics() for s in m.samples
                        if s.name == "ioc_alert_notifications_total")
        assert b'[{"notifier":"nobody","outcome":"failed"},1]' in text
    finally:
        manager.close()
        receiver.close()


def test_the_webhook_queue_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    receiver = Receiver([])
    release, entered = threading.Event(), threading.Event()
    original = receiver.server.RequestHandlerClass.do_POST  # type: ignore[attr-defined]

    def slow_post(handler: http.server.BaseHTTPRequestHandler) -> None:
        entered.set()
        release.wait(10)
        original(handler)

    receiver.server.RequestHandlerClass.do_POST = slow_post  # type: ignore[attr-defined]
    hook = webhook(hook_settings(receiver.url, queue_max=2))
    assert isinstance(hook, Queued)
    manager = AlertManager(AlertStore(tmp_path / "ioc.db"), settings=AlertsSettings(), notifiers=[hook])
    try:
        manager.apply(update("coverage-outage", "firing", area="0"))
        assert entered.wait(10)  # the first delivery is in flight, held by the receiver
        for index in range(1, 6):
            manager.apply(update("coverage-outage", "firing", area=str(index)))
        assert hook.outcomes()["dropped"] == 3 and hook.pending() == 3
        release.set()
        assert hook.wait_idle(10)
        outcomes = hook.outcomes()
        # One in flight and two queued are delivered; the rest were dropped and counted.
        assert outcomes == {"sent": 3, "failed": 0, "dropped": 3}
        assert len(receiver.requests) == 3
    finally:
        release.set()
        manager.close()
        receiver.close()
