"""Notification: a chain of notifiers, each told of every change of every alert (CONTRACT §3, §5).

Every notifier has one small method, `notify(alert, change)`, and decides for itself what a muted alert
gets: the record-keepers (SSE stream, retained MQTT state, InfluxDB) take every change, silenced or not;
the pagers (`ioc/v1/alerts/{rule}`, webhooks) skip muted alerts. A notifier that cannot deliver raises
`NotifyError(retryable=...)`; it never retries by itself. The caller owns the policy: `NotifierChain`
counts and logs (the MQTT connector already queues while disconnected, InfluxDB has its spool), and
`Queued` delivers in a background thread with bounded attempts, exponential backoff with jitter and a
bounded queue, so `AlertManager.apply` never waits for a web server.

Notifiers are called under the alert manager's lock, in order, so they see changes in the order they
happened; each must return quickly (queue, never wait on the network).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx
import orjson
import structlog
from prometheus_client.core import Metric

from connectors.mqtt.connector import backoff_delay
from ioc import failpoints
from ioc.alerts.alert import STATE_CHANGES, Alert, Change
from ioc.alerts.config import AlertsSettings, WebhookSettings
from ioc.alerts.errors import NotifyError
from ioc.errors import SinkFull
from ioc.lineproto import render_alert
from ioc.metrics import counter, gauge
from ioc.sinks.base import DurableCallback

log = structlog.get_logger("ioc.alerts.notify")

ALERTS_TOPIC = "ioc/v1/alerts/"  # + rule: every change of an unmuted alert (QoS 1)
STATE_TOPIC = "ioc/v1/alerts/state/"  # + fingerprint: the current state, retained; cleared when resolved
OUTCOMES = ("sent", "failed", "dropped")


class Notifier(Protocol):
    """One way of telling the world about an alert change. Raises NotifyError when it cannot."""

    name: str

    def notify(self, alert: Alert, change: Change) -> None: ...


@runtime_checkable
class SelfCounting(Protocol):
    """A notifier that counts its own outcomes (one that delivers later, such as `Queued`)."""

    def outcomes(self) -> Mapping[str, int]: ...


class Publisher(Protocol):
    """`connectors.mqtt.MqttConnector.publish`: False when the message was dropped."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool: ...


class PointSink(Protocol):
    """The part of `ioc.sinks.base.Sink` a notifier needs."""

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None: ...


class EventStream(Protocol):
    """`ioc.api.stream.Broadcaster`: thread-safe, never blocks."""

    def publish(self, event: str, data: Mapping[str, Any]) -> None: ...


def alert_body(alert: Alert, change: Change) -> dict[str, Any]:
    """What every notifier sends: the alert's JSON plus the `change` that happened."""
    return {**alert.as_json(), "change": change}


# --- the record-keepers and the MQTT pager -----------------------------------------------------------------

class MqttNotifier:
    """Every change of an unmuted alert to `ioc/v1/alerts/{rule}` (QoS 1); the current state of every
    alert, silenced included, retained on `ioc/v1/alerts/state/{fingerprint}`, cleared (an empty retained
    message) when it resolves."""

    name = "mqtt"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def notify(self, alert: Alert, change: Change) -> None:
        body = orjson.dumps(alert_body(alert, change))
        dropped = []
        if not alert.silenced:
            topic = ALERTS_TOPIC + alert.rule
            if not self.publisher.publish(topic, body, qos=1, retain=False):
                dropped.append(topic)
        state_topic = STATE_TOPIC + alert.fingerprint
        state = b"" if alert.state == "resolved" else body
        if not self.publisher.publish(state_topic, state, qos=1, retain=True):
            dropped.append(state_topic)
        if dropped:
            raise NotifyError(f"the MQTT connector dropped the publish to {', '.join(dropped)}",
                              retryable=False)


class InfluxNotifier:
    """Each state change as a point of the `alert` measurement (CONTRACT §4), at the change's event time.

    Acknowledgements and muting are not state changes and write nothing. Never waits: a full sink is a
    NotifyError (counted), not a stalled alert manager."""

    name = "influx"

    def __init__(self, sink: PointSink, *, timeout: float = 0.0) -> None:
        self.sink = sink
        self.timeout = timeout

    def notify(self, alert: Alert, change: Change) -> None:
        if change not in STATE_CHANGES:
            return
        at = {"resolved": alert.resolved_at, "firing": alert.fired_at}.get(change) or alert.started_at
        time_ns = round(at * 1_000_000) * 1000  # microseconds kept exactly
        line = render_alert(alert.rule, alert.severity, alert.labels.get("area"), alert.state,
                            alert.fingerprint, alert.value, time_ns, entity=alert.labels.get("entity"))
        try:
            self.sink.submit([line], timeout=self.timeout)
        except SinkFull as error:
            raise NotifyError(f"the sink took no point: {error}", retryable=True) from None


class StreamNotifier:
    """Every change, silenced included, as an SSE `alert` event (`/api/v1/stream`)."""

    name = "sse"

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream

    def notify(self, alert: Alert, change: Change) -> None:
        self.stream.publish("alert", alert_body(alert, change))


# --- webhooks ------------------------------------------------------------------------------------------

class WebhookNotifier:
    """One attempt to POST `{"alert": ..., "change": ...}` to a URL; retrying is `Queued`'s job.

    Retryable: 5xx, 429 (with its Retry-After), timeouts and connection errors; any other status is a
    failure for good (a 404 does not get better by asking again)."""

    def __init__(self, settings: WebhookSettings, *, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.name = settings.name
        self._client = client or httpx.Client(timeout=settings.timeout, follow_redirects=False)

    def wants(self, alert: Alert, change: Change) -> bool:
        """Whether this change goes to the webhook: one of its `changes`, never while muted; a `resolved`
        only of an alert that fired, an `unmuted` only of a firing one (it was not told while muted)."""
        if change not in self.settings.changes or alert.silenced:
            return False
        if change == "resolved":
            return alert.fired_at is not None
        if change == "unmuted":
            return alert.state == "firing"
        return True

    def notify(self, alert: Alert, change: Change) -> None:
        body = orjson.dumps({"alert": alert.as_json(), "change": change})
        headers = {"Content-Type": "application/json", **self.settings.headers}
        try:
            response = self._client.post(self.settings.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise NotifyError(f"{self.name}: no answer within {self.settings.timeout:g}s",
                              retryable=True) from None
        except httpx.TransportError as error:
            raise NotifyError(f"{self.name}: {type(error).__name__}: {error}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status == 429
        retry_after = _retry_after(response.headers.get("retry-after")) if status == 429 else None
        raise NotifyError(f"{self.name}: HTTP {status}", retryable=retryable, retry_after=retry_after)

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts; before attempt n+1 wait exponential backoff from `backoff_min`,
    capped at `backoff_max`, with jitter (a server's Retry-After is honoured up to `backoff_max`)."""

    max_attempts: int = 5
    backoff_min: float = 1.0
    backoff_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rand: Callable[[float, float], float] = random.uniform) -> float:
        wait = backoff_delay(attempt - 1, self.backoff_min, self.backoff_max, rand)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max))
        return wait


class Queued:
    """Delivers through `inner` from a background thread: a bounded queue (a delivery that finds it full
    is dropped and counted), then attempts under `policy`. Deliveries keep their order (a `resolved`
    never overtakes its `firing`). `accept` filters what is queued at all (e.g. muted alerts)."""

    def __init__(self, inner: Notifier, *, policy: RetryPolicy, queue_max: int = 1000,
                 accept: Callable[[Alert, Change], bool] | None = None,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy
        self.queue_max = queue_max
        self._accept = accept
        self._rand = rand
        self._queue: deque[tuple[Alert, Change]] = deque()
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self._dropping = False
        self._counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.retries = 0

    def notify(self, alert: Alert, change: Change) -> None:
        if self._accept is not None and not self._accept(alert, change):
            return
        with self._cond:
            if self._closing or len(self._queue) >= self.queue_max:
                self._counts["dropped"] += 1
                first, self._dropping = not self._dropping, True
            else:
                first = self._dropping = False
                self._queue.append((alert, change))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
                    self._thread.start()
                self._cond.notify()
                return
        if first:
            log.warning("alerts.notify_dropped", notifier=self.name, queue_max=self.queue_max,
                        closing=self._closing)

    def outcomes(self) -> Mapping[str, int]:
        with self._cond:
            return dict(self._counts)

    def pending(self) -> int:
        """Deliveries queued or in progress."""
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued delivery is done (sent or failed); False on timeout (for tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy,
                                       max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking deliveries, try those queued for up to `timeout` seconds, drop (and count) the rest."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._abort.set()
                thread.join(5.0)
        with self._cond:
            if self._queue:
                log.warning("alerts.notify_abandoned", notifier=self.name, deliveries=len(self._queue))
                self._counts["dropped"] += len(self._queue)
                self._queue.clear()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue or self._abort.is_set():
                    self._cond.notify_all()
                    return
                alert, change = self._queue.popleft()
                self._busy = True
            outcome = self._deliver(alert, change)
            with self._cond:
                self._busy = False
                self._counts[outcome] += 1
                self._cond.notify_all()

    def _deliver(self, alert: Alert, change: Change) -> str:
        attempt = 1
        while True:
            try:
                self.inner.notify(alert, change)
                return "sent"
            except NotifyError as error:
                if not error.retryable or attempt >= self.policy.max_attempts or self._abort.is_set():
                    log.warning("alerts.notify_failed", notifier=self.name, alert=alert.id, change=change,
                                attempts=attempt, error=str(error))
                    return "failed"
                delay = self.policy.delay(attempt, error.retry_after, self._rand)
            except Exception as error:  # a bug in a notifier: counted, never the end of the thread
                log.exception("alerts.notify_crashed", notifier=self.name, alert=alert.id, error=repr(error))
                return "failed"
            attempt += 1
            with self._cond:
                self.retries += 1
            if self._abort.wait(delay):
                return "dropped"


# --- the chain -----------------------------------------------------------------------------------------

class NotifierChain:
    """Tells every notifier of a change, in order; a failing one never stops the others. Counts
    `sent`/`failed` of the synchronous notifiers (self-counting ones report their own)."""

    def __init__(self, notifiers: Sequence[Notifier] = ()) -> None:
        self.notifiers = list(notifiers)
        # Checked once per notifier: a runtime Protocol isinstance costs ~15 µs, per change a real share.
        self._self_counting: dict[int, bool] = {}
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._failing: set[str] = set()

    def notify(self, alert: Alert, change: Change) -> None:
        if failpoints.ACTIVE:
            failpoints.hit("alerts.before_notify")
        for notifier in self.notifiers:
            name = notifier.name
            try:
                notifier.notify(alert, change)
            except NotifyError as error:
                self._failed(name, alert, change, str(error))
                continue
            except Exception as error:  # a notifier's bug must not cost the others their change
                log.exception("alerts.notify_crashed", notifier=name, alert=alert.id)
                self._failed(name, alert, change, repr(error))
                continue
            counts_itself = self._self_counting.get(id(notifier))
            if counts_itself is None:
                counts_itself = self._self_counting[id(notifier)] = isinstance(notifier, SelfCounting)
            if not counts_itself:
                self._counts[(name, "sent")] += 1
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("alerts.notify_recovered", notifier=name)

    def _failed(self, name: str, alert: Alert, change: Change, error: str) -> None:
        self._counts[(name, "failed")] += 1
        if name not in self._failing:  # one line per episode of failures; the counter has the rest
            self._failing.add(name)
            log.warning("alerts.notify_failed", notifier=name, alert=alert.id, change=change, error=error)

    def outcomes(self) -> dict[tuple[str, str], int]:
        """(notifier, outcome) -> count, every notifier and outcome present."""
        found: dict[tuple[str, str], int] = {}
        for notifier in self.notifiers:
            own = notifier.outcomes() if isinstance(notifier, SelfCounting) else {}
            for outcome in OUTCOMES:
                key = (notifier.name, outcome)
                found[key] = own.get(outcome, 0) + self._counts.get(key, 0)
        return found

    def metrics(self) -> Iterable[Metric]:
        yield counter("ioc_alert_notifications", "Alert changes told to each notifier, by outcome "
                      "(dropped: a full delivery queue).", ("notifier", "outcome"), self.outcomes())
        queued = [n for n in self.notifiers if isinstance(n, Queued)]
        yield counter("ioc_alert_notification_retries", "Delivery attempts repeated after a retryable error.",
                      ("notifier",), {(n.name,): n.retries for n in queued})
        yield gauge("ioc_alert_notification_queue", "Deliveries waiting or in progress.", ("notifier",),
                    {(n.name,): n.pending() for n in queued})

    def close(self, timeout: float = 5.0) -> None:
        """Give queued deliveries up to `timeout` seconds in all (then they are dropped, counted)."""
        deadline = time.monotonic() + timeout
        for notifier in self.notifiers:
            if isinstance(notifier, Queued):
                notifier.close(max(0.0, deadline - time.monotonic()))


def webhook(settings: WebhookSettings, *, client: httpx.Client | None = None) -> Queued:
    """A webhook receiver with its retry policy and queue, from its settings."""
    sender = WebhookNotifier(settings, client=client)
    policy = RetryPolicy(settings.max_attempts, settings.backoff_min, settings.backoff_max)
    return Queued(sender, policy=policy, queue_max=settings.queue_max, accept=sender.wants)


def build_notifiers(settings: AlertsSettings, *, mqtt: Publisher | None = None, sink: PointSink | None = None,
                    stream: EventStream | None = None) -> list[Notifier]:
    """The daemon's chain: SSE first (the wall display), then MQTT, InfluxDB and the webhooks."""
    notifiers: list[Notifier] = []
    if stream is not None:
        notifiers.append(StreamNotifier(stream))
    if mqtt is not None:
        notifiers.append(MqttNotifier(mqtt))
    if sink is not None:
        notifiers.append(InfluxNotifier(sink))
    notifiers.extend(webhook(hook) for hook in settings.webhooks)
    return notifiers
