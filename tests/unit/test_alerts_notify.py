"""The notifiers' own logic (ioc.alerts.notify) with test doubles: what each sends for which change,
retry policy bounds, the delivery queue's shutdown, and when each durable notifier settles a notification
(ioc.alerts.outbox). Real Mosquitto and HTTP are in tests/integration/test_alerts_notify.py."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import orjson
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
from ioc.alerts.outbox import Notification, alert_from_record, alert_record
from ioc.errors import SinkFull
from tests.waiting import wait_until

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


class Connector(Publisher):
    """A publisher that, as the MQTT connector, says how many QoS 1 publishes the broker has not
    acknowledged yet (`unacked`, set by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.unacked = 0

    def pending(self) -> int:
        return self.unacked


class Settled:
    """A settle callback that records the sequence numbers it is given."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.at_once: list[int] = []  # those whose row is to go at once (`now`)
        self.event = threading.Event()

    def __call__(self, seq: int, *, now: bool = False) -> None:
        self.seqs.append(seq)
        if now:
            self.at_once.append(seq)
        self.event.set()


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


def test_mqtt_settles_a_delivery_once_the_broker_acknowledged_everything_before_it() -> None:
    connector = Connector()
    notifier = MqttNotifier(connector, poll=0.001)
    settled = Settled()
    connector.unacked = 2  # our two publishes, not yet acknowledged
    notifier.deliver(Notification(FIRING, "firing", "n-1", seq=7), settled)
    assert [orjson.loads(body)["notification_id"] for _, body, _, _ in connector.sent] == ["n-1", "n-1"]
    assert not settled.event.wait(0.05) and notifier.owed() == 1
    connector.unacked = 0  # the PUBACKs came
    assert settled.event.wait(5) and settled.seqs == [7]
    notifier.close(1.0)


def test_mqtt_leaves_what_the_broker_never_acknowledged_in_the_outbox_at_close() -> None:
    connector = Connector()
    connector.unacked = 1  # the broker is away
    notifier = MqttNotifier(connector, poll=0.001)
    settled = Settled()
    notifier.deliver(Notification(FIRING, "firing", "n-1", seq=3), settled)
    notifier.close(0.05)
    assert settled.seqs == []  # still owed: sent again at the next start
    notifier.deliver(Notification(FIRING, "resolved", "n-2", seq=4), settled)  # after close: kept owed
    assert settled.seqs == [] and notifier.owed() == 1
    # A publisher that cannot tell (no `pending`) is taken at its word; a dropped publish is settled by
    # the chain (refused for good).
    plain = Settled()
    MqttNotifier(Publisher()).deliver(Notification(FIRING, "firing", "n-3", seq=5), plain)
    assert plain.seqs == [5]


class Sink:
    def __init__(self, full: bool = False) -> None:
        self.full = full
        self.points: list[str] = []
        self.timeouts: list[float | None] = []

        self.callbacks: list[Any] = []

    def submit(self, points: list[str], on_durable: Any = None, *, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        if self.full:
            raise SinkFull("influx: queue full")
        self.points.extend(points)
        if on_durable is not None:
            self.callbacks.append(on_durable)


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


def test_influx_settles_when_the_sink_has_the_point_durable() -> None:
    sink = Sink()
    notifier = InfluxNotifier(sink)
    assert notifier.wants(FIRING, "firing") and not notifier.wants(FIRING, "acknowledged")
    settled = Settled()
    notifier.deliver(Notification(FIRING, "firing", "n-1", seq=9), settled)
    assert len(sink.points) == 1 and settled.seqs == []
    (durable,) = sink.callbacks
    durable()  # written or spooled
    assert settled.seqs == [9]


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


def test_an_alert_record_brings_back_the_alert_as_it_was_told() -> None:
    alert = replace(FIRING, acknowledged=Acknowledgement("op", T0 + 400), silenced_by=("s1", "s2"),
                    inhibited_by="f" * 16, runbook="https://wiki/x", updated_at=T0 + 401)
    assert alert_from_record(alert_record(alert)) == alert
    assert alert_from_record(alert_record(FIRING)) == FIRING


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
    """Fails retryably `failures` times, then succeeds; records attempts (and what it was sent)."""

    name = "flaky"

    def __init__(self, failures: int, retryable: bool = True) -> None:
        self.failures = failures
        self.retryable = retryable
        self.attempts = 0
        self.sent: list[Notification] = []

    def notify(self, alert: Alert, change: Change) -> None:
        self.send(Notification(alert, change, ""))

    def send(self, note: Notification) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise NotifyError("nope", retryable=self.retryable)
        self.sent.append(note)


def test_queued_retries_up_to_max_attempts() -> None:
    ok = Queued(Flaky(2), policy=RetryPolicy(3, 0.001, 0.002))
    gives_up = Queued(Flaky(5), policy=RetryPolicy(3, 0.001, 0.002))
    for queued in (ok, gives_up):
        queued.notify(FIRING, "firing")
        assert queued.wait_idle(5)
    assert ok.outcomes()["sent"] == 1 and ok.retries == 2
    assert gives_up.outcomes()["failed"] == 1 and gives_up.retries == 2
    assert isinstance(gives_up.inner, Flaky) and gives_up.inner.attempts == 3


def test_queued_settles_what_is_sent_failed_or_dropped_from_a_full_queue() -> None:
    settled = Settled()
    ok = Queued(Flaky(1), policy=RetryPolicy(3, 0.001, 0.002))
    ok.deliver(Notification(FIRING, "firing", "n-1", seq=1), settled)
    assert ok.wait_idle(5) and settled.seqs == [1]
    assert isinstance(ok.inner, Flaky) and [note.id for note in ok.inner.sent] == ["n-1"]
    gives_up = Queued(Flaky(9, retryable=False), policy=RetryPolicy(3, 0.001, 0.002))
    gives_up.deliver(Notification(FIRING, "firing", "n-2", seq=2), settled)
    assert gives_up.wait_idle(5) and settled.seqs == [1, 2] and gives_up.outcomes()["failed"] == 1
    gate = threading.Event()

    class Slow:
        name = "slow"

        def send(self, note: Notification) -> None:
            gate.wait(10)

    full = Queued(Slow(), policy=RetryPolicy(3, 0.001, 0.002), queue_max=1)
    full.deliver(Notification(FIRING, "firing", "n-3", seq=3), settled)  # taken by the thread
    wait_until("n-3 taken by the thread", lambda: full.pending() == 1 and not full._queue, 5)
    full.deliver(Notification(FIRING, "firing", "n-4", seq=4), settled)  # queued
    full.deliver(Notification(FIRING, "firing", "n-5", seq=5), settled)  # no room: dropped for good
    assert settled.seqs == [1, 2, 5] and full.outcomes()["dropped"] == 1
    gate.set()
    assert full.wait_idle(5) and settled.seqs == [1, 2, 5, 3, 4]
    assert settled.at_once == [1, 2, 3, 4]  # a webhook's row goes right after its answer
    full.close(1.0)



def test_close_keeps_in_the_outbox_what_it_cannot_deliver_in_time() -> None:
    gate = threading.Event()

    class Stuck:
        name = "stuck"

        def send(self, note: Notification) -> None:
            gate.wait(10)
            raise NotifyError("still down", retryable=True)

    settled = Settled()
    queued = Queued(Stuck(), policy=RetryPolicy(5, 30.0, 60.0))
    for seq in (1, 2):
        queued.deliver(Notification(FIRING, "firing", f"n-{seq}", seq=seq), settled)
    queued.notify(FIRING, "firing")  # outside the outbox: lost with the process, so counted dropped
    gate.set()  # the first attempt fails; the retry would wait 30 s
    queued.close(timeout=0.2)
    assert settled.seqs == []  # both stay owed: delivered again at the next start
    assert queued.outcomes() == {"sent": 0, "failed": 0, "dropped": 1}
    queued.deliver(Notification(FIRING, "firing", "n-3", seq=3), settled)  # closed: stays owed
    queued.notify(FIRING, "firing")  # closed, outside the outbox: counted, never queued
    assert settled.seqs == [] and queued.outcomes()["dropped"] == 2


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


class Durable:
    """A durable notifier double: keeps what it is handed; settles at once unless `hold`."""

    def __init__(self, name: str, *, hold: bool = False, refuse: bool = False) -> None:
        self.name = name
        self.hold = hold
        self.refuse = refuse
        self.got: list[Notification] = []

    def wants(self, alert: Alert, change: Change) -> bool:
        return change != "acknowledged"

    def deliver(self, note: Notification, settle: Any) -> None:
        if self.refuse:
            raise NotifyError("no", retryable=False)
        self.got.append(note)
        if not self.hold:
            settle(note.seq)


def test_the_chain_keys_durable_notifiers_and_hands_each_its_row() -> None:
    plain = Flaky(0)
    first, second, refusing = Durable("hook"), Durable("hook", hold=True), Durable("mqtt", refuse=True)
    chain = NotifierChain([plain, first, second, refusing])
    assert list(chain.durable) == ["hook", "hook#2", "mqtt"]  # a repeated name is told apart, stably
    assert chain.wanting(FIRING, "firing") == ["hook", "hook#2", "mqtt"]
    assert chain.wanting(FIRING, "acknowledged") == []
    settled = Settled()
    chain.dispatch(FIRING, "firing", "n-1", {"hook": 1, "hook#2": 2, "mqtt": 3}, settled)
    assert [n.seq for n in first.got] == [1] and [n.seq for n in second.got] == [2]
    assert [n.id for n in first.got + second.got] == ["n-1", "n-1"] and plain.attempts == 1
    assert settled.seqs == [1, 3]  # delivered; refused for good (its row is of no more use)
    assert chain.outcomes()[("mqtt", "failed")] == 1
    # Only the plain ones, then only the durable ones (the alert manager before `resume`).
    chain.dispatch(FIRING, "resolved", "n-2", {"hook": 4}, settled, durable=False)
    assert plain.attempts == 2 and len(first.got) == 1
    chain.dispatch(FIRING, "resolved", "n-2", {"hook": 4}, settled, plain=False)
    assert plain.attempts == 2 and [n.seq for n in first.got] == [1, 4] and len(second.got) == 1
    # A row of a notifier no longer configured is refused.
    assert not chain.redeliver("webhook:gone", Notification(FIRING, "firing", "n-0", 9), settled)
    assert chain.redeliver("hook#2", Notification(FIRING, "firing", "n-0", 9), settled)
    assert second.got[-1].seq == 9
