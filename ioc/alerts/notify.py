"""Notification: a chain of notifiers, each told of every change of every alert (docs/http-api.md,
docs/rules.md).

Every notifier has one small method, `notify(alert, change)`, and decides for itself what a muted alert
gets: the record-keepers (SSE stream, retained MQTT state, InfluxDB) take every change, silenced or not;
the pagers (`ioc/v1/alerts/{rule}`, webhooks) skip muted alerts. A notifier that cannot deliver raises
`NotifyError(retryable=...)`; it never retries by itself. The caller owns the policy: `NotifierChain`
counts and logs (the MQTT connector already queues while disconnected, InfluxDB has its spool), and
`Queued` delivers in a background thread with bounded attempts, the daemon's one backoff (ioc/retry.py) and a
bounded queue, so `AlertManager.apply` never waits for a web server.

MQTT, InfluxDB and the webhooks are also *durable* (`ioc.alerts.outbox`): the alert manager writes what
each owes to the store's outbox with the change itself, hands it over with `deliver(note, settle)`, and
the notifier settles it once delivered, so a crash loses no notification (at least once; receivers
de-duplicate on the notification id, `Idempotency-Key` for webhooks).

Notifiers are called under the alert manager's lock, in order, so they see changes in the order they
happened; each must return quickly (queue, never wait on the network).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, cast, runtime_checkable

import httpx
import orjson
import structlog
import tenacity
from prometheus_client.core import Metric

from ioc.alerts.alert import STATE_CHANGES, Alert, Change
from ioc.alerts.config import AlertsSettings, WebhookSettings
from ioc.alerts.errors import NotifyError
from ioc.alerts.outbox import Durable, Notification, Settle, new_ids
from ioc.errors import SinkFull
from ioc.lineproto import render_alert
from ioc.metrics import counter, gauge
from ioc.retry import Aborted, RetryPolicy, parse_retry_after
from ioc.sinks.base import DurableCallback

log = structlog.get_logger("ioc.alerts.notify")

ALERTS_TOPIC = "ioc/v1/alerts/"  # + rule: every change of an unmuted alert (QoS 1)
STATE_TOPIC = "ioc/v1/alerts/state/"  # + fingerprint: the current state, retained; cleared when resolved
OUTCOMES = ("sent", "failed", "dropped")
SETTLE_POLL = 0.005  # seconds between looks at the MQTT connector's unacknowledged publishes while one is owed


def _settle_nothing(seq: int, *, now: bool = False) -> None:
    """The settle callback of a notification outside the outbox."""


class Notifier(Protocol):
    """One way of telling the world about an alert change. Raises NotifyError when it cannot."""

    name: str

    def notify(self, alert: Alert, change: Change) -> None: ...


AnyNotifier: TypeAlias = Notifier | Durable
"""What a chain holds: plain notifiers, told at once, and durable ones, handed their outbox rows."""


@runtime_checkable
class SelfCounting(Protocol):
    """A notifier that counts its own outcomes (one that delivers later, such as `Queued`)."""

    def outcomes(self) -> Mapping[str, int]: ...


class Publisher(Protocol):
    """`ioc.connectors.mqtt.MqttPublisher.publish`: False when the message was dropped. A publisher may also
    have `pending() -> int`, its QoS 1 publishes not yet acknowledged by the broker (MqttPublisher has)."""

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
    message) when it resolves.

    Durable: a delivered change (with its `notification_id` in the body) is settled once the broker has
    acknowledged every QoS 1 publish the connector had waiting after it (`Publisher.pending() == 0`, looked
    at every `SETTLE_POLL` while something is owed; the connector tells no more than that). Within a run
    paho re-sends what the broker did not acknowledge; the outbox covers a crash. A publisher without
    `pending` is taken at its word."""

    name = "mqtt"

    def __init__(self, publisher: Publisher, *, poll: float = SETTLE_POLL) -> None:
        self.publisher = publisher
        self._in_flight: Callable[[], int] | None = getattr(publisher, "pending", None)
        self._poll = poll
        self._owed: list[tuple[int, Settle]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abandon = False

    def wants(self, alert: Alert, change: Change) -> bool:
        return True

    def notify(self, alert: Alert, change: Change) -> None:
        self._publish(alert, change, None)

    def deliver(self, note: Notification, settle: Settle) -> None:
        self._publish(note.alert, note.change, note.id)
        if self._in_flight is None or note.seq <= 0:
            settle(note.seq)
            return
        with self._cond:
            if self._closing:
                return  # stays in the outbox: sent again at the next start
            self._owed.append((note.seq, settle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._settle_loop, name="notify-mqtt-settle", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _publish(self, alert: Alert, change: Change, notification_id: str | None) -> None:
        message = alert_body(alert, change)
        if notification_id:
            message["notification_id"] = notification_id
        body = orjson.dumps(message)
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

    def owed(self) -> int:
        """Deliveries waiting for the broker's acknowledgement."""
        with self._cond:
            return len(self._owed)

    def _settle_loop(self) -> None:
        in_flight = self._in_flight
        assert in_flight is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._owed or self._closing)
                if not self._owed or self._abandon:
                    self._thread = None
                    self._cond.notify_all()
                    return
                owed = list(self._owed)
            # Everything published before this look is acknowledged once nothing waits: ours too.
            while in_flight() > 0:
                with self._cond:
                    if self._cond.wait_for(lambda: self._abandon, self._poll):
                        self._thread = None
                        self._cond.notify_all()
                        return  # closing: still owed, so delivered again at the next start
            with self._cond:
                del self._owed[:len(owed)]
            for seq, settle in owed:
                settle(seq)

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to `timeout` for the broker to acknowledge what is owed (the connector flushes its own
        queue when it closes); what is not stays in the outbox."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._thread is None, timeout):
                self._abandon = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._thread is None, 1.0)


class InfluxNotifier:
    """Each state change as a point of the `alert` measurement (docs/influxdb.md), at the change's event time.

    Acknowledgements and muting are not state changes and write nothing. Never waits: a full sink is a
    NotifyError (counted), not a stalled alert manager. Durable: settled when the sink has the point
    written or spooled (its `on_durable`); a point written twice after a crash is the same point."""

    name = "influx"

    def __init__(self, sink: PointSink, *, timeout: float = 0.0) -> None:
        self.sink = sink
        self.timeout = timeout

    def wants(self, alert: Alert, change: Change) -> bool:
        return change in STATE_CHANGES

    def notify(self, alert: Alert, change: Change) -> None:
        if change in STATE_CHANGES:
            self._submit(alert, change, None)

    def deliver(self, note: Notification, settle: Settle) -> None:
        seq = note.seq
        self._submit(note.alert, note.change, (lambda: settle(seq)) if seq > 0 else None)

    def _submit(self, alert: Alert, change: Change, on_durable: DurableCallback | None) -> None:
        at = {"resolved": alert.resolved_at, "firing": alert.fired_at}.get(change) or alert.started_at
        time_ns = round(at * 1_000_000) * 1000  # microseconds kept exactly
        line = render_alert(alert.rule, alert.severity, alert.labels.get("area"), alert.state,
                            alert.fingerprint, alert.value, time_ns, entity=alert.labels.get("entity"))
        try:
            self.sink.submit([line], on_durable, timeout=self.timeout)
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
    """One attempt to POST `{"alert": ..., "change": ..., "notification_id": ...}` to a URL, with the
    notification id also as the `Idempotency-Key` header; retrying is `Queued`'s job.

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
        self.send(Notification(alert, change, ""))

    def send(self, note: Notification) -> None:
        message: dict[str, Any] = {"alert": note.alert.as_json(), "change": note.change}
        headers = {"Content-Type": "application/json", **self.settings.headers}
        if note.id:
            message["notification_id"] = note.id
            headers["Idempotency-Key"] = note.id
        body = orjson.dumps(message)
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
        retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
        raise NotifyError(f"{self.name}: HTTP {status}", retryable=retryable, retry_after=retry_after)

    def close(self) -> None:
        self._client.close()


def _retryable(error: BaseException) -> bool:
    return isinstance(error, NotifyError) and error.retryable


class Sender(Protocol):
    """What `Queued` delivers through: one attempt, NotifyError when it fails (`WebhookNotifier`)."""

    name: str

    def send(self, note: Notification) -> None: ...


class Queued:
    """Delivers through `inner` from a background thread: a bounded queue (a delivery that finds it full
    is dropped and counted), then attempts under `policy`. Deliveries keep their order (a `resolved`
    never overtakes its `firing`). `accept` filters what is queued at all (e.g. muted alerts).

    Durable: a delivery is settled when it is sent, fails for good, or is dropped from a full queue; one
    still queued or being retried when the daemon stops stays in the outbox for the next start."""

    def __init__(self, inner: Sender, *, policy: RetryPolicy, queue_max: int = 1000,
                 accept: Callable[[Alert, Change], bool] | None = None,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy
        self.queue_max = queue_max
        self._accept = accept
        self._rand = rand
        self._ids = new_ids()
        self._queue: deque[tuple[Notification, Settle]] = deque()
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self._dropping = False
        self._counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.retries = 0

    def wants(self, alert: Alert, change: Change) -> bool:
        return self._accept is None or self._accept(alert, change)

    def notify(self, alert: Alert, change: Change) -> None:
        """Queue a change outside the outbox (a new notification id; lost with the process)."""
        if self.wants(alert, change):
            self.deliver(Notification(alert, change, self._ids()), _settle_nothing)

    def deliver(self, note: Notification, settle: Settle) -> None:
        with self._cond:
            if self._closing and note.seq > 0:
                return  # the daemon is stopping: the outbox keeps it for the next start
            if self._closing or len(self._queue) >= self.queue_max:
                self._counts["dropped"] += 1
                first, self._dropping = not self._dropping, True
            else:
                self._dropping = False
                self._queue.append((note, settle))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
                    self._thread.start()
                self._cond.notify()
                return
        settle(note.seq)  # dropped for good
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
        """Stop taking deliveries, try those queued for up to `timeout` seconds; the rest stay in the
        outbox for the next start (those outside it are dropped and counted)."""
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
                kept = sum(1 for note, _ in self._queue if note.seq > 0)
                log.warning("alerts.notify_deferred", notifier=self.name, deliveries=kept,
                            dropped=len(self._queue) - kept, effect="sent at the next start")
                self._counts["dropped"] += len(self._queue) - kept
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
                note, settle = self._queue.popleft()
                self._busy = True
            outcome = self._deliver(note)
            if outcome != "dropped" or note.seq <= 0:
                # Done with, either way (a delivery cut by the stop stays owed); at once, so a crash
                # repeats as few deliveries as it can.
                settle(note.seq, now=True)
            with self._cond:
                self._busy = False
                if outcome != "dropped" or note.seq <= 0:
                    self._counts[outcome] += 1
                self._cond.notify_all()

    def _deliver(self, note: Notification) -> str:
        """Attempts under the policy (ioc/retry.py: retryable NotifyErrors only, the server's Retry-After
        honoured); a close that gives up (`_abort`) ends the waiting at once."""
        alert, change = note.alert, note.change
        attempts = self.policy.retrying(retry_on=_retryable, abort=self._abort, before_sleep=self._retrying,
                                        rand=self._rand)
        try:
            for attempt in attempts:
                with attempt:
                    self.inner.send(note)
            return "sent"
        except Aborted:
            return "dropped"
        except NotifyError as error:
            log.warning("alerts.notify_failed", notifier=self.name, alert=alert.id, change=change,
                        attempts=attempts.statistics.get("attempt_number", 1), error=str(error))
            return "dropped" if self._abort.is_set() else "failed"
        except Exception as error:  # a bug in a notifier: counted, never the end of the thread
            log.exception("alerts.notify_crashed", notifier=self.name, alert=alert.id, error=repr(error))
            return "failed"

    def _retrying(self, state: tenacity.RetryCallState) -> None:
        with self._cond:
            self.retries += 1


# --- the chain -----------------------------------------------------------------------------------------

class NotifierChain:
    """Tells every notifier of a change, in order; a failing one never stops the others. Counts
    `sent`/`failed` of the synchronous notifiers (self-counting ones report their own).

    Durable notifiers are known by a key that is stable across restarts (their name, `name#2`... for a
    repeated one), the `notifier` of their outbox rows."""

    def __init__(self, notifiers: Sequence[AnyNotifier] = ()) -> None:
        self.notifiers = list(notifiers)
        # Checked once per notifier: a runtime Protocol isinstance costs ~15 µs, per change a real share.
        self._self_counting = {id(n): isinstance(n, SelfCounting) for n in self.notifiers}
        self._keys: dict[int, str] = {}
        self.durable: dict[str, Durable] = {}
        for notifier in self.notifiers:
            if isinstance(notifier, Durable):
                key, n = notifier.name, 1
                while key in self.durable:
                    n += 1
                    key = f"{notifier.name}#{n}"
                self._keys[id(notifier)] = key
                self.durable[key] = notifier
        self._ids = new_ids()
        self._counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._failing: set[str] = set()

    def wanting(self, alert: Alert, change: Change) -> list[str]:
        """The keys of the durable notifiers that deliver this change (each gets an outbox row)."""
        return [key for key, notifier in self.durable.items() if notifier.wants(alert, change)]

    def notify(self, alert: Alert, change: Change) -> None:
        """Tell every notifier now, outside the outbox (a new notification id)."""
        self.dispatch(alert, change, self._ids(), dict.fromkeys(self.wanting(alert, change), 0),
                      _settle_nothing)

    def dispatch(self, alert: Alert, change: Change, notification_id: str, seqs: Mapping[str, int],
                 settle: Settle, *, plain: bool = True, durable: bool = True) -> None:
        """Tell the plain notifiers (`plain`) and hand the durable ones that want it (a key in `seqs`, with
        the sequence number of its outbox row) the notification (`durable`). A notification refused for
        good is settled (its row removed) and counted failed."""
        for notifier in self.notifiers:
            name = notifier.name
            key = self._keys.get(id(notifier))
            seq = 0
            try:
                if key is None:
                    if not plain:
                        continue
                    cast(Notifier, notifier).notify(alert, change)
                else:
                    if not durable or key not in seqs:
                        continue
                    seq = seqs[key]
                    cast(Durable, notifier).deliver(Notification(alert, change, notification_id, seq), settle)
            except NotifyError as error:
                settle(seq)
                self._failed(name, alert, change, str(error))
                continue
            except Exception as error:  # a notifier's bug must not cost the others their change
                settle(seq)
                log.exception("alerts.notify_crashed", notifier=name, alert=alert.id)
                self._failed(name, alert, change, repr(error))
                continue
            if not self._self_counting[id(notifier)]:
                self._counts[(name, "sent")] += 1
                if name in self._failing:
                    self._failing.discard(name)
                    log.info("alerts.notify_recovered", notifier=name)

    def redeliver(self, key: str, note: Notification, settle: Settle) -> bool:
        """Hand a notification found in the outbox at start-up to its notifier; False when no notifier has
        that key any more (a webhook removed from the config)."""
        notifier = self.durable.get(key)
        if notifier is None:
            return False
        try:
            notifier.deliver(note, settle)
        except Exception as error:  # noqa: BLE001 - refused for good, as in dispatch
            settle(note.seq)
            self._failed(notifier.name, note.alert, note.change, str(error))
            return True
        if not self._self_counting[id(notifier)]:
            self._counts[(notifier.name, "sent")] += 1
        return True

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
        """Give deliveries up to `timeout` seconds in all (then they stay in the outbox): the webhooks'
        queues first, then what the broker has not acknowledged (quick unless it is away)."""
        deadline = time.monotonic() + timeout
        closing: list[Queued | MqttNotifier] = [n for n in self.notifiers if isinstance(n, Queued)]
        closing += [n for n in self.notifiers if isinstance(n, MqttNotifier)]
        for notifier in closing:
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
