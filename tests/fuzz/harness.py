"""The fuzzing harness: a real `ioc run` (tests/e2e/daemon.py) against real Mosquitto and InfluxDB, a
sender per transport, the oracle, and a tally per target.

The oracle (docs/operations.md, "bad input never gets a 5xx"; docs/transports.md "nothing is dropped
silently"):
- HTTP: no status >= 500 (`/readyz` may say 503: that is its job, not an answer to input), no
  connection dropped by the server, the process alive, `/healthz` answering after each batch.
- MQTT: every message is accepted, a duplicate, or dead-lettered. One message may hold several items
  (a JSON array), so a message of n items (1 <= n <= max_items, by the JSON grammar) must yield n
  outcomes (or 1, refused whole), anything else (one event, bad JSON, bad UTF-8, an empty or oversized
  batch) exactly one (`strategies.outcomes_allowed`). Outcomes are read from
  `/metrics` (`ioc_events_accepted_total`, `..._duplicate_total`, `..._rejected_total`, summed over
  sources) and every rejection must also arrive on `ioc/v1/deadletter/#` (rejected items of one message
  may share a letter, "N items rejected: ..."; its N is what it carries). Dead letters of points InfluxDB
  refused later ("influx refused the point") are counted apart as `late`: the event was accepted first.
- The daemon's log: every line at level error or above is a finding (a stage that crashed on an event
  is a crash even when the request was answered 202).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from ioc.config import token_sha256
from tests.e2e.daemon import (
    OPERATOR_TOKEN,
    OTHER_VENDOR_TOKEN,
    VENDOR_TOKEN,
    DaemonProcess,
    assert_counting_rule,
)
from tests.fuzz.routes import HttpCase, Known, Route, load_routes
from tests.fuzz.strategies import dumps, outcomes_allowed
from tests.servers import free_port

FUZZ_SOURCES = ("qtmt-aqi", "qtmt-aqi2")
ALLOWED_5XX = {("GET /readyz", 503)}
HEALTHZ_EVERY = 50  # cases between two /healthz checks
MAX_BODY_READ = 1 << 20  # bytes of an answer read at most
MAX_HEAD = 16 * 1024  # h11's limit on a request's head (uvicorn's default `h11_max_incomplete_event_size`)
MAX_ITEMS = 10_000
RULES = """
rules:
  - id: fuzz-high
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: fuzz.level}
    group_by: [area]
    op: ">="
    threshold: 100
    summary: "fuzz {{ area }} {{ value }}"
"""


VIEWER_TOKEN = "viewer-token-1"


def config_text(*, http_port: int, mqtt_url: str, influx_url: str, database: str, workdir: Path,
                client_id: str, rules: Path, public_read: bool = True) -> str:
    """The daemon under fuzzing: as in production, with a quick InfluxDB flush (a valid POST waits for
    durability) and a rule without `for`, so alerts to ack exist at once."""
    return f"""
[http]
listen = "127.0.0.1:{http_port}"
durable_wait = "2s"
public_read = {str(public_read).lower()}

[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
reconnect_min = "200ms"
reconnect_max = "2s"

[influx]
url = "{influx_url}"
database = "{database}"
flush_interval = "20ms"
retry_min = "100ms"
retry_max = "1s"

[store]
path = "{workdir / 'var' / 'ioc.db'}"

[log]
format = "json"

[rules]
paths = ["@packs", "{rules}"]

[[vendors]]
name = "qtmt"
token_sha256 = "{token_sha256(VENDOR_TOKEN)}"
sources = {json.dumps(list(FUZZ_SOURCES))}
rate = 1000000

[[vendors]]
name = "viettel"
token_sha256 = "{token_sha256(OTHER_VENDOR_TOKEN)}"
sources = ["viettel-ran"]

[[operators]]
name = "truc-ban-1"
token_sha256 = "{token_sha256(OPERATOR_TOKEN)}"

[[viewers]]
name = "wall-1"
token_sha256 = "{token_sha256(VIEWER_TOKEN)}"
"""


def make_daemon(workdir: Path, *, mqtt_url: str, influx_url: str, name: str, public_read: bool = True
                ) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "fuzz-rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    port = free_port()
    config = workdir / "ioc.toml"
    config.write_text(config_text(http_port=port, mqtt_url=mqtt_url, influx_url=influx_url,
                                  database=f"fuzz_{name}", workdir=workdir, client_id=f"ioc-fuzz-{name}",
                                  rules=rules, public_read=public_read), encoding="utf-8")
    return DaemonProcess(config, port, workdir / "ioc.log")


# --- the tally ---------------------------------------------------------------------------------------------

@dataclass
class Tally:
    """What happened to one target's cases; `failures` keeps the shortest few examples of each kind."""

    target: str
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    crashes: int = 0
    slow: int = 0
    unsendable: int = 0
    seconds: float = 0.0  # spent waiting for answers
    bad_error_shape: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    late: int = 0
    missing: int = 0
    dropped: int = 0  # dead letters dropped by the connector (counted, but not on the topic)
    failures: dict[str, list[str]] = field(default_factory=dict)
    shapes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def keep(self, kind: str, example: str, *, into: dict[str, list[str]] | None = None, limit: int = 3) -> None:
        bucket = (self.failures if into is None else into).setdefault(kind, [])
        bucket.append(example)
        bucket.sort(key=len)
        del bucket[limit:]


class Finding(AssertionError):
    """A case that broke the oracle (raised in strict mode, so hypothesis shrinks it)."""


# --- the daemon's log ------------------------------------------------------------------------------------

class LogWatch:
    """New lines of the daemon's JSON log at level error or above, since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def errors(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            chunk = log.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        found = []
        for line in chunk[:end].splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                if b"Traceback" in line or b"Error" in line:
                    found.append(line.decode("utf-8", "replace")[:2000])
                continue
            if isinstance(record, dict) and record.get("level") in ("error", "critical", "exception"):
                found.append(line.decode("utf-8", "replace")[:2000])
        return found


# --- HTTP ----------------------------------------------------------------------------------------------

@dataclass
class HttpFuzzer:
    """Sends `HttpCase`s over one keep-alive client and applies the oracle."""

    daemon: DaemonProcess
    strict: bool = True  # raise Finding on the first broken case (pytest), or only record (the long run)
    timeout: float = 30.0
    slow_after: float = 2.0
    tallies: dict[str, Tally] = field(default_factory=dict)
    since_health: int = 0
    prefix: str = ""  # before each target's name in the tally (a second daemon's run, say)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.daemon.api, timeout=self.timeout)
        self.stream_client = httpx.Client(base_url=self.daemon.api, timeout=self.timeout)
        self.logs = LogWatch(self.daemon.log_path)

    def close(self) -> None:
        self.client.close()
        self.stream_client.close()

    def tally(self, target: str) -> Tally:
        name = self.prefix + target
        return self.tallies.setdefault(name, Tally(name))

    def routes(self) -> list[Route]:
        """The routes of the daemon's OpenAPI document (read with a viewer token: reads may be closed)."""
        answer = self.client.get("/openapi.json", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        answer.raise_for_status()
        return load_routes(answer.json())

    def send(self, case: HttpCase) -> None:
        tally = self.tally(case.route)
        tally.cases += 1
        started = time.monotonic()
        try:
            request = self.client.build_request(case.method, self.daemon.api + case.target,
                                                headers=list(case.headers), content=case.body)
            client = self.stream_client if case.streaming else self.client
            response = client.send(request, stream=True)
            try:
                # Any route may stream (a stray GET of /api/v1/stream, say): read a bounded prefix
                # within a bounded time, never to an end that may not come.
                body = b"" if case.streaming else _read_some(response, MAX_BODY_READ, started + self.timeout)
            finally:
                response.close()
        except (httpx.LocalProtocolError, httpx.InvalidURL) as error:
            tally.unsendable += 1  # httpx refused to send it (the raw-request target sends such bytes)
            tally.keep(f"unsendable: {type(error).__name__}", f"{error} {case.short(100)}", into=tally.shapes)
            return
        except httpx.HTTPError as error:
            if _head_size(case) > MAX_HEAD and isinstance(error, httpx.ReadError | httpx.WriteError
                                                          | httpx.RemoteProtocolError):
                # h11 refuses a request head over 16 KiB (when it arrives in pieces) by closing the
                # connection, so a client still sending sees a reset. Counted as closed, noted.
                tally.statuses[0] += 1
                tally.keep("connection closed on a head over 16 KiB", f"{error} {case.short(100)}", into=tally.shapes)
                self.client.close()
                self.client = httpx.Client(base_url=self.daemon.api, timeout=self.timeout)
                return
            tally.crashes += 1
            alive = self.daemon.process is not None and self.daemon.process.poll() is None
            what = f"{type(error).__name__}: {error} (daemon {'alive' if alive else 'DEAD'})"
            saved = self.save(case)
            self._fail(tally, what, f"{what}\n  {case.short()} (saved in {saved})")
            self.client.close()  # a broken keep-alive connection must not fail the next case
            self.client = httpx.Client(base_url=self.daemon.api, timeout=self.timeout)
            return
        elapsed = time.monotonic() - started
        tally.seconds += elapsed
        tally.statuses[response.status_code] += 1
        if elapsed > self.slow_after:
            tally.slow += 1
            tally.keep(f"slow (> {self.slow_after}s)", f"{elapsed:.1f}s {case.short()}", into=tally.shapes)
        status = response.status_code
        if status >= 500 and (case.route, status) not in ALLOWED_5XX:
            time.sleep(0.05)  # the daemon logs the cause just after it answers
            logged = "".join(f"\n  log: {line}" for line in self.logs.errors())
            saved = self.save(case)
            self._fail(tally, f"status {status}",
                       f"{status} {body[:300]!r}\n  {case.short()} (saved in {saved}){logged}")
        elif (400 <= status < 500 and case.method != "HEAD" and not case.streaming
              and not _is_error_body(body, alertmanager=" /api/v2/" in case.route)):
            tally.bad_error_shape += 1
            tally.keep(f"{status} without an {{\"error\"}} body", f"{body[:200]!r} {case.short()}",
                       into=tally.shapes)
        self.since_health += 1
        if self.since_health >= HEALTHZ_EVERY:
            self.checkpoint(tally)

    def save(self, case: HttpCase | bytes) -> Path:
        """Keep a case that broke the oracle beside the daemon's log, for replaying by hand
        (`tests.fuzz.harness.replay`)."""
        folder = self.daemon.log_path.parent / "findings"
        folder.mkdir(exist_ok=True)
        path = folder / f"http-{len(list(folder.iterdir())):04d}.json"
        if isinstance(case, bytes):
            record: dict[str, Any] = {"raw": base64.b64encode(case).decode()}
        else:
            record = {"method": case.method, "target": case.target, "streaming": case.streaming,
                      "headers": [[base64.b64encode(n).decode(), base64.b64encode(v).decode()]
                                  for n, v in case.headers],
                      "body": None if case.body is None else base64.b64encode(case.body).decode()}
        path.write_text(json.dumps(record), encoding="utf-8")
        return path

    def checkpoint(self, tally: Tally | None = None) -> None:
        """The process is alive, `/healthz` answers, and the log holds no new error."""
        self.since_health = 0
        tally = tally or self.tally("checkpoint")
        problem = check_alive(self.daemon)
        if problem:
            tally.crashes += 1
            self._fail(tally, "daemon down", problem)
        for line in self.logs.errors():
            self._fail(tally, "error logged", line)

    def _fail(self, tally: Tally, kind: str, example: str) -> None:
        tally.keep(kind, example)
        if self.strict:
            raise Finding(f"{tally.target}: {kind}\n{example}")


    def send_raw(self, request: bytes, *, timeout: float = 10.0) -> None:
        """A request as bytes on its own socket; the status of the first answer, 0 when the server
        closed without one (fine for garbage, as long as the daemon lives)."""
        tally = self.tally("raw requests")
        tally.cases += 1
        host, _, port = self.daemon.api.removeprefix("http://").partition(":")
        answer = b""
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as sock:
                try:
                    sock.sendall(request)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may refuse before reading it all; its answer is still there
                while b"\r\n" not in answer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        except ConnectionResetError:
            pass
        except OSError as error:
            tally.crashes += 1
            self._fail(tally, f"{type(error).__name__}", f"{error}\n  {request[:300]!r}")
            return
        parts = answer.split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        tally.statuses[status] += 1
        if status >= 500:
            self._fail(tally, f"status {status}", f"{answer[:300]!r}\n  {request[:300]!r} (saved in "
                                                  f"{self.save(request)})")
        time.sleep(0.02)  # an error the request caused is logged after the answer: pin it on this case
        for line in self.logs.errors():
            self._fail(tally, "error logged", f"{line}\n  {request[:600]!r} (saved in {self.save(request)})")
        self.since_health += 1
        if self.since_health >= HEALTHZ_EVERY:
            self.checkpoint(tally)


def _head_size(case: HttpCase) -> int:
    return len(case.target) + sum(len(name) + len(value) + 4 for name, value in case.headers)


def _read_some(response: httpx.Response, limit: int, deadline: float) -> bytes:
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= limit or time.monotonic() > deadline:
            break
    return bytes(body)


def _is_error_body(content: bytes, *, alertmanager: bool = False) -> bool:
    """`{"error": "..."}`; on Alertmanager's API v2 also its own shape, the reason as a JSON string."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(body, dict) and isinstance(body.get("error"), str)) or (alertmanager and isinstance(body, str))


def check_alive(daemon: DaemonProcess, timeout: float = 5.0) -> str | None:
    """None when the process runs and `/healthz` answers 200 within `timeout`; else what is wrong."""
    process = daemon.process
    if process is None or process.poll() is not None:
        code = None if process is None else process.returncode
        return f"ioc run exited with {code}; log tail:\n{daemon.log()[-3000:]}"
    try:
        answer = httpx.get(f"{daemon.api}/healthz", timeout=timeout)
    except httpx.HTTPError as error:
        return f"/healthz: {type(error).__name__}: {error}"
    return None if answer.status_code == 200 else f"/healthz answered {answer.status_code}"


def seed_daemon(daemon: DaemonProcess, known: Known) -> None:
    """Real alerts (firing, one acknowledged) and a silence, so ack, unack and silence ids exist."""
    now = time.time()
    events = [{"id": f"seed-{area}-{now}", "source": FUZZ_SOURCES[0], "type": "telemetry",
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 5)), "metric": "fuzz.level",
               "value": 150, "area": area} for area in ("60", "593", "22723")]
    auth = {"Authorization": f"Bearer {VENDOR_TOKEN}"}
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    with httpx.Client(base_url=daemon.api, timeout=10, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}
                      ) as client:
        answer = client.post("/api/v1/events", content=dumps(events), headers=auth)
        assert answer.status_code == 202 and answer.json()["accepted"] == 3, answer.text
        deadline = time.monotonic() + 15
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            alerts = [a for a in client.get("/api/v1/alerts").json() if a["rule"] == "fuzz-high"]
            if len(alerts) >= 3:
                break
            time.sleep(0.1)
        known.alert_ids[:] = [alert["id"] for alert in alerts]
        assert known.alert_ids, "the seed events raised no alert"
        client.post(f"/api/v1/alerts/{known.alert_ids[0]}/ack", headers=operator)
        silence = client.post("/api/v1/silences", headers=operator, content=dumps(
            {"matchers": [{"name": "area", "value": "593"}], "duration": "1h", "comment": "fuzz"}))
        assert silence.status_code == 201, silence.text
        known.silence_ids[:] = [silence.json()["id"]]
    known.vendor_token, known.other_vendor_token, known.operator_token = (VENDOR_TOKEN, OTHER_VENDOR_TOKEN,
                                                                          OPERATOR_TOKEN)
    known.viewer_token = VIEWER_TOKEN
    known.sources = (*FUZZ_SOURCES, "viettel-ran", "QTMT")


# --- MQTT ----------------------------------------------------------------------------------------------

LATE_REASON = "influx refused the point"
SEVERAL_REJECTED = re.compile(r"^(\d+) items rejected: ")


@dataclass(frozen=True, slots=True)
class Outcomes:
    accepted: float
    duplicates: float
    rejected: float
    received: float
    dead_letters: int  # items of the intake dead letters seen on the topic
    late: int  # dead letters of points a sink refused after accepting them
    dropped: float  # dead letters the connector dropped and counted (ioc_mqtt_dead_letters_dropped_total)

    def __sub__(self, other: Outcomes) -> Outcomes:
        return Outcomes(self.accepted - other.accepted, self.duplicates - other.duplicates,
                        self.rejected - other.rejected, self.received - other.received,
                        self.dead_letters - other.dead_letters, self.late - other.late,
                        self.dropped - other.dropped)

    @property
    def total(self) -> float:
        return self.accepted + self.duplicates + self.rejected


class DeadLetters:
    """Subscribes to `ioc/v1/deadletter/#` and counts the items its letters carry, intake rejections and
    late ones apart."""

    def __init__(self, host: str, port: int) -> None:
        self.intake = 0
        self.late = 0
        self.unparsable: list[bytes] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        subscribed = threading.Event()
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(host, port)
        self._client.subscribe("ioc/v1/deadletter/#", qos=1)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK for ioc/v1/deadletter/#")

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            reason = str(orjson.loads(message.payload).get("reason", ""))
        except (orjson.JSONDecodeError, AttributeError):
            reason = ""
            self.unparsable.append(bytes(message.payload[:200]))
        # Rejected items of one message share a dead letter whose reason starts "N items rejected: ".
        several = SEVERAL_REJECTED.match(reason)
        items = int(several.group(1)) if several else 1
        with self._lock:
            if reason.startswith(LATE_REASON):
                self.late += items
            else:
                self.intake += items

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.intake, self.late

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Publisher:
    """One paho client publishing at QoS 1 and waiting for every PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._client.connect(host, port)
        self._client.loop_start()

    def publish(self, messages: list[tuple[str, bytes]], timeout: float = 30.0) -> None:
        infos = [self._client.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge a publish")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class MqttFuzzer:
    """Publishes fuzzed messages on `ioc/v1/events/{source}` and checks each was accepted or dead-lettered."""

    daemon: DaemonProcess
    host: str
    port: int
    strict: bool = True
    settle: float = 30.0  # seconds to wait at most for a message's outcomes
    stall: float = 2.0  # ... and for the next one to show up
    tally: Tally = field(default_factory=lambda: Tally("MQTT ioc/v1/events/{source}"))
    since_health: int = 0

    def __post_init__(self) -> None:
        self.dead = DeadLetters(self.host, self.port)
        self.publisher = Publisher(self.host, self.port)
        self.logs = LogWatch(self.daemon.log_path)
        self.metrics = httpx.Client(base_url=self.daemon.api, timeout=10)

    def close(self) -> None:
        self.dead.close()
        self.publisher.close()
        self.metrics.close()

    def outcomes(self) -> Outcomes:
        sums: dict[str, float] = defaultdict(float)
        text = self.metrics.get("/metrics").text
        for family in text_string_to_metric_families(text):
            if family.name in ("ioc_events_accepted", "ioc_events_duplicate", "ioc_events_rejected",
                               "ioc_events_received", "ioc_mqtt_dead_letters_dropped"):
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        sums[family.name] += sample.value
        intake, late = self.dead.counts()
        return Outcomes(sums["ioc_events_accepted"], sums["ioc_events_duplicate"], sums["ioc_events_rejected"],
                        sums["ioc_events_received"], intake, late, sums["ioc_mqtt_dead_letters_dropped"])

    def wait_settled(self, before: Outcomes, done: Callable[[Outcomes], bool], confirm: float) -> Outcomes:
        """Outcomes since `before` once `done` holds and they stay the same for `confirm` seconds (a
        scrape may catch a batch half counted), or once nothing moved for `stall` seconds (a vanished
        message must not cost the whole `settle`)."""
        deadline = time.monotonic() + self.settle
        delay = 0.002
        last, moved = None, time.monotonic()
        while True:
            delta = self.outcomes() - before
            now = time.monotonic()
            if done(delta) and delta.dead_letters + delta.dropped >= delta.rejected:
                time.sleep(confirm)
                again = self.outcomes() - before
                if again == delta:
                    return delta
                delta = again
            if now > deadline:
                return delta
            if delta != last:
                last, moved = delta, now
            elif now - moved > self.stall:
                return delta
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def run(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish `messages` and check their outcomes together; when they do not add up, replay them
        one by one to find the ones that broke the oracle (strict mode: raise on the first)."""
        allowed = [outcomes_allowed(payload, max_items=MAX_ITEMS) for _, payload in messages]
        least, most = sum(min(a) for a in allowed), sum(max(a) for a in allowed)
        before = self.outcomes()
        self.publisher.publish(messages)
        if len(messages) == 1:
            delta = self.wait_settled(before, lambda d: int(d.total) in allowed[0], 0.02)
        else:
            delta = self.wait_settled(before, lambda d: d.total >= least, 0.1)
        self.tally.cases += len(messages)
        self._count(delta)
        fits = int(delta.total) in allowed[0] if len(messages) == 1 else least <= delta.total <= most
        if not fits or delta.dead_letters != delta.rejected or delta.received != delta.total:
            if len(messages) == 1:
                topic, payload = messages[0]
                self.tally.missing += max(0, least - int(delta.total))
                self.tally.dropped += int(delta.dropped)
                saved = self.save(topic, payload)
                self._fail("not accepted nor dead-lettered" if delta.total < least
                           else "dead letters dropped (counted)" if delta.dropped else "outcomes do not add up",
                           f"expected {_allowed_text(allowed[0])} outcome(s), got {delta}\n  topic={topic!r} "
                           f"payload={payload[:400]!r}{'...' if len(payload) > 400 else ''} ({len(payload)} "
                           f"bytes, saved in {saved})")
            else:
                self._count(delta, sign=-1)
                for message in messages:
                    self.tally.cases -= 1
                    self.run([message])
        self.since_health += len(messages)
        if self.since_health >= HEALTHZ_EVERY:
            self.checkpoint()

    def save(self, topic: str, payload: bytes) -> Path:
        """Keep a payload that broke the oracle beside the daemon's log, for replaying by hand."""
        folder = self.daemon.log_path.parent / "findings"
        folder.mkdir(exist_ok=True)
        path = folder / f"mqtt-{len(list(folder.iterdir())):04d}.bin"
        path.write_bytes(topic.encode("utf-8", "surrogatepass") + b"\n" + payload)
        return path

    def _count(self, delta: Outcomes, sign: int = 1) -> None:
        self.tally.accepted += sign * int(delta.accepted)
        self.tally.duplicates += sign * int(delta.duplicates)
        self.tally.dead_lettered += sign * delta.dead_letters
        self.tally.late += sign * delta.late

    def checkpoint(self) -> None:
        self.since_health = 0
        problem = check_alive(self.daemon)
        if problem:
            self.tally.crashes += 1
            self._fail("daemon down", problem)
        for line in self.logs.errors():
            self._fail("error logged", line)

    def _fail(self, kind: str, example: str) -> None:
        self.tally.keep(kind, example)
        if self.strict:
            raise Finding(f"MQTT: {kind}\n{example}")


def _allowed_text(allowed: range | tuple[int, ...]) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start} to {allowed.stop - 1}"
    return " or ".join(str(count) for count in sorted(set(allowed)))


# --- servers for the long run (pytest uses the session fixtures of tests/conftest.py) ----------------------

@contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def print_table(tallies: list[Tally], out: Callable[[str], None] = print) -> None:
    """The long run's table: per target cases, 2xx, 3xx, 4xx by status, 5xx, crashes; MQTT outcomes."""
    out(f"{'target':<46} {'cases':>6} {'2xx':>6} {'3xx':>4} {'4xx by status':<40} {'5xx':>4} {'crash':>5} {'slow':>4}")
    for t in tallies:
        if not t.cases and not t.failures:
            continue
        ok = sum(c for s, c in t.statuses.items() if 200 <= s < 300)
        redirects = sum(c for s, c in t.statuses.items() if 300 <= s < 400)
        fours = " ".join(f"{s}:{c}" for s, c in sorted(t.statuses.items()) if 400 <= s < 500)
        if t.statuses.get(0):
            fours += f" closed:{t.statuses[0]}"
        out(f"{t.target:<46} {t.cases:>6} {ok:>6} {redirects:>4} {fours:<40} {t.server_errors:>4} {t.crashes:>5} "
            f"{t.slow:>4}")
        if t.accepted or t.dead_lettered or t.missing or t.duplicates:
            out(f"{'':<46} accepted {t.accepted}, duplicates {t.duplicates}, dead-lettered {t.dead_lettered}, "
                f"late dead letters {t.late}, dead letters dropped {t.dropped}, missing {t.missing}")
    total = sum(t.cases for t in tallies)
    out(f"{'total':<46} {total:>6} {'':>6} {'':>4} {'':<40} {sum(t.server_errors for t in tallies):>4} "
        f"{sum(t.crashes for t in tallies):>5}")


def load_case(path: Path) -> HttpCase | bytes:
    """A case `HttpFuzzer.save` kept: an `HttpCase`, or the bytes of a raw request."""
    record = json.loads(path.read_text(encoding="utf-8"))
    if "raw" in record:
        return base64.b64decode(record["raw"])
    headers = tuple((base64.b64decode(n), base64.b64decode(v)) for n, v in record["headers"])
    body = None if record["body"] is None else base64.b64decode(record["body"])
    return HttpCase("replay", record["method"], record["target"], headers, body, record["streaming"])


def settle_counts(daemon: DaemonProcess, timeout: float = 30.0) -> tuple[list[str], dict[str, float]]:
    """Once intake is idle: what breaks docs/metrics.md's counting rule (empty when it holds) and the sinks'
    outcomes ({"written": n, "dead_lettered": n, ...}). A point a sink refused after its event was
    accepted (a time no store holds, say) is a vendor told "stored" wrongly: `dead_lettered` must stay 0."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_counting_rule(daemon)
            problems: list[str] = []
        except AssertionError as error:
            problems = [f"counting rule: {error}"]
        outcomes: dict[str, float] = defaultdict(float)
        for (name, labels), value in daemon.metrics().items():
            if name == "ioc_sink_points_total":
                outcomes[dict(labels)["outcome"]] += value
            elif name in ("ioc_sink_queue_points", "ioc_sink_spool_points"):
                outcomes["pending"] += value
        if (not problems and not outcomes.get("pending")) or time.monotonic() > deadline:
            if outcomes.get("dead_lettered"):
                problems.append(f"{outcomes['dead_lettered']:.0f} accepted points dead-lettered by a sink later")
            return problems, dict(outcomes)
        time.sleep(0.2)
