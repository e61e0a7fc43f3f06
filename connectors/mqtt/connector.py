"""The MQTT connector: events from `ioc/v1/events/{source}` into the intake pipeline, dead letters out.

Durability is the point of this module. The daemon subscribes with QoS 1 on a persistent session and
acknowledges a message (PUBACK) only when the pipeline reports its points durable (in InfluxDB or the
sink's spool), so a crash or an outage never loses an acknowledged event: the broker redelivers anything
unacknowledged, and the pipeline's dedup recognises the repeats.

Threads: paho runs its network loop in its own thread (`loop_start`), which is also the only way paho
queues outgoing packets thread-safely, so acknowledgements may come from a sink's writer thread. Message
ids are per connection and reused after a reconnect, so every acknowledgement carries the generation of the
connection its message came on and is skipped if that connection is gone (the broker redelivers those).

Hostile vendors (CONTRACT §7): a vendor's `rate` holds here too (the excess is refused before it is decoded:
acknowledged, dead-lettered `rate_limited`, counted), and a message whose handling kills the process is
quarantined after `max_deliveries` crashes (see poison.py).
"""

from __future__ import annotations

import random
import select
import socket
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from ioc.connectors.mqtt.fastclient import FastClient
from ioc.connectors.mqtt.poison import FAILPOINT_MARKER, PoisonGuard
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.config import MqttSettings, VendorSettings
from ioc.errors import ConfigError
from ioc.ingest.deadletter import dead_letter_body
from ioc.ingest.decode import Rejection
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import MetricSource, counter, gauge
from ioc.ratelimit import RateLimiter
from ioc.sinks.base import DurableCallback

log = structlog.get_logger("ioc.mqtt")

EVENTS_PREFIX = "ioc/v1/events/"
# The default subscription before CONTRACT §7 "Topics"; a session resumed with both it and
# `ioc/v1/events/#` would get every event twice, so it is unsubscribed (see `_on_connect`).
LEGACY_FILTER = "ioc/v1/events/+"
EVENTS_FILTER = "ioc/v1/events/#"
DEAD_LETTER_PREFIX = "ioc/v1/deadletter/"
DEFAULT_MAX_PENDING = 1_000  # QoS 1 publishes waiting for the broker; paho rescans them on every PUBACK
PUBLISH_WINDOW = 20  # QoS 1 publishes in flight at once
BURST_MAX = 256  # messages handed to the pipeline at once
BURST_MAX_AGE = 0.05  # seconds a received message may wait for the rest of its burst
BURST_CHECK_EVERY = 16  # look at the socket for the burst's end on the first and every 16th message
_MAX_SESSION_EXPIRY = 0xFFFFFFFF  # MQTT 5: a four-byte integer (0xFFFFFFFF = never expires)
_MIN_BACKOFF = 0.05  # seconds; a zero reconnect_min must not become a busy loop
POISON = "poison"  # dead-letter reason and `ioc_events_rejected` label of a quarantined message
RATE_LIMITED = "rate_limited"  # the same for a message over its vendor's rate
_SOURCE = itemgetter(1)  # of a burst entry (payload, source, generation, mid, qos)

Entry = tuple[bytes, str, int, int, int]  # a received message: (payload, source, generation, mid, qos)


def topic_source(topic: str) -> str:
    """The `{source}` of an event topic: the level after `ioc/v1/events/` (a vendor may also publish below
    it, `ioc/v1/events/{source}/...`, as the generated ACL allows); for a topic of another shape (a custom
    subscription) its last level. The pipeline rejects an event whose `source` differs from it."""
    if topic.startswith(EVENTS_PREFIX):
        return topic[len(EVENTS_PREFIX):].partition("/")[0]
    return topic.rpartition("/")[2]


def backoff_delay(attempt: int, low: float, high: float, rand: Callable[[float, float], float] = random.uniform
                  ) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based): exponential from `low`, capped at
    `high`, with "equal jitter" (uniform in the upper half of the step) so that many daemons restarted with
    their broker do not all knock at the same instant. Never below `low`."""
    low = max(low, _MIN_BACKOFF)
    high = max(high, low)
    cap = min(high, low * 2.0 ** min(attempt + 1, 62))
    return max(low, rand(cap / 2.0, cap))


_POLLERS: dict[int, select.poll] = {}  # by socket fd: a poll object per connection, reused per message


def _more_to_read(client: mqtt.Client) -> bool:
    """Whether more bytes already wait in the client's read buffer or socket (so the burst goes on)."""
    if isinstance(client, FastClient) and client.buffered():
        return True
    sock = client.socket()
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        fd = sock.fileno()
        poller = _POLLERS.get(fd)
        if poller is None:
            if len(_POLLERS) > 64:  # fds of closed connections
                _POLLERS.clear()
            poller = _POLLERS[fd] = select.poll()
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether a publish needs no more waiting: acknowledged, or failed for good (paho raises then)."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return True


class MqttConnector:
    """Subscribes to the event topics and feeds the pipeline; also the pipeline's dead-letter target.

    `start()` returns at once; connecting (and reconnecting, with jittered backoff) happens in paho's
    thread, so a broker that is down at start is a readiness problem, never a crash.
    """

    def __init__(self, settings: MqttSettings, pipeline: Pipeline, *, name: str = "mqtt",
                 max_pending: int = DEFAULT_MAX_PENDING, vendors: Sequence[VendorSettings] = (),
                 state_path: str | Path | None = None, max_deliveries: int = 3) -> None:
        """`vendors`: whose `rate` holds on MQTT, by the sources each owns (none: no limit).
        `state_path`: the daemon's store; with it, poison messages are quarantined after `max_deliveries`
        crashes (the in-flight journal lives beside it). Without it (tests), there is no such guard."""
        if settings.url == "embedded":
            raise ConfigError(["mqtt.url: 'embedded' must be replaced by the embedded broker's mqtt:// URL"])
        tls_keys = [key for key in ("tls_ca", "tls_cert", "tls_key") if getattr(settings, key)]
        if tls_keys and not settings.tls:
            raise ConfigError([f"mqtt.{tls_keys[0]}: set, but url {settings.url!r} is not mqtts://"])
        if settings.tls_key and not settings.tls_cert:
            raise ConfigError(["mqtt.tls_key: set without tls_cert"])
        self.settings = settings
        self.pipeline = pipeline
        self.name = name
        self.url = f"{'mqtts' if settings.tls else 'mqtt'}://{settings.host}:{settings.port}"
        self._max_pending = max_pending
        self._v5 = settings.protocol == "5"
        self._client: FastClient | None = None
        # Guards the generation, the client reference for acks and the counters written off paho's thread.
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = True
        self._paused = False
        self._connected = False
        self._last_problem = "not started"
        self._attempt = 0
        self._subscriptions: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its topics, until the SUBACK
        self._denied: list[str] = []  # topics the broker refused on this connection (replaced, never mutated)
        self._pending: deque[mqtt.MQTTMessageInfo] = deque()  # QoS>0 publishes not yet acknowledged
        self._dropping = False
        # Counters (plain ints: metrics are built at scrape time).
        self._received = [0, 0, 0]  # by QoS; written only under the burst lock
        # Messages received but not yet handed to the pipeline: (payload, source, generation, mid, qos).
        self._burst: list[Entry] = []
        self._burst_since = 0.0
        self._burst_lock = threading.Lock()  # held across a whole flush, so bursts reach the pipeline in order
        self._burst_timer: threading.Thread | None = None
        self._connects = 0
        self._disconnects = 0
        self._acks_sent = 0
        self._acks_skipped = 0
        self._dead_letters_published = 0
        self._dead_letters_dropped = 0
        self._publishes_dropped = 0
        # Vendor fairness: a source belongs to one vendor (the first that lists it).
        self._vendor_of: dict[str, str] = {}
        for vendor in vendors:
            for source in vendor.sources:
                self._vendor_of.setdefault(source, vendor.name)
        self._limiter = RateLimiter(vendors) if self._vendor_of else None
        self._rate_limited: dict[str, int] = {vendor.name: 0 for vendor in vendors}  # written under the burst lock
        # Poison messages: the journal and ledger (poison.py), read at the first start.
        self._guard = (PoisonGuard(state_path, name=name, max_deliveries=max_deliveries,
                                   expiry=settings.session_expiry)
                       if state_path is not None and str(state_path) != ":memory:" else None)
        self._recovered = False
        self._suspects_handled = 0
        self._quarantined = 0
        pipeline.dead_letter_targets.append(self)

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the client and start paho's network thread; returns at once. Also restarts after
        `close()` (same client id: the persistent session resumes)."""
        with self._lock:
            if not self._closed:
                return
            self._closed = False
            self._paused = False
            self._pending.clear()  # the old client's queue is gone with it
            self._generation += 1
            self._attempt = 0
            self._last_problem = "connecting"
        if self._guard is not None and not self._recovered:
            self._recovered = True
            in_flight = self._guard.recover()
            if in_flight:
                log.warning("mqtt.crash_recovery", connector=self.name, in_flight=in_flight,
                            effect="each is handled alone when the broker sends it again",
                            max_deliveries=self._guard.max_deliveries)
        settings = self.settings
        client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        if settings.username:
            client.username_pw_set(settings.username, settings.password.get_secret_value() or None)
        if settings.tls:
            client.tls_set(
                ca_certs=settings.tls_ca or None,
                certfile=settings.tls_cert or None,
                keyfile=settings.tls_key or None,
                cert_reqs=ssl.CERT_NONE if settings.tls_insecure else ssl.CERT_REQUIRED,
            )
            if settings.tls_insecure:
                client.tls_insecure_set(True)
        # Our own bound on publishes (`max_pending`) replaces paho's queue limit. The in-flight window
        # stays small: a broker disconnects a client that exceeds its Receive Maximum (Mosquitto's default
        # is 20), paho cannot change the window once connected, and publishes are few (dead letters).
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(PUBLISH_WINDOW)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_pre_connect = self._on_pre_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message  # messages paho decodes itself (QoS 2, MQTT 5 properties)
        client.on_raw_message = self._on_raw_message
        self._set_backoff(client)
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(min(settings.session_expiry, _MAX_SESSION_EXPIRY))
            properties.ReceiveMaximum = settings.receive_maximum
            client.connect_async(settings.host, settings.port, settings.keepalive, clean_start=False,
                                 properties=properties)
        else:
            client.connect_async(settings.host, settings.port, settings.keepalive)
        with self._lock:
            self._client = client
        client.loop_start()
        self._burst_timer = threading.Thread(target=self._flush_old_bursts, name=f"{self.name}-bursts",
                                             daemon=True)
        self._burst_timer.start()
        log.info("mqtt.starting", connector=self.name, url=self.url, client_id=settings.client_id,
                 protocol=settings.protocol)

    def pause_intake(self) -> None:
        """Stop processing messages: from now on they are neither fed to the pipeline nor acknowledged, so
        the broker redelivers them after a restart. Acknowledgements of earlier messages still go out."""
        self._paused = True
        with self._burst_lock:
            self._flush_burst()  # received whole before the pause: processed, acknowledged once durable

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (acknowledgements, dead letters) for up to `timeout` seconds, then DISCONNECT
        (the session stays on the broker) and stop paho's thread. Safe to call twice."""
        with self._lock:
            client = self._client
            if client is None or self._closed:
                return
        deadline = time.monotonic() + timeout
        while self._connected and time.monotonic() < deadline and (client.want_write() or self.pending()):
            time.sleep(0.01)
        with self._lock:
            self._closed = True
            self._generation += 1  # acknowledgements from now on are skipped: the broker redelivers
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name=f"{self.name}-close", daemon=True)
        stopper.start()
        stopper.join(max(0.5, deadline - time.monotonic()))
        if stopper.is_alive():
            log.warning("mqtt.close_timeout", connector=self.name, timeout=timeout)
        self._connected = False
        self._last_problem = "closed"
        log.info("mqtt.closed", connector=self.name)

    # --- state -----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted our CONNECT and the connection is up."""
        return self._connected

    @property
    def subscribed(self) -> bool:
        """Whether the broker answered this connection's SUBSCRIBE (granted or not: see `problems()`)."""
        return self._connected and not self._subscriptions

    def problems(self) -> list[str]:
        """Failing readiness checks (for `/readyz`): the broker connection, and subscriptions it refused."""
        if not self._connected:
            return [f"{self.name}: not connected to {self.url} ({self._last_problem})"]
        return [f"{self.name}: subscription refused: {denied}" for denied in self._denied]

    def pending(self) -> int:
        """QoS 1 publishes (dead letters, alerts) not yet acknowledged by the broker."""
        with self._lock:
            return self._prune_pending()

    def _prune_pending(self) -> int:
        pending = self._pending
        while pending and _settled(pending[0]):
            pending.popleft()
        return len(pending)

    # --- paho callbacks (paho's thread) ----------------------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        with self._lock:
            self._generation += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self._last_problem = f"refused: {reason}"
            log.error("mqtt.connect_refused", connector=self.name, url=self.url, reason=str(reason),
                      reason_code=reason.value)
            return
        with self._lock:
            self._generation += 1
        self._attempt = 0
        self._set_backoff(client)
        self._subscriptions.clear()
        self._denied = []
        group = self.settings.share_group
        topics = [f"$share/{group}/{topic}" if group else topic for topic in self.settings.subscribe]
        if topics:
            if self._v5:
                # retainHandling=1: retained messages only when the subscription is new, not on each reconnect.
                options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                result, mid = client.subscribe([(topic, options) for topic in topics])
            else:
                result, mid = client.subscribe([(topic, 1) for topic in topics])
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._subscriptions[mid] = topics
            else:
                log.error("mqtt.subscribe_failed", connector=self.name, topics=topics,
                          reason=mqtt.error_string(result))
            subscribed = self.settings.subscribe
            if flags.session_present and EVENTS_FILTER in subscribed and LEGACY_FILTER not in subscribed:
                # An older daemon's session still holds `ioc/v1/events/+`: with `#` beside it the broker
                # would send every event twice. What it queued under it is still delivered.
                client.unsubscribe(f"$share/{group}/{LEGACY_FILTER}" if group else LEGACY_FILTER)
        if self._guard is not None:
            self._guard.session(flags.session_present)
        self._connects += 1
        self._connected = True  # after the SUBSCRIBE is queued, so `subscribed` cannot be true too early
        log.info("mqtt.connected", connector=self.name, url=self.url, client_id=self.settings.client_id,
                 session_present=flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        topics = self._subscriptions.pop(mid, [])
        for topic, reason in zip(topics, reasons, strict=False):
            if reason.is_failure:
                self._denied = [*self._denied, f"{topic} ({reason})"]
                log.error("mqtt.subscribe_failed", connector=self.name, topic=topic, reason=str(reason),
                          reason_code=reason.value, hint="the broker's ACL may deny it")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._last_problem = "cannot connect: refused or unreachable"
        self._schedule_reconnect(client)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        with self._lock:
            # Before paho clears its out queue and reconnects: acks of this connection are void from now.
            self._generation += 1
            closing = self._closed
        was_connected, self._connected = self._connected, False
        if not was_connected:  # the broker refused our CONNECT (logged then) or the handshake broke
            if not closing:
                self._schedule_reconnect(client)
            return
        self._disconnects += 1
        self._last_problem = f"disconnected: {reason}"
        if closing:
            return
        log.warning("mqtt.disconnected", connector=self.name, url=self.url, reason=str(reason),
                    reason_code=reason.value, by_broker=flags.is_disconnect_packet_from_server)
        self._schedule_reconnect(client)

    def _schedule_reconnect(self, client: mqtt.Client) -> None:
        if self._closed:
            return
        delay = self._set_backoff(client)
        self._attempt += 1
        log.info("mqtt.reconnecting", connector=self.name, url=self.url, delay=round(delay, 3),
                 attempt=self._attempt)

    def _set_backoff(self, client: mqtt.Client) -> float:
        """paho waits `min_delay` and doubles it up to `max_delay`, with no jitter; pinning both to our own
        jittered value before each wait makes it wait exactly that."""
        delay = backoff_delay(self._attempt, self.settings.reconnect_min, self.settings.reconnect_max)
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho accepts float seconds
        return delay

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # paho decodes the payload as bytes (its annotation also allows bytearray).
        self._receive(client, message.payload, message.topic, message.mid, message.qos)  # type: ignore[arg-type]

    def _on_raw_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        self._receive(self._client, payload, topic.decode("utf-8", "replace"), mid, qos)  # type: ignore[arg-type]

    def _receive(self, client: mqtt.Client, payload: bytes, topic: str, mid: int, qos: int) -> None:
        # The hot path: no logging per message. Messages are gathered while more wait in the socket and
        # handed over as one burst (see Pipeline.ingest_batch for why); the burst ends when the socket
        # is drained, at BURST_MAX messages, or after BURST_MAX_AGE (the timer thread). The socket is
        # looked at only every BURST_CHECK_EVERY messages (a poll costs ~5 % of this thread): a lone
        # message goes at once, the tail of a burst waits at most BURST_MAX_AGE.
        if self._paused:
            return
        with self._burst_lock:
            burst = self._burst
            if not burst:
                self._burst_since = time.monotonic()
            self._received[qos] += 1
            burst.append((payload, topic_source(topic), self._generation, mid, qos))
            size = len(burst)
            if size >= BURST_MAX or (size % BURST_CHECK_EVERY == 1 and not _more_to_read(client)):
                self._flush_burst()

    def _flush_burst(self) -> None:
        """Hand the gathered messages to the pipeline (the caller holds the burst lock): the excess over
        each vendor's rate is refused first, undecoded; after a crash, suspects go one by one."""
        burst, self._burst = self._burst, []
        if not burst:
            return
        try:
            if failpoints.ACTIVE:
                failpoints.hit("mqtt.handle")  # before the journal: a crash here is no message's fault
            if self._limiter is not None:
                burst = self._limit_rates(burst)
            guard = self._guard
            if guard is not None and guard.suspects:
                self._hand_over_with_suspects(burst, guard)
            elif burst:
                self._hand_over(burst)
        except Exception:  # a bug here must not kill paho's thread; the messages stay unacknowledged
            log.exception("mqtt.message_failed", connector=self.name, messages=len(burst))

    def _hand_over(self, burst: list[Entry]) -> None:
        """One pipeline call for the burst, journaled (QoS 1 packet ids) while it runs."""
        acks = [(generation, mid, qos) for _, _, generation, mid, qos in burst if qos]
        journal = self._guard.journal if self._guard is not None and acks else None
        if journal is not None:
            journal.write([mid for _, mid, _ in acks], alone=len(burst) == 1,
                          waiting=not self.pipeline.has_room(len(burst)))
        try:
            if failpoints.ACTIVE and "mqtt.poison" in failpoints.ACTIVE and any(
                    FAILPOINT_MARKER in entry[0] for entry in burst):
                failpoints.hit("mqtt.poison")
            self.pipeline.ingest_batch([(payload, source) for payload, source, _, _, _ in burst],
                                       on_durable=self._acker(acks) if acks else None)
        except Exception:  # a bug here must not kill paho's thread; the messages stay unacknowledged
            log.exception("mqtt.message_failed", connector=self.name, messages=len(burst))
        finally:
            if journal is not None:
                journal.clear()

    def _hand_over_with_suspects(self, burst: list[Entry], guard: PoisonGuard) -> None:
        """After a crash: the messages that were in flight then are handled alone, in order."""
        run: list[Entry] = []
        for entry in burst:
            if entry[4] and guard.take_suspect(entry[3]):
                if run:
                    self._hand_over(run)
                    run = []
                self._handle_suspect(entry, guard)
            else:
                run.append(entry)
        if run:
            self._hand_over(run)

    def _handle_suspect(self, entry: Entry, guard: PoisonGuard) -> None:
        payload, source = entry[0], entry[1]
        verdict = guard.judge(source, payload)
        if verdict.poison:
            self._quarantined += 1
            log.error("mqtt.poison_quarantined", connector=self.name, source=source, key=verdict.key.hex(),
                      crashes=verdict.crashes, size=len(payload),
                      effect="acknowledged and dead-lettered, unprocessed")
            self._refuse([entry], POISON)
            return
        self._suspects_handled += 1
        self._hand_over([entry])
        guard.ledger.clear(verdict.key)  # it was handled and we are alive: not poison

    def _limit_rates(self, burst: list[Entry]) -> list[Entry]:
        """Each vendor's messages in the burst take a token each; the excess (the vendor's last messages
        in the burst) is refused here, before anything is decoded. Returns the rest, in order."""
        vendor_of, limiter = self._vendor_of, self._limiter
        assert limiter is not None
        wanted: dict[str, int] = {}
        for source, count in Counter(map(_SOURCE, burst)).items():
            vendor = vendor_of.get(source)
            if vendor is not None:
                wanted[vendor] = wanted.get(vendor, 0) + count
        over: dict[str, int] = {}
        for vendor, count in wanted.items():
            granted = limiter.take_up_to(vendor, count)
            if granted < count:
                over[vendor] = count - granted
        if not over:
            return burst
        kept: list[Entry] = []
        refused: list[Entry] = []
        for entry in reversed(burst):
            vendor = vendor_of.get(entry[1])
            if vendor is not None and over.get(vendor, 0) > 0:
                over[vendor] -= 1
                refused.append(entry)
            else:
                kept.append(entry)
        kept.reverse()
        refused.reverse()
        counts = Counter(vendor_of[entry[1]] for entry in refused)
        for vendor, count in counts.items():
            self._rate_limited[vendor] = self._rate_limited.get(vendor, 0) + count
            log.warning("mqtt.rate_limited", connector=self.name, vendor=vendor, refused=count,
                        rate=limiter.buckets[vendor].rate)
        guard = self._guard
        if guard is not None and guard.suspects:  # not handled: their packet ids are free again
            for entry in refused:
                if entry[4]:
                    guard.take_suspect(entry[3])
        self._refuse(refused, RATE_LIMITED)
        return kept

    def _refuse(self, entries: list[Entry], code: str) -> None:
        """Reject whole messages undecoded: counted (`ioc_events_rejected{reason=code}`), dead-lettered with
        `code` as the reason, and acknowledged in order behind what came before."""
        acks = [(generation, mid, qos) for _, _, generation, mid, qos in entries if qos]
        self.pipeline.admit([Rejection(code=code, message=code, raw=payload, source=source or None)
                             for payload, source, _, _, _ in entries],
                            on_durable=self._acker(acks) if acks else None)

    def _flush_old_bursts(self) -> None:
        """The timer thread: a burst whose end never came (a packet arriving slowly) still goes out."""
        while not self._closed:
            time.sleep(BURST_MAX_AGE)
            if self._burst and time.monotonic() - self._burst_since >= BURST_MAX_AGE:
                with self._burst_lock:
                    self._flush_burst()

    def _acker(self, acks: list[tuple[int, int, int]]) -> DurableCallback:
        def ack() -> None:
            if failpoints.ACTIVE:
                try:
                    failpoints.hit("mqtt.before_ack")
                except failpoints.FailpointError:
                    self._ack_failed(len(acks))
                    return
            with self._lock:
                client = self._client
                if client is None:
                    self._acks_skipped += len(acks)
                    return
                with client.batched():  # one wake-up of paho's thread for the lot
                    for generation, mid, qos in acks:
                        if generation == self._generation:
                            client.ack(mid, qos)
                            self._acks_sent += 1
                        else:
                            self._acks_skipped += 1

        return ack

    def _ack_failed(self, count: int) -> None:
        """The acknowledgements could not be sent (a failpoint's `error`): as when a socket write fails,
        the connection is dropped, so the broker sends the messages again on the next one."""
        with self._lock:
            self._acks_skipped += count
            client = self._client
        log.error("mqtt.ack_failed", connector=self.name, messages=count, effect="reconnecting; redelivered")
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- publishing ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Queue a message (alerts). QoS 1 publishes wait in paho while disconnected and are sent on
        reconnect; at most `max_pending` may wait. Returns False (and counts it) when it was dropped."""
        return self._publish(topic, payload, qos, retain, dead_letter=False)

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """The pipeline's dead-letter target: `{"reason", "payload"}` on `ioc/v1/deadletter/{source}`, QoS 1."""
        self._publish(DEAD_LETTER_PREFIX + source, dead_letter_body(reason, payload), 1, False, dead_letter=True)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, *, dead_letter: bool) -> bool:
        with self._lock:
            client = self._client
            if client is None or self._closed:
                refused = "the connector is closed"
            elif qos > 0 and self._prune_pending() >= self._max_pending:
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
        """The connector's metric families (`ioc_mqtt_*`), built at scrape time."""
        return self._collect

    def _collect(self) -> Iterable[Metric]:
        received = self._received
        with self._lock:
            pending = self._prune_pending()
            acks_sent, acks_skipped = self._acks_sent, self._acks_skipped
            published, dropped = self._dead_letters_published, self._dead_letters_dropped
            publishes_dropped = self._publishes_dropped
        yield gauge("ioc_mqtt_connected", "1 while connected to the broker.", (),
                    {(): 1.0 if self._connected else 0.0})
        yield counter("ioc_mqtt_connects", "Successful connections (CONNACK accepted).", (),
                      {(): float(self._connects)})
        yield counter("ioc_mqtt_disconnects", "Established connections lost or closed.", (),
                      {(): float(self._disconnects)})
        yield counter("ioc_mqtt_messages_received", "Messages received, by QoS (while intake runs).", ("qos",),
                      {(str(qos),): float(received[qos]) for qos in (0, 1)})
        yield counter("ioc_mqtt_acks_sent", "QoS 1 messages acknowledged once their points were durable.", (),
                      {(): float(acks_sent)})
        yield counter("ioc_mqtt_acks_skipped",
                      "Acknowledgements skipped: their connection was gone, the broker redelivers.", (),
                      {(): float(acks_skipped)})
        yield counter("ioc_mqtt_dead_letters_published", "Dead letters queued for the broker.", (),
                      {(): float(published)})
        yield counter("ioc_mqtt_dead_letters_dropped",
                      "Dead letters dropped: too many waiting for the broker, or the connector closed.", (),
                      {(): float(dropped)})
        yield counter("ioc_mqtt_publishes_dropped", "Other publishes (alerts) dropped for the same reasons.", (),
                      {(): float(publishes_dropped)})
        yield gauge("ioc_mqtt_pending_publishes", "QoS 1 publishes waiting for the broker's PUBACK.", (),
                    {(): float(pending)})
        yield counter("ioc_mqtt_rate_limited", "Messages refused over their vendor's rate (dead-lettered "
                      "rate_limited, acknowledged).", ("vendor",),
                      {(vendor,): float(count) for vendor, count in self._rate_limited.copy().items()})
        yield counter("ioc_mqtt_poison_suspects",
                      "Messages handled alone because the process died while handling them.", (),
                      {(): float(self._suspects_handled)})
        yield counter("ioc_mqtt_poison_quarantined",
                      "Messages dead-lettered as poison: the process died max_deliveries times handling them.",
                      (), {(): float(self._quarantined)})
