"""The generator: known events over MQTT QoS 1 and HTTP, and a record of every acknowledgement.

Event `i` of a stream is `{"id": "<stream>-<i>", "source": <stream's source>, "metric": <stream's metric>,
"value": i, "time": BASE + i µs}`. InfluxDB stores no event id (docs/influxdb.md: the point is the metric's
series at the event's time), so the time identifies the event: one microsecond apart, each event is its
own point, and a point's value must be its index. A rewrite of the same event is the same point (by
design: a replay after a crash is idempotent), so "exactly once" means one point per acknowledged event
and no point that is not an event's.

- MQTT: one paho client (3.1.1, fixed client id, persistent session, its own window of unacknowledged
  publishes as NOTES.md advises), reconnecting by itself; an event is acknowledged when its PUBACK comes.
  paho re-sends unacknowledged publishes after a reconnect (the broker may then deliver a duplicate).
- HTTP: NDJSON batches to `POST /api/v1/events`; acknowledged when answered 202 with `"durable": true`
  (except items rejected). Anything else (connection refused or reset, timeout, 503, 429, `durable:
  false`) is retried with the same events, as a vendor would, until acknowledged. With several nodes
  (a cluster, any of which takes events) the batches go to each in turn, and a retry goes to the next.
- Alarms: one event at a time on `chaos.alarm`, alternately over and under the rule's threshold, with
  values unique per toggle (over: 1000 + k, under: k / 1000) so each alert change the webhook receives names the
  toggle that caused it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt

EVENTS_PATH = "/api/v1/events"


@dataclass
class Stream:
    """The events of one transport and what happened to each (indexes are event numbers)."""

    name: str
    source: str
    metric: str
    base: datetime
    sent_at: list[float] = field(default_factory=list)  # first send, monotonic; len = events made
    acked: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_ns(self) -> int:
        return int(self.base.timestamp()) * 1_000_000_000 + self.base.microsecond * 1000

    def event(self, index: int) -> bytes:
        return orjson.dumps({"id": f"{self.name}-{index}", "source": self.source, "type": "telemetry",
                             "time": (self.base + timedelta(microseconds=index)).isoformat(),
                             "metric": self.metric, "value": index})

    def new(self, now: float) -> int:
        with self.lock:
            self.sent_at.append(now)
            return len(self.sent_at) - 1

    def ack(self, indexes: list[int] | range) -> None:
        with self.lock:
            self.acked.update(indexes)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.sent_at), len(self.acked)


def base_time() -> datetime:
    """Event times start an hour ago (whole seconds): well inside the dedup window, never in the future."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


class Pacer:
    """Keeps a loop at `rate` per second; after a stall it resumes at the rate, not in a burst."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def wait(self, stop: threading.Event, count: int = 1) -> None:
        self.next += self.interval * count
        now = time.monotonic()
        if self.next < now - 1.0:
            self.next = now
        elif self.next > now:
            stop.wait(self.next - now)


class MqttGenerator:
    """Publishes `stream` at `rate` events/s, QoS 1, to `ioc/v1/events/{source}` on the broker directly."""

    def __init__(self, port: int, stream: Stream, *, rate: float, window: int = 500,
                 client_id: str = "chaos-generator") -> None:
        self.stream = stream
        self.rate = rate
        self.topic = f"ioc/v1/events/{stream.source}"
        self._window = threading.Semaphore(window)
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # mid -> event index
        self._early: set[int] = set()  # PUBACKs that came before publish() returned their mid
        self._stop = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=False)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # floats work
        client.on_publish = self._on_publish
        client.connect_async("127.0.0.1", port, keepalive=10)
        client.loop_start()
        self.client = client
        self.thread = threading.Thread(target=self._run, name="chaos-mqtt-generator", daemon=True)
        self.thread.start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            index = self._pending.pop(mid, None)
            if index is None:
                self._early.add(mid)
                return
        self.stream.ack([index])
        self._window.release()

    def _run(self) -> None:
        pacer = Pacer(self.rate)
        while not self._stop.is_set():
            if not self._window.acquire(timeout=0.2):
                continue
            index = self.stream.new(time.monotonic())
            info = self.client.publish(self.topic, self.stream.event(index), qos=1)
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    early = True
                else:
                    self._pending[info.mid] = index
                    early = False
            if early:
                self.stream.ack([index])
                self._window.release()
            pacer.wait(self._stop)

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self, drain: float) -> None:
        """Stop making events; wait up to `drain` seconds for the outstanding PUBACKs."""
        self._stop.set()
        self.thread.join(5)
        deadline = time.monotonic() + drain
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class HttpStats:
    statuses: dict[str, int] = field(default_factory=dict)  # "202", "202-not-durable", "503", "error:..."
    anomalies: list[str] = field(default_factory=list)  # answers no fault explains (a 5xx other than 503...)

    def count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


def post_until_durable(client: httpx.Client, urls: list[str], token: str, body: bytes, *, ndjson: bool,
                       stop: Callable[[], bool], stats: HttpStats, first: int = 0) -> dict[str, Any] | None:
    """POST until the answer is 202 with `durable: true` (the answer), or `stop()` (None). The first try
    goes to `urls[first]`, each retry to the next URL (another node of a cluster)."""
    headers = {"Authorization": f"Bearer {token}",
               "Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    delay = 0.1
    attempt = first
    while True:
        url = urls[attempt % len(urls)]
        attempt += 1
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            stats.count(f"error:{type(error).__name__}")
        else:
            status = response.status_code
            if status == 202:
                answer: dict[str, Any] = response.json()
                if answer.get("durable"):
                    stats.count("202")
                    return answer
                stats.count("202-not-durable")
            else:
                stats.count(str(status))
                if status not in (429, 503):
                    stats.anomalies.append(f"HTTP {status}: {response.text[:300]}")
        if stop():
            return None
        time.sleep(delay)
        delay = min(1.0, delay * 2)


class HttpGenerator:
    """Posts `stream` in NDJSON batches of `batch` at `rate` events/s, each batch until durable, to each
    of `apis` in turn."""

    def __init__(self, apis: str | list[str], token: str, stream: Stream, *, rate: float, batch: int = 50) -> None:
        self.urls = [api + EVENTS_PATH for api in ([apis] if isinstance(apis, str) else apis)]
        self._batches = 0
        self.token = token
        self.stream = stream
        self.rate = rate
        self.batch = batch
        self.stats = HttpStats()
        self._stop = threading.Event()
        self._give_up = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-http-generator", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        pacer = Pacer(self.rate)
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                indexes = [self.stream.new(now) for _ in range(self.batch)]
                self._send(client, indexes)
                pacer.wait(self._stop, self.batch)

    def _send(self, client: httpx.Client, indexes: list[int]) -> None:
        while indexes:
            body = b"\n".join(self.stream.event(index) for index in indexes)
            self._batches += 1
            answer = post_until_durable(client, self.urls, self.token, body, ndjson=True,
                                        stop=self._give_up.is_set, stats=self.stats, first=self._batches)
            if answer is None:
                return
            rejected = {item["index"]: item["error"] for item in answer.get("rejected", [])}
            self.stream.ack([index for position, index in enumerate(indexes) if position not in rejected])
            retry = []
            for position, error in rejected.items():
                if error.startswith("overloaded"):
                    retry.append(indexes[position])
                else:
                    self.stats.anomalies.append(f"event {indexes[position]} rejected: {error}")
            indexes = retry

    def stop(self, drain: float) -> None:
        """Stop making batches; the one in flight gets up to `drain` seconds to be acknowledged."""
        self._stop.set()
        self.thread.join(drain)
        self._give_up.set()
        self.thread.join(15)


@dataclass
class Toggle:
    number: int
    value: float
    high: bool
    sent_at: float
    acked_at: float | None = None


class AlarmDriver:
    """Drives the alarm rule: a toggle every `period` seconds, each posted until durable (to each of
    `apis` in turn)."""

    def __init__(self, apis: str | list[str], token: str, source: str, *, period: float) -> None:
        self.urls = [api + EVENTS_PATH for api in ([apis] if isinstance(apis, str) else apis)]
        self.token = token
        self.source = source
        self.period = period
        self.toggles: list[Toggle] = []
        self.stats = HttpStats()
        self._stop = threading.Event()
        self._give_up = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-alarm-driver", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            number = 0
            while not self._stop.is_set() or (self.toggles and self.toggles[-1].high):
                self._toggle(client, number)
                number += 1
                if not self._stop.is_set():
                    self._stop.wait(self.period)

    def _toggle(self, client: httpx.Client, number: int) -> None:
        high = number % 2 == 0
        value = 1000.0 + number if high else number / 1000
        toggle = Toggle(number, value, high, time.monotonic())
        self.toggles.append(toggle)
        body = orjson.dumps({"id": f"alarm-{number}", "source": self.source, "type": "telemetry",
                             "time": datetime.now(UTC).isoformat(), "metric": "chaos.alarm", "value": value})
        if post_until_durable(client, self.urls, self.token, body, ndjson=False, stop=self._give_up.is_set,
                              stats=self.stats, first=number) is not None:
            toggle.acked_at = time.monotonic()

    def stop(self, drain: float) -> None:
        """Stop after an under-threshold toggle (so every episode can resolve), within `drain` seconds."""
        self._stop.set()
        self.thread.join(drain)
        self._give_up.set()
        self.thread.join(15)
