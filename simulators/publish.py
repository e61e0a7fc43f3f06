"""Publishers: how a vendor sends events to the IOC daemon (docs/transports.md), written as a worked example.

`open_publisher(url, ...)` picks one by the URL:

- `mqtt://[USER:PASS@]HOST:PORT` -> `MqttPublisher`: one event per message on `ioc/v1/events/{source}`
  (the topic's source must equal the event's), QoS 1 by default. The daemon's broker acknowledges each
  message (PUBACK); we keep at most `window` (1000) unacknowledged, which both bounds memory and keeps
  the broker busy. paho-mqtt reconnects by itself after a broker restart and sends again every message
  that was not acknowledged, so nothing is lost (at worst a repeat, which the daemon drops by `id`).
- `http://HOST:PORT` -> `HttpPublisher`: NDJSON batches `POST`ed to `/api/v1/events` with
  `Authorization: Bearer TOKEN`. `429` (over the vendor's rate) and `503` (the daemon's queues are
  full): nothing was taken, so wait `Retry-After` (or back off) and send the same batch again. Other
  `4xx`: the batch is refused (bad token, a source that is not ours, too big); report and count it.
  A `202` lists the items it rejected one by one; those are counted too.
- `-` -> `StdoutPublisher`: NDJSON on standard output (for `| jq`, files, or another tool).

Every publisher has `publish(source, payload)` (payload: the event's JSON bytes), `idle()` (the
stream pauses: send what is buffered) and `close()` (send the rest, wait for the acknowledgements,
and return the `PublishStats`).
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import httpx
import orjson
import paho.mqtt.client as mqtt
import structlog

__all__ = ["HttpPublisher", "MqttPublisher", "PublishError", "PublishStats", "Publisher", "StdoutPublisher",
           "open_publisher"]

log = structlog.get_logger("simulators.publish")

TOPIC = "ioc/v1/events/{source}"
MAX_ERRORS_KEPT = 20


class PublishError(Exception):
    """Publishing cannot go on (the broker refused us, the daemon never came back)."""


@dataclass
class PublishStats:
    """What a publisher did: sent (handed to the transport), acknowledged (by the broker, or accepted
    or recognised as duplicates by the daemon), rejected (refused by the daemon), retries, and the
    first error messages."""

    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    retries: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)


class Publisher(Protocol):
    stats: PublishStats

    def publish(self, source: str, payload: bytes) -> None: ...

    def idle(self) -> None: ...

    def close(self) -> PublishStats: ...


class StdoutPublisher:
    """NDJSON lines on a binary stream (standard output by default)."""

    def __init__(self, out: BinaryIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout.buffer
        self.stats = PublishStats()

    def publish(self, source: str, payload: bytes) -> None:
        try:
            self.out.write(payload + b"\n")
        except BrokenPipeError:
            self._closed()
        self.stats.sent += 1
        self.stats.acknowledged += 1

    def idle(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            self._closed()

    def close(self) -> PublishStats:
        self.idle()
        return self.stats

    def _closed(self) -> None:
        """The reader went away (`| head`): say so once, and keep Python's exit from failing on it."""
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass
        raise PublishError("standard output was closed")


class MqttPublisher:
    """Events to an MQTT broker, one per message, with a window of unacknowledged QoS 1 messages.

    Two choices make it fast (about twice paho's usual `loop_start()` way):

    - paho's own in-flight limit rescans its table on every acknowledgement (slow beyond a few thousand
      messages a second), so it is switched off (`max_inflight_messages_set(0)`) and we count what is
      in flight ourselves: `publish` waits while `window` messages are unacknowledged.
    - No network thread: `publish` writes to the socket in the caller's thread, and every 64 messages
      (or while the window is full) `client.loop(0)` reads the PUBACKs. A background thread would cost a
      wake-up and a switch of the GIL per message.

    When the connection drops (a broker restart), `_pump` reconnects with a growing delay; paho then sends
    again every message not acknowledged (with the DUP flag), so nothing is lost: at worst the broker
    gets a repeat, which the daemon drops by the event's `id`."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 qos: int = 1, window: int = 1000, client_id: str | None = None, connect_timeout: float = 10.0,
                 stall_timeout: float = 300.0) -> None:
        self.stats = PublishStats()
        self.qos = qos
        self.window = window
        self.stall_timeout = stall_timeout
        self.address = f"mqtt://{host}:{port}"
        self._topics: dict[str, str] = {}
        self._inflight = 0
        self._acked = 0
        self._connected = False
        self._refused: str | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"ioc-sim-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        if username is not None:
            client.username_pw_set(username, password)
        client.max_inflight_messages_set(0)  # our window instead (see the class docstring)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect(host, port, keepalive=30)
        except OSError as error:
            raise PublishError(f"cannot connect to {self.address}: {error.strerror or error}") from None
        deadline = time.monotonic() + connect_timeout
        while not self._connected and self._refused is None and time.monotonic() < deadline:
            client.loop(0.1)
        if not self._connected:
            raise PublishError(f"{self.address} refused the connection: {self._refused or 'no CONNACK'}")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                    properties: object = None) -> None:
        if getattr(reason, "is_failure", False):
            self._refused = str(reason)
            return
        self._connected = True

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                       properties: object = None) -> None:
        self._connected = False

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object = None,
                    properties: object = None) -> None:
        self._inflight -= 1
        self._acked += 1

    def publish(self, source: str, payload: bytes) -> None:
        topic = self._topics.get(source)
        if topic is None:
            topic = self._topics[source] = TOPIC.format(source=source)
        if self._inflight >= self.window:
            self._wait(lambda: self._inflight < self.window)
        self._inflight += 1
        info = self._client.publish(topic, payload, qos=self.qos)
        self.stats.sent += 1
        if self.qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:  # QoS 0 is not kept for a reconnect: lost
            self._inflight -= 1
            self.stats.rejected += 1
        if self.stats.sent & 63 == 0:
            self._pump(0.0)

    def idle(self) -> None:
        self._pump(0.0)  # read acknowledgements and answer the broker's pings while the stream pauses

    def close(self) -> PublishStats:
        """Wait until the broker acknowledged every message (sent again after a reconnect), then leave."""
        try:
            self._wait(lambda: self._inflight <= 0)
        except PublishError as error:
            self.stats.error(str(error))
        self.stats.acknowledged = min(self._acked, self.stats.sent)
        if self._connected:
            self._client.disconnect()
        return self.stats

    def _wait(self, done: Callable[[], bool]) -> None:
        """Pump the connection until `done()`; PublishError when nothing is acknowledged for too long."""
        last, deadline = self._acked, time.monotonic() + self.stall_timeout
        while not done():
            self._pump(0.05)
            if self._acked != last:
                last, deadline = self._acked, time.monotonic() + self.stall_timeout
            elif time.monotonic() > deadline:
                raise PublishError(f"{self.address} acknowledged nothing for {self.stall_timeout:g}s "
                                   f"({self._inflight} messages waiting)")

    def _pump(self, timeout: float) -> None:
        """Read and write what the socket allows; reconnect (1 s, 2 s ... 5 s apart) when it is gone."""
        if self._client.loop(timeout) == mqtt.MQTT_ERR_SUCCESS and self._connected:
            return
        delay = 1.0
        log.warning("sim.mqtt_disconnected", broker=self.address, waiting=self._inflight)
        deadline = time.monotonic() + self.stall_timeout
        while True:
            try:
                if self._client.reconnect() == mqtt.MQTT_ERR_SUCCESS:
                    until = time.monotonic() + 10.0
                    while not self._connected and time.monotonic() < until:
                        if self._client.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                            break
                    if self._connected:
                        self.stats.reconnects += 1
                        log.info("sim.mqtt_reconnected", broker=self.address, resending=self._inflight)
                        return
            except OSError:
                pass
            if time.monotonic() + delay > deadline:
                raise PublishError(f"{self.address} unreachable for {self.stall_timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class HttpPublisher:
    """NDJSON batches to the daemon's `POST /api/v1/events`, retrying what it asks us to retry."""

    def __init__(self, base_url: str, *, token: str | None, batch: int = 1000, timeout: float = 30.0,
                 max_wait: float = 300.0, client: httpx.Client | None = None,
                 sleep: object = time.sleep) -> None:
        self.stats = PublishStats()
        self.url = base_url.rstrip("/") + "/api/v1/events"
        self.batch = batch
        self.max_wait = max_wait
        headers = {"Content-Type": "application/x-ndjson"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = headers
        self._pending: list[bytes] = []
        self._sleep = sleep

    def publish(self, source: str, payload: bytes) -> None:
        self._pending.append(payload)
        self.stats.sent += 1
        if len(self._pending) >= self.batch:
            self._send()

    def idle(self) -> None:
        if self._pending:
            self._send()

    def close(self) -> PublishStats:
        self.idle()
        self._client.close()
        return self.stats

    def _send(self) -> None:
        body = b"\n".join(self._pending) + b"\n"
        count = len(self._pending)
        self._pending = []
        backoff, waited = 0.5, 0.0
        while True:
            try:
                response = self._client.post(self.url, content=body, headers=self._headers)
            except httpx.HTTPError as error:
                reason, retry_after = f"{type(error).__name__}: {error}", None
            else:
                if response.status_code == 202:
                    self._accepted(response, count)
                    return
                if response.status_code not in (429, 503) and response.status_code < 500:
                    self.stats.rejected += count
                    self.stats.error(f"HTTP {response.status_code}: {_error_text(response)}")
                    log.warning("sim.http_refused", status=response.status_code, events=count,
                                error=_error_text(response))
                    return
                reason, retry_after = f"HTTP {response.status_code}", _retry_after(response)
            delay = retry_after if retry_after is not None else backoff
            backoff = min(backoff * 2, 10.0)
            if waited + delay > self.max_wait:
                self.stats.rejected += count
                self.stats.error(f"gave up a batch of {count} after {waited:.0f}s: {reason}")
                raise PublishError(f"{self.url}: {reason}, still failing after {waited:.0f}s")
            self.stats.retries += 1
            log.info("sim.http_retry", reason=reason, wait=delay)
            self._sleep(delay)  # type: ignore[operator]
            waited += delay

    def _accepted(self, response: httpx.Response, count: int) -> None:
        try:
            answer = orjson.loads(response.content)
            rejected = answer.get("rejected") or []
        except (orjson.JSONDecodeError, AttributeError):
            rejected = []
        self.stats.rejected += len(rejected)
        self.stats.acknowledged += count - len(rejected)
        for item in rejected[:3]:
            self.stats.error(f"rejected: {item.get('error') if isinstance(item, dict) else item}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except orjson.JSONDecodeError:
        pass
    return response.text[:200]


def open_publisher(url: str, *, token: str | None = None, qos: int = 1, batch: int = 1000) -> Publisher:
    """The publisher for `url` (`mqtt://[USER:PASS@]HOST:PORT`, `http://HOST:PORT` or `-`).
    Raises ValueError for a URL of another form, PublishError when the broker cannot be reached."""
    if url == "-":
        return StdoutPublisher()
    parts = urlsplit(url)
    if parts.scheme == "mqtt":
        if not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"--to: {url!r} is not mqtt://[USER:PASS@]HOST:PORT")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if username is not None and password is None and token:
            password = token  # the daemon's brokers take the vendor's token as its password
        return MqttPublisher(parts.hostname, parts.port or 1883, username=username, password=password, qos=qos)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"--to: {url!r} is not http://HOST:PORT")
        if not token:
            raise ValueError("--token: the HTTP API needs a vendor token")
        return HttpPublisher(url, token=token, batch=batch)
    raise ValueError(f"--to: {url!r} is not mqtt://[USER:PASS@]HOST:PORT, http://HOST:PORT or -")
