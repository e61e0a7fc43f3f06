"""The checker: what must hold whatever the nemesis did.

During the run, `Monitor` (a thread):
- scrapes `/metrics` every `scrape_every` seconds and checks the counting rule of docs/metrics.md on every
  scrape: per source received = accepted + rejected + duplicate; per sink handed = written +
  dead_lettered + dropped + queue + spool;
- reads the daemon's VmRSS (`/proc/PID/status`) every `rss_every` seconds; past `rss_kill_mib` it kills
  the daemon (a runaway must not take the shared machine down) and records it;
- is the watchdog: the daemon exiting while the nemesis did not stop it is a crash, recorded with the
  tail of its log, and the daemon is started again so the run goes on.

`DeadLetters` keeps every dead letter (a persistent MQTT session of its own: broker restarts lose none).

At the end, `check_stream` proves every acknowledged event is in InfluxDB exactly once (or was refused
by InfluxDB and dead-lettered: the 400 fault), and `check_alerts` that every alert change the alarm
toggles caused was notified to the webhook exactly once.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.generator import Stream, Toggle
from tests.chaos.world import ALARM_RULE, DATABASE, Node


@dataclass
class Violation:
    at: float  # monotonic
    kind: str  # counting-rule | rss | crash | ...
    detail: str


def read_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def counting_rule_problems(text: str) -> list[str]:
    """The breaches of docs/metrics.md's counting rules in one scrape (empty when it holds)."""
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value

    def total(name: str, label: str, value: str) -> float:
        return sum(v for labels, v in values.get(name, {}).items() if (label, value) in labels)

    problems = []
    for labels in values.get("ioc_events_received_total", {}):
        source = dict(labels)["source"]
        received = total("ioc_events_received_total", "source", source)
        parts = [total(f"ioc_events_{kind}_total", "source", source) for kind in ("accepted", "rejected",
                                                                                 "duplicate")]
        if received != sum(parts):
            problems.append(f"source {source}: received {received:g} != accepted {parts[0]:g} + rejected "
                            f"{parts[1]:g} + duplicate {parts[2]:g}")
    for labels in values.get("ioc_sink_points_handed_total", {}):
        sink = dict(labels)["sink"]
        handed = total("ioc_sink_points_handed_total", "sink", sink)
        outcomes = total("ioc_sink_points_total", "sink", sink)
        queued = total("ioc_sink_queue_points", "sink", sink)
        spooled = total("ioc_sink_spool_points", "sink", sink)
        if handed != outcomes + queued + spooled:
            problems.append(f"sink {sink}: handed {handed:g} != outcomes {outcomes:g} + queue {queued:g} + "
                            f"spool {spooled:g}")
    return problems


def metric_total(text: str, name: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name)


class Monitor:
    """Watches one node (the one-daemon world is one)."""

    def __init__(self, world: Node, *, scrape_every: float = 1.0, rss_every: float = 0.25,
                 rss_kill_mib: float = 2048.0) -> None:
        self.world = world
        self.scrape_every = scrape_every
        self.rss_every = rss_every
        self.rss_kill_mib = rss_kill_mib
        self.rss: list[tuple[float, float]] = []  # (monotonic, MiB)
        self.scrapes = 0
        self.violations: list[Violation] = []
        # The broker link as /metrics tells it at each scrape, changes only: (monotonic, pid, connected).
        self.link: list[tuple[float, int, bool]] = []
        self.restarts_after_crash = 0
        self._stop = threading.Event()
        self._log_offset = 0
        self.thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_scrape = 0.0
        with httpx.Client(timeout=3.0) as client:
            while not self._stop.wait(self.rss_every):
                self._watch()
                now = time.monotonic()
                if now >= next_scrape:
                    next_scrape = now + self.scrape_every
                    self._scrape(client)

    def _watch(self) -> None:
        world = self.world
        process = world.daemon.process
        if process is None:
            return
        with world.lock:
            crashed = not world.expect_down and process.poll() is not None
            if crashed:
                world.expect_down = True
        if crashed:
            tail = world.daemon.log()[-3000:]
            self.violations.append(Violation(time.monotonic(), "crash",
                                             f"ioc run exited with {process.returncode}; log tail: {tail}"))
            self.restarts_after_crash += 1
            try:
                world.start_daemon(world.failpoints)
            except AssertionError as error:
                self.violations.append(Violation(time.monotonic(), "crash", f"no restart: {error}"))
            return
        pid = world.daemon.pid
        if pid is None:
            return
        rss = read_rss_mib(pid)
        if rss is None:
            return
        self.rss.append((time.monotonic(), rss))
        if rss > self.rss_kill_mib:
            self.violations.append(Violation(time.monotonic(), "rss",
                                             f"RSS {rss:.0f} MiB over {self.rss_kill_mib:.0f}: killed"))
            process.kill()  # not via the world: the watchdog records the death as the crash it is

    def _scrape(self, client: httpx.Client) -> None:
        pid = self.world.daemon.pid
        if pid is None:
            return
        try:
            response = client.get(f"{self.world.daemon.api}/metrics")
        except httpx.HTTPError:
            return  # down or starting: nothing to check
        if response.status_code != 200:
            return
        self.scrapes += 1
        now = time.monotonic()
        for problem in counting_rule_problems(response.text):
            self.violations.append(Violation(now, "counting-rule", f"{self.world.name} pid {pid}: {problem}"))
        connected = metric_total(response.text, "ioc_mqtt_connected") > 0
        if not self.link or self.link[-1][1:] != (pid, connected):
            self.link.append((now, pid, connected))

    def max_rss(self, start: float = 0.0, end: float = float("inf")) -> float:
        return max((mib for at, mib in self.rss if start <= at < end), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


class DeadLetters:
    """Every message on `ioc/v1/deadletter/#`, decoded: (monotonic time, topic, body)."""

    def __init__(self, port: int, *, client_id: str = "chaos-deadletters") -> None:
        self.letters: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=False)
        client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # floats work
        client.max_inflight_messages_set(0)
        client.on_connect = lambda c, *_: c.subscribe("ioc/v1/deadletter/#", qos=1)
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.on_message = self._on_message
        client.connect_async("127.0.0.1", port, keepalive=10)
        client.loop_start()
        self.client = client
        if not self.subscribed.wait(15):
            raise TimeoutError("the dead-letter collector got no SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            body = {"raw": message.payload[:200].decode("latin-1")}
        with self.lock:
            self.letters.append((time.monotonic(), message.topic, body))

    def all(self) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return list(self.letters)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def payload_bytes(letter: dict[str, Any]) -> bytes:
    payload = letter.get("payload", "")
    if letter.get("encoding") == "base64":
        return base64.b64decode(payload)
    return str(payload).encode()


def refused_points(letters: list[tuple[float, str, dict[str, Any]]], stream: Stream) -> set[int]:
    """Events of `stream` whose points InfluxDB refused and the daemon dead-lettered (the 400 fault)."""
    found = set()
    prefix = f"{stream.metric},".encode()
    base_ns = stream.base_ns
    for _, _, letter in letters:
        if not str(letter.get("reason", "")).startswith("influx refused the point"):
            continue
        point = payload_bytes(letter)
        if not point.startswith(prefix):
            continue
        try:
            time_ns = int(point.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        offset = time_ns - base_ns
        if offset >= 0 and offset % 1000 == 0:
            found.add(offset // 1000)
    return found


# --- InfluxDB ------------------------------------------------------------------------------------------

def influx_series(url: str, query: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"db": DATABASE, "q": query, "epoch": "ns"})
    response = httpx.get(f"{url}/query?{params}", timeout=60)
    response.raise_for_status()
    result: dict[str, Any] = response.json()["results"][0]
    if "error" in result:
        if "database not found" in result["error"]:
            return []
        raise RuntimeError(result["error"])
    return list(result.get("series", []))


def influx_count(url: str, measurement: str, where: str = "") -> int:
    series = influx_series(url, f'SELECT count("value") FROM "{measurement}"' + (f" WHERE {where}" if where else ""))
    return int(series[0]["values"][0][1]) if series else 0


def backlog(url: str, stream: Stream, *, look_back: int = 50_000) -> int:
    """Of the stream's last `look_back` events sent, how many have no point yet: how far the daemon is
    behind (acknowledged or not). One count over a time range, cheap at any size of the measurement."""
    sent = len(stream.sent_at)
    first = max(0, sent - look_back)
    low, high = stream.base_ns + first * 1000, stream.base_ns + sent * 1000
    return (sent - first) - influx_count(url, stream.metric, f"time >= {low} AND time < {high}")


@dataclass
class StreamResult:
    points: Counter[int] = field(default_factory=Counter)  # event index -> points found for it
    foreign: list[str] = field(default_factory=list)  # points that are no event's (wrong time or value)


def read_stream(url: str, stream: Stream, *, chunk: int = 100_000) -> StreamResult:
    """Every point of the stream's measurement, mapped back to event indexes."""
    result = StreamResult()
    sent = len(stream.sent_at)
    base_ns = stream.base_ns
    end_ns = base_ns + sent * 1000
    measurement = stream.metric
    for start in range(0, sent, chunk):
        low, high = base_ns + start * 1000, min(end_ns, base_ns + (start + chunk) * 1000)
        for series in influx_series(url, f'SELECT "value" FROM "{measurement}" WHERE time >= {low} '
                                         f'AND time < {high}'):
            for time_ns, value in series["values"]:
                offset = time_ns - base_ns
                index = offset // 1000
                if offset % 1000 or value != float(index):
                    result.foreign.append(f"{measurement} at {time_ns}: value {value}")
                else:
                    result.points[index] += 1
    for condition in (f"time < {base_ns}", f"time >= {end_ns}"):
        counted = influx_series(url, f'SELECT count("value") FROM "{measurement}" WHERE {condition}')
        outside = int(counted[0]["values"][0][1]) if counted else 0
        if outside:
            result.foreign.append(f"{outside} points of {measurement} with {condition}")
    return result


# --- alerts --------------------------------------------------------------------------------------------

@dataclass
class AlertFinding:
    toggle: Toggle | None  # the toggle it is about (None: a change no toggle explains)
    kind: str  # "lost" | "twice" | "unexpected"; notes: "stale", "resent" (see check_alerts)
    detail: str
    at: float | None = None  # when the change came (monotonic), for a change no toggle explains

    @property
    def failure(self) -> bool:
        return self.kind not in ("stale", "resent")


def check_alerts(toggles: list[Toggle], changes: list[tuple[float, dict[str, Any]]], *,
                 leaderless: Sequence[tuple[float, float]] = (), by_notification_id: bool = False,
                 slack: float = 1.0) -> list[AlertFinding]:
    """Each acknowledged over-threshold toggle must be notified `firing` once, and each acknowledged
    under-threshold toggle that follows one `resolved` once (the rule has no `for`: a new episode, with a
    new alert id, per toggle). A toggle never acknowledged may or may not have been seen: not judged.

    A cluster (CONTRACT §8): only the leader notifies, and while nobody leads (the `leaderless` intervals:
    from a leader's death or PostgreSQL's stop until a leader is seen again) nothing is recorded; the next
    leader records what its engine holds then, so the changes of toggles made meanwhile (within `slack`
    seconds of an interval: the old leader may have died before recording, the new one's promotion may
    trail the role it shows) may be folded into one and are not judged lost; twice is still twice. With `by_notification_id` a change is counted once per
    notification id: a new leader resends what the old one stored and had not settled under the same id,
    and receivers drop the repeat (docs/operations.md); the same holds on one node, whose outbox resends
    after a crash what it may have delivered just before (docs/http-api.md: at least once, de-duplicate on
    `notification_id`). Each repeat is noted ("resent").

    A cluster's new leader that did not itself hear an alert resolve while nobody led (it was down then)
    resolves it with the value the store holds, the firing one (ioc.alerts.leadership): such a `resolved`,
    when the toggle after the one that fired it came while nobody led, is taken as that toggle's
    resolution and noted as "stale" (a note, not a failure: the contract names no value for a
    resolution)."""

    def without_leader(toggle: Toggle) -> bool:
        end = toggle.acked_at if toggle.acked_at is not None else toggle.sent_at
        return any(toggle.sent_at - slack < stop and end > start - slack for start, stop in leaderless)

    expected: dict[tuple[str, float], Toggle] = {}
    previous: Toggle | None = None
    unsure: set[tuple[str, float]] = set()
    for toggle in toggles:
        key = ("firing" if toggle.high else "resolved", toggle.value)
        if (toggle.acked_at is None or without_leader(toggle)
                or (not toggle.high and (previous is None or previous.acked_at is None))):
            unsure.add(key)
        elif toggle.high or previous is not None:
            expected[key] = toggle
        previous = toggle
    got: Counter[tuple[str, float]] = Counter()
    ids: dict[tuple[str, float], set[str]] = {}
    seen: set[tuple[str, float, str]] = set()
    fired: dict[str, float] = {}  # alert id -> the value it fired with
    after = {toggle.value: toggles[index + 1] for index, toggle in enumerate(toggles[:-1]) if toggle.high}
    findings = []
    for at, body in changes:
        alert = body.get("alert", {})
        if alert.get("rule") != ALARM_RULE:
            continue
        key = (str(body.get("change")), float(alert.get("value")))
        alert_id = str(alert.get("id"))
        if by_notification_id and body.get("notification_id"):  # without one, every call counts
            notification = (key[0], key[1], str(body.get("notification_id")))
            if notification in seen:
                findings.append(AlertFinding(None, "resent", f"{key[0]} at value {key[1]:g} (alert {alert_id}) "
                                                             f"again under notification id {notification[2]}", at))
                continue
            seen.add(notification)
        if key[0] == "firing":
            fired.setdefault(alert_id, key[1])
        elif (key[0] == "resolved" and key not in expected and key not in unsure and by_notification_id
              and fired.get(alert_id) == key[1] and key[1] in after
              and ("resolved", after[key[1]].value) in unsure):
            resolver = after[key[1]]
            findings.append(AlertFinding(resolver, "stale", f"resolved of toggle {resolver.number} told with the "
                                                            f"firing value {key[1]:g} (alert {alert_id})", at))
            key = ("resolved", resolver.value)
        got[key] += 1
        ids.setdefault(key, set()).add(alert_id)
        if key not in expected and key not in unsure:
            findings.append(AlertFinding(None, "unexpected", f"{key[0]} at value {key[1]:g} "
                                                             f"(alert {alert_id})", at))
    for key, toggle in expected.items():
        if got[key] == 0:
            findings.append(AlertFinding(toggle, "lost", f"no {key[0]} for toggle {toggle.number} "
                                                         f"(value {key[1]:g})"))
        elif got[key] > 1:
            findings.append(AlertFinding(toggle, "twice", f"{key[0]} of toggle {toggle.number} notified "
                                                          f"{got[key]} times (alert ids {sorted(ids[key])})"))
    for key in unsure:
        if got[key] > 1:
            findings.append(AlertFinding(None, "twice", f"{key[0]} at value {key[1]:g} notified {got[key]} "
                                                        f"times (alert ids {sorted(ids[key])})"))
    return findings
