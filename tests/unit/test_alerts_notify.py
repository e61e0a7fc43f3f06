"""The notifiers' own logic (ioc.alerts.notify) with test doubles: what each sends for which change,
retry policy bounds, and the delivery queue's shutdown. Real Mosquitto and HTTP are in
tests/integration/test_alerts_notify.py."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from ioc.alerts.alert import Acknowledgement, Alert, Change
from ioc.alerts.config import AlertsSettings, WebhookSettings
from ioc.alerts.errors import NotifyError
from ioc.alerts.notify import (
    InfluxNotifier,
    MqttNotifier,
    NotifierChain,
    Queued,
    RetryPolicy,
    StreamNotifier,
    WebhookNotifier,
    build_notifiers,
)
from ioc.errors import SinkFull

T0 = 1_772_409_600.0

FIRING = Alert(id="a1", fingerprint="0123456789abcdef", rule="coverage-outage", severity="critical",
               state="firing", labels={"area": "22723"}, summary="", value=62.5, started_at=T0,
               fired_at=T0 + 300.000123)


class Publisher:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.sent: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        self.sent.append((topic, payload, qos, retain))
        return self.accept


def test_mqtt_topics_for_each_kind_of_alert() -> None:
    publisher = Publisher()
    notifier = MqttNotifier(publisher)
    notifier.notify(FIRING, "firing")
    notifier.notify(replace(FIRING, silenced_by=("s1",)), "muted")
    notifier.notify(replace(FIRING, state="resolved", resolved_at=T0 + 900, silenced_by=("s1",)), "resolved")
    topics = [(topic, qos, retain, payload == b"") for topic, payload, qos, retain in publisher.sent]
    assert topics == [
        ("ioc/v1/alerts/coverage-outage", 1, False, False),
        ("ioc/v1/alerts/state/0123456789abcdef", 1, True, False),
        ("ioc/v1/alerts/state/0123456789abcdef", 1, True, False),  # muted: only the retained state
        ("ioc/v1/alerts/state/0123456789abcdef", 1, True, True),  # resolved: cleared
    ]


def test_a_dropped_mqtt_publish_is_a_notify_error() -> None:
    with pytest.raises(NotifyError, match="dropped the publish to ioc/v1/alerts/coverage-outage") as caught:
        MqttNotifier(Publisher(accept=False)).notify(FIRING, "firing")
    assert not caught.value.retryable


class Sink:
    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.points: list[str] = []
        self.timeouts: list[float | None] = []

    def submit(self, points: list[str], on_durable: Any = None, *, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        if self.full:
            raise SinkFull("influx: queue full")
        self.points.extend(points)


def test_influx_gets_state_changes_at_their_event_time_and_never_waits() -> None:
    sink = Sink()
    notifier = InfluxNotifier(sink)
    notifier.notify(FIRING, "firing")
    notifier.notify(replace(FIRING, acknowledged=Acknowledgement("op", T0 + 400)), "acknowledged")
    notifier.notify(replace(FIRING, silenced_by=("s",)), "muted")
    assert sink.points == [('alert,area=22723,rule=coverage-outage,severity=critical state="firing",'
                            'fingerprint="0123456789abcdef",value=62.5 1772409900000123000')]
    assert sink.timeouts == [0.0]
    with pytest.raises(NotifyError, match="the sink took no point"):
        InfluxNotifier(Sink(full=True)).notify(FIRING, "firing")


def test_the_stream_gets_every_change_with_its_kind() -> None:
    got: list[tuple[str, dict[str, Any]]] = []

    class Stream:
        def publish(self, event: str, data: Any) -> None:
            got.append((event, dict(data)))

    StreamNotifier(Stream()).notify(replace(FIRING, silenced_by=("s",)), "muted")
    (event, data), = got
    assert event == "alert" and data["change"] == "muted" and data["silenced"] is True and data["id"] == "a1"


@pytest.mark.parametrize(("alert", "change", "wanted"), [
    (FIRING, "firing", True),
    (FIRING, "pending", False),  # not in the default `changes`
    (replace(FIRING, silenced_by=("s",)), "firing", False),
    (replace(FIRING, inhibited_by="f" * 16), "firing", False),
    (replace(FIRING, state="resolved", resolved_at=T0 + 1), "resolved", True),
    (replace(FIRING, state="resolved", fired_at=None, resolved_at=T0 + 1), "resolved", False),  # never fired
    (FIRING, "unmuted", True),
    (replace(FIRING, state="pending", fired_at=None), "unmuted", False),
    (FIRING, "acknowledged", False),
])
def test_what_a_webhook_wants(alert: Alert, change: Change, wanted: bool) -> None:
    notifier = WebhookNotifier(WebhookSettings(url="http://127.0.0.1:9/x"))
    assert notifier.wants(alert, change) is wanted
    notifier.close()


def test_webhook_settings_defaults_and_checks() -> None:
    settings = WebhookSettings(url="https://user:pw@chat.example.vn:8443/hooks/secret-path")
    assert settings.name == "webhook:chat.example.vn:8443"
    with pytest.raises(ValueError, match="url"):
        WebhookSettings(url="ftp://x")
    with pytest.raises(ValueError, match="backoff_max must not be less than backoff_min"):
        WebhookSettings.model_validate({"url": "http://x", "backoff_min": "10s", "backoff_max": "1s"})


def test_retry_delays_grow_are_capped_and_honour_retry_after() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_min=1.0, backoff_max=8.0)
    highest = [policy.delay(attempt, rand=lambda low, high: high) for attempt in range(1, 7)]
    lowest = [policy.delay(attempt, rand=lambda low, high: low) for attempt in range(1, 7)]
    assert highest == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert lowest == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]  # jitter within the upper half of the step
    assert policy.delay(1, retry_after=5.0, rand=lambda low, high: low) == 5.0
    assert policy.delay(1, retry_after=600.0, rand=lambda low, high: low) == 8.0


class Flaky:
    """Fails retryably `failures` times, then succeeds; records attempts."""

    name = "flaky"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.attempts = 0

    def notify(self, alert: Alert, change: Change) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise NotifyError("nope", retryable=self.retryable)


def test_queued_retries_up_to_max_attempts() -> None:
    ok = Queued(Flaky(2), policy=RetryPolicy(3, 0.001, 0.002))
    gives_up = Queued(Flaky(5), policy=RetryPolicy(3, 0.001, 0.002))
    for queued in (ok, gives_up):
        queued.notify(FIRING, "firing")
        assert queued.wait_idle(5)
    assert ok.outcomes()["sent"] == 1 and ok.retries == 2
    assert gives_up.outcomes()["failed"] == 1 and gives_up.retries == 2
    assert isinstance(gives_up.inner, Flaky) and gives_up.inner.attempts == 3


def test_close_drops_what_it_cannot_deliver_in_time() -> None:
    gate = threading.Event()

    class Stuck:
        name = "stuck"

        def notify(self, alert: Alert, change: Change) -> None:
            gate.wait(10)
            raise NotifyError("still down", retryable=True)

    queued = Queued(Stuck(), policy=RetryPolicy(5, 30.0, 60.0))
    for _ in range(3):
        queued.notify(FIRING, "firing")
    gate.set()  # the first attempt fails; the retry would wait 30 s
    queued.close(timeout=0.2)
    assert queued.outcomes() == {"sent": 0, "failed": 0, "dropped": 3}
    queued.notify(FIRING, "firing")  # closed: counted, never queued
    assert queued.outcomes()["dropped"] == 4


def test_the_chain_counts_and_build_notifiers_orders_them() -> None:
    chain = NotifierChain([Flaky(1, retryable=False), MqttNotifier(Publisher())])
    chain.notify(FIRING, "firing")
    chain.notify(FIRING, "acknowledged")
    outcomes = chain.outcomes()
    assert outcomes[("flaky", "failed")] == 1 and outcomes[("flaky", "sent")] == 1
    assert outcomes[("mqtt", "sent")] == 2

    class Stream:
        def publish(self, event: str, data: Any) -> None: ...

    settings = AlertsSettings.model_validate({"webhooks": [{"url": "http://127.0.0.1:9/hook"}]})
    names = [n.name for n in build_notifiers(settings, mqtt=Publisher(), sink=Sink(), stream=Stream())]
    assert names == ["sse", "mqtt", "influx", "webhook:127.0.0.1:9"]
