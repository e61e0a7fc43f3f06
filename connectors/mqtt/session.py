"""The MQTT connection's upkeep: the client, the persistent session, reconnects, subscriptions, acks.

`MqttSession` owns paho's client and nothing of what flows over it: it connects (and reconnects, with the
daemon's one backoff, ioc/retry.py), subscribes with QoS 1 on a persistent session, unsubscribes the old
`ioc/v1/events/+` a resumed session may still hold, tells readiness, and sends acknowledgements. What
arrives goes to a `Receiver` (the intake, intake.py); what goes out is the publisher's (publisher.py).

Threads: paho runs its network loop in its own thread (`loop_start`), which is also the only way paho
queues outgoing packets thread-safely, so acknowledgements may come from a sink's writer thread. Message
ids are per connection and reused after a reconnect, so every message carries the `generation` of the
connection it came on, and its acknowledgement is skipped if that connection is gone (the broker
redelivers those).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import structlog
from ioc.connectors.mqtt.fastclient import FastClient, installed_paho_problems
from ioc.connectors.mqtt.topics import EVENTS_FILTER, LEGACY_FILTER
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client.core import Metric

from ioc.config import MqttSettings
from ioc.errors import ConfigError
from ioc.logs import RepeatLimiter
from ioc.metrics import counter, gauge
from ioc.retry import Backoff

log = structlog.get_logger("ioc.mqtt")

REFUSALS_KEPT = 4096  # refused publishes remembered by message id

PUBLISH_WINDOW = 20  # QoS 1 publishes in flight at once
_MAX_SESSION_EXPIRY = 0xFFFFFFFF  # MQTT 5: a four-byte integer (0xFFFFFFFF = never expires)

Ack = tuple[int, int, int]  # (generation, packet id, QoS) of a received message


class Receiver(Protocol):
    """Where received messages go (the intake). Called in paho's thread."""

    def on_raw_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        """FastClient's lean path: a QoS 0/1 PUBLISH without properties."""

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Everything else (and everything with stock paho)."""

    def on_session(self, present: bool) -> None:
        """A connection was accepted; whether the broker still had our session."""


def check_settings(settings: MqttSettings) -> None:
    """The settings paho would only refuse when connecting; ConfigError with every problem."""
    problems = []
    if settings.url == "embedded":
        problems.append("mqtt.url: 'embedded' must be replaced by the embedded broker's mqtt:// URL")
    tls_keys = [key for key in ("tls_ca", "tls_cert", "tls_key") if getattr(settings, key)]
    if tls_keys and not settings.tls:
        problems.append(f"mqtt.{tls_keys[0]}: set, but url {settings.url!r} is not mqtts://")
    if settings.tls_key and not settings.tls_cert:
        problems.append("mqtt.tls_key: set without tls_cert")
    if settings.tls and not problems:
        problems += _tls_problems(settings)
    if problems:
        raise ConfigError(problems)


def _tls_problems(settings: MqttSettings) -> list[str]:
    """The TLS files load as paho's `tls_set` will load them at the first connection (which would
    otherwise fail in paho's thread, after the start); `ioc check` calls this too (check_settings)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    problems = []
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(settings, key)
        if path and not (readable := Path(path)).is_file():
            why = "no such file" if not readable.exists() else "not a file"
            problems.append(f"mqtt.{key}: cannot read {path}: {why}")
    if problems:
        return problems
    try:
        if settings.tls_ca:
            context.load_verify_locations(settings.tls_ca)
    except (OSError, ssl.SSLError) as error:
        problems.append(f"mqtt.tls_ca: {settings.tls_ca} holds no usable CA certificate: {_ssl_reason(error)}")
    try:
        if settings.tls_cert:  # an encrypted key is refused, not asked for on a terminal
            context.load_cert_chain(settings.tls_cert, settings.tls_key or None, password=lambda: b"")
    except (OSError, ssl.SSLError) as error:
        key = "tls_key" if settings.tls_key else "tls_cert"
        problems.append(f"mqtt.{key}: the certificate {settings.tls_cert} and its key "
                        f"{settings.tls_key or '(in the same file)'} do not load: {_ssl_reason(error)}")
    return problems


def _ssl_reason(error: OSError | ssl.SSLError) -> str:
    return getattr(error, "reason", None) or error.strerror or str(error)


def new_client(settings: MqttSettings, name: str) -> mqtt.Client:
    """paho's client as `settings` say (`client`: FastClient unless it does not fit the installed paho, or
    stock paho), with manual acknowledgements, the account and TLS; callbacks are the caller's."""
    kind: type[mqtt.Client] = FastClient if settings.client == "fast" else mqtt.Client
    if kind is FastClient and (problems := installed_paho_problems()):
        # A paho release FastClient was not made for: stock paho is slower, never wrong.
        log.error("mqtt.fastclient_unfit", connector=name, problems=list(problems),
                  effect='stock paho, as with [mqtt] client = "paho"')
        kind = mqtt.Client
    v5 = settings.protocol == "5"
    client = kind(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False,
                  manual_ack=True, reconnect_on_failure=True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password.get_secret_value() or None)
    if settings.tls:
        client.tls_set(ca_certs=settings.tls_ca or None, certfile=settings.tls_cert or None,
                       keyfile=settings.tls_key or None,
                       cert_reqs=ssl.CERT_NONE if settings.tls_insecure else ssl.CERT_REQUIRED)
        if settings.tls_insecure:
            client.tls_insecure_set(True)
    # The publisher's own bound (`max_pending`) replaces paho's queue limit. The in-flight window stays
    # small: a broker disconnects a client that exceeds its Receive Maximum (Mosquitto's default is 20),
    # paho cannot change the window once connected, and publishes are few (dead letters, alerts).
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(PUBLISH_WINDOW)
    return client


_POLLERS: dict[int, select.poll] = {}  # by socket fd: a poll object per connection, reused per message


def _socket_readable(sock: Any) -> bool:
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


class MqttSession:
    """One client id's connection to the broker, kept up from `start()` to `close()`.

    `start()` returns at once; connecting (and reconnecting, with jittered backoff) happens in paho's
    thread, so a broker that is down at start is a readiness problem, never a crash."""

    def __init__(self, settings: MqttSettings, *, name: str = "mqtt") -> None:
        check_settings(settings)
        self.settings = settings
        self.name = name
        self.url = f"{'mqtts' if settings.tls else 'mqtt'}://{settings.host}:{settings.port}"
        self._v5 = settings.protocol == "5"
        self._client: mqtt.Client | None = None
        self._fast = False  # the client is a FastClient (buffered reads, batched wake-ups)
        self._receiver: Receiver | None = None
        # Guards the generation and the client reference for acks and publishes.
        self.lock = threading.Lock()
        self.generation = 0
        self.closed = True
        self._connected = False
        self._last_problem = "not started"
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        self._subscriptions: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its topics, until the SUBACK
        self._denied: list[str] = []  # topics the broker refused on this connection (replaced, never mutated)
        self._connects = 0
        self._disconnects = 0
        self._acks_sent = 0
        self._acks_skipped = 0
        self.refusals = Refusals(name)

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self, receiver: Receiver) -> None:
        """Create the client and start paho's network thread; returns at once. Also restarts after
        `close()` (same client id: the persistent session resumes)."""
        with self.lock:
            if not self.closed:
                return
            self.closed = False
            self.generation += 1
            self._last_problem = "connecting"
        self._receiver = receiver
        self._backoff.reset()
        client = self._new_client(receiver)
        self._set_delay(client, self._backoff.peek())
        settings = self.settings
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(min(settings.session_expiry, _MAX_SESSION_EXPIRY))
            properties.ReceiveMaximum = settings.receive_maximum
            client.connect_async(settings.host, settings.port, settings.keepalive, clean_start=False,
                                 properties=properties)
        else:
            client.connect_async(settings.host, settings.port, settings.keepalive)
        with self.lock:
            self._client = client
        client.loop_start()
        log.info("mqtt.starting", connector=self.name, url=self.url, client_id=settings.client_id,
                 protocol=settings.protocol, client=settings.client)

    def _new_client(self, receiver: Receiver) -> mqtt.Client:
        client = new_client(self.settings, self.name)
        self._fast = isinstance(client, FastClient)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_pre_connect = self._on_pre_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message  # messages paho decodes itself (QoS 2, MQTT 5 properties)
        client.on_publish = self.refusals.on_publish
        if isinstance(client, FastClient):
            client.on_raw_message = receiver.on_raw_message
        return client

    def close(self, timeout: float = 10.0, busy: Callable[[], bool] = lambda: False) -> None:
        """Send what is queued (acknowledgements, and publishes while `busy()`) for up to `timeout`
        seconds, then DISCONNECT (the session stays on the broker) and stop paho's thread. Safe twice."""
        with self.lock:
            client = self._client
            if client is None or self.closed:
                return
        deadline = time.monotonic() + timeout
        while self._connected and time.monotonic() < deadline and (client.want_write() or busy()):
            time.sleep(0.01)
        with self.lock:
            self.closed = True
            self.generation += 1  # acknowledgements from now on are skipped: the broker redelivers
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
    def no_local(self) -> bool:
        """Whether the broker keeps this session's own publishes from it (MQTT 5 No Local): protocol 5,
        not a shared subscription. Otherwise a cluster recognises their echoes (echoes.py)."""
        return self._v5 and not self.settings.share_group

    @property
    def client(self) -> mqtt.Client | None:
        """paho's client of the current (or last) start; None before the first."""
        return self._client

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

    def more_to_read(self) -> bool:
        """Whether more bytes already wait in the client's read buffer or socket (so a burst goes on)."""
        client = self._client
        if client is None:
            return False
        if self._fast and client.buffered():  # type: ignore[attr-defined]  # FastClient's
            return True
        sock = client.socket()
        return sock is not None and _socket_readable(sock)

    # --- acknowledgements ------------------------------------------------------------------------------

    def acknowledge(self, acks: Sequence[Ack]) -> None:
        """PUBACK the messages whose connection is still the current one (any thread)."""
        with self.lock:
            client = self._client
            if client is None:
                self._acks_skipped += len(acks)
                return
            generation = self.generation
            batched = client.batched() if self._fast else contextlib.nullcontext()  # type: ignore[attr-defined]
            with batched:  # one wake-up of paho's thread for the lot
                for ack_generation, mid, qos in acks:
                    if ack_generation == generation:
                        client.ack(mid, qos)
                        self._acks_sent += 1
                    else:
                        self._acks_skipped += 1

    def drop_connection(self, skipped: int = 0) -> None:
        """Break the connection as a failed socket write would (no DISCONNECT): the broker keeps what was
        not acknowledged and sends it again on the next connection. `skipped`: acks given up for that."""
        with self.lock:
            self._acks_skipped += skipped
            client = self._client
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # --- paho callbacks (paho's thread) ----------------------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        with self.lock:
            self.generation += 1

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self._last_problem = f"refused: {reason}"
            log.error("mqtt.connect_refused", connector=self.name, url=self.url, reason=str(reason),
                      reason_code=reason.value)
            return
        with self.lock:
            self.generation += 1
        self._backoff.reset()
        self._set_delay(client, self._backoff.peek())
        self._subscribe(client, flags.session_present)
        if self._receiver is not None:
            self._receiver.on_session(flags.session_present)
        self._connects += 1
        self._connected = True  # after the SUBSCRIBE is queued, so `subscribed` cannot be true too early
        log.info("mqtt.connected", connector=self.name, url=self.url, client_id=self.settings.client_id,
                 session_present=flags.session_present)

    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        self._subscriptions.clear()
        self._denied = []
        group = self.settings.share_group
        subscribed = self.settings.subscribe
        topics = [f"$share/{group}/{topic}" if group else topic for topic in subscribed]
        if not topics:
            return
        if self._v5:
            # retainHandling=1: retained messages only when the subscription is new, not on each reconnect.
            # No Local: what this node publishes (a cluster's HTTP republish) is not sent back to it; it
            # counted those events already (CONTRACT §8). MQTT 5 forbids it on a shared subscription.
            options = SubscribeOptions(qos=1, noLocal=self.no_local,
                                       retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            result, mid = client.subscribe([(topic, options) for topic in topics])
        else:
            result, mid = client.subscribe([(topic, 1) for topic in topics])
        if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._subscriptions[mid] = topics
        else:
            log.error("mqtt.subscribe_failed", connector=self.name, topics=topics, reason=mqtt.error_string(result))
        if session_present and EVENTS_FILTER in subscribed and LEGACY_FILTER not in subscribed:
            # An older daemon's session still holds `ioc/v1/events/+`: with `#` beside it the broker
            # would send every event twice. What it queued under it is still delivered.
            client.unsubscribe(f"$share/{group}/{LEGACY_FILTER}" if group else LEGACY_FILTER)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Properties | None) -> None:
        topics = self._subscriptions.pop(mid, [])
        for topic, reason in zip(topics, reasons, strict=False):
            if reason.is_failure:
                self._denied = [*self._denied, f"{topic} ({reason})"]
                log.error("mqtt.subscribe_failed", connector=self.name, topic=topic, reason=str(reason),
                          reason_code=reason.value, hint="the broker's ACL may deny it")

    def refusal(self, mids: Iterable[int], since: float) -> str | None:
        """The broker's reason if it refused one of `mids` (published at `since` or later), else None."""
        return self.refusals.find(mids, since)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._receiver is not None:  # paho decodes the payload as bytes (its annotation allows bytearray)
            self._receiver.on_message(message.topic, message.payload, message.mid, message.qos)  # type: ignore[arg-type]

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._last_problem = "cannot connect: refused or unreachable"
        self._schedule_reconnect(client)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        with self.lock:
            # Before paho clears its out queue and reconnects: acks of this connection are void from now.
            self.generation += 1
            closing = self.closed
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
        if self.closed:
            return
        delay = self._backoff.failed()
        self._set_delay(client, delay)
        log.info("mqtt.reconnecting", connector=self.name, url=self.url, delay=round(delay, 3),
                 attempt=self._backoff.failures)

    @staticmethod
    def _set_delay(client: mqtt.Client, delay: float) -> None:
        """paho waits `min_delay` and doubles it up to `max_delay`, with no jitter; pinning both to our own
        jittered value before each wait makes it wait exactly that."""
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho accepts float seconds

    # --- metrics ---------------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            acks_sent, acks_skipped = self._acks_sent, self._acks_skipped
        yield gauge("ioc_mqtt_connected", "1 while connected to the broker.", (),
                    {(): 1.0 if self._connected else 0.0})
        yield counter("ioc_mqtt_connects", "Successful connections (CONNACK accepted).", (),
                      {(): float(self._connects)})
        yield counter("ioc_mqtt_disconnects", "Established connections lost or closed.", (),
                      {(): float(self._disconnects)})
        yield counter("ioc_mqtt_publishes_refused", "Publishes the broker acknowledged with a failure reason "
                      "(MQTT 5; e.g. not authorized by its ACL).", (), {(): float(self.refusals.total)})
        yield counter("ioc_mqtt_acks_sent", "QoS 1 messages acknowledged once their points were durable.", (),
                      {(): float(acks_sent)})
        yield counter("ioc_mqtt_acks_skipped",
                      "Acknowledgements skipped: their connection was gone, the broker redelivers.", (),
                      {(): float(acks_skipped)})


class Refusals:
    """MQTT 5 PUBACKs with a failure reason (0x87 not authorized: the broker's ACL), by message id, for
    whoever must not take such a publish as done (the cluster's republish); the latest REFUSALS_KEPT.

    paho counts a refused publish as published (`is_published()`); only MQTT 5 says it was refused
    (Mosquitto drops a publish its ACL denies and acknowledges it as usual on 3.1.1)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.by_mid: OrderedDict[int, tuple[str, float]] = OrderedDict()  # mid -> (reason, monotonic time)
        self.total = 0
        self._logs = RepeatLimiter(10.0)

    def on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                   properties: Properties | None) -> None:
        """paho's `on_publish` (its network thread)."""
        if not reason.is_failure:
            return
        self.by_mid[mid] = (str(reason), time.monotonic())
        while len(self.by_mid) > REFUSALS_KEPT:
            self.by_mid.popitem(last=False)
        self.total += 1
        if (suppressed := self._logs.check("refused")) is not None:
            log.error("mqtt.publish_refused", connector=self.name, reason=str(reason), reason_code=reason.value,
                      suppressed=suppressed, hint="the broker's ACL may deny the daemon's user this topic")

    def find(self, mids: Iterable[int], since: float) -> str | None:
        """The reason if one of `mids` was refused at `since` (monotonic) or later (message ids are reused)."""
        for mid in mids:
            found = self.by_mid.get(mid)
            if found is not None and found[1] >= since:
                return found[0]
        return None
