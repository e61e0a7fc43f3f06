"""What the failover test (tests/e2e/test_cluster_failover.py) watches and checks, as parts:

- `AlertTap`: every alert change told on `ioc/v1/alerts/#` (the retained `state/` topics left out), with
  its notification id and when it came; `WebhookTap`: every call at a webhook receiver with its
  `Idempotency-Key`. `once_each` turns either into the (alert id, change) told under more than one id.
- `Scrapes`: a thread that scrapes each node's `/metrics` every second and keeps every breach of the
  counting rule of CONTRACT §3 (the chaos checker's `counting_rule_problems`), per node.
- `SimPlay`: `ioc sim run` as a subprocess (as an operator runs it), and the events it plays, computed
  the same way (same scenario, seed and start: the same bytes), so that `sim_points_missing` can tell
  which of them are not in InfluxDB exactly once (every one was acknowledged when the play exits 0).
- `stream_points`: the points of a chaos generator's `Stream` (tests/chaos/generator.py), as
  `read_stream` does there but in any database.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from ioc.simulators.play import Plan, events, plan
from ioc.simulators.scenario import Scenario, load_scenario, resolve

from tests.chaos.checker import counting_rule_problems
from tests.chaos.generator import Stream
from tests.e2e.daemon import DaemonProcess
from tests.servers import influx_query
from tests.waiting import wait_until

Told = dict[tuple[str, str], dict[str, list[float]]]  # (alert id, change) -> notification id -> arrivals


def once_each(told: Told) -> dict[tuple[str, str], list[str]]:
    """The (alert id, change) told under more than one notification id (a repeat of one id is the
    idempotent resend of an outbox taken over: the receiver drops it)."""
    return {key: sorted(ids) for key, ids in told.items() if len(ids) > 1}


class AlertTap:
    """Every alert change on `ioc/v1/alerts/#` (QoS 1), by (alert id, change) and notification id, with
    when it came (monotonic)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.on_message = lambda _c, _u, message: self.messages.append(
            (time.monotonic(), message.topic, message.payload))
        client.on_subscribe = lambda *_: subscribed.set()
        client.connect("127.0.0.1", port)
        client.subscribe("ioc/v1/alerts/#", qos=1)
        client.loop_start()
        self.client = client
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK for ioc/v1/alerts/#")

    def told(self) -> Told:
        found: Told = {}
        for at, topic, payload in list(self.messages):
            if topic.startswith("ioc/v1/alerts/state/"):
                continue
            body = orjson.loads(payload)
            ids = found.setdefault((body["id"], body["change"]), {})
            ids.setdefault(str(body.get("notification_id", "")), []).append(at)
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class WebhookTap:
    """A webhook receiver that keeps every call: its body and its `Idempotency-Key` header, when it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, dict[str, Any]]] = []
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append((time.monotonic(), self.headers.get("Idempotency-Key", ""), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, name="webhook-tap", daemon=True).start()

    def told(self) -> Told:
        found: Told = {}
        for at, key, body in list(self.calls):
            found.setdefault((body["alert"]["id"], body["change"]), {}).setdefault(key, []).append(at)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Scrapes:
    """Scrapes each node's `/metrics` every `every` seconds (a node down or starting is skipped) and
    keeps each breach of the counting rule as (node, problem)."""

    nodes: dict[str, DaemonProcess]
    every: float = 1.0
    count: Counter[str] = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="counting-rule-scrapes", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=3.0) as client:
            while not self._stop.wait(self.every):
                for name, daemon in self.nodes.items():
                    if daemon.pid is None:
                        continue
                    try:
                        response = client.get(f"{daemon.api}/metrics")
                    except httpx.HTTPError:
                        continue
                    if response.status_code != 200:
                        continue
                    self.count[name] += 1
                    self.problems += [(name, problem) for problem in counting_rule_problems(response.text)]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def _ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + moment.microsecond * 1000


class SimPlay:
    """`ioc sim run SCENARIO --to URL --speed X --start T --seed S` in a subprocess (its output in `log`)."""

    def __init__(self, scenario: str | Path, to: str, *, start: datetime, speed: float, log: Path,
                 token: str | None = None, seed: int | None = None) -> None:
        self.scenario: Scenario = load_scenario(resolve(str(scenario)))
        self.plan: Plan = plan(self.scenario, start=start, speed=speed, seed=seed, open_ended=False)
        self.log = log
        argv = [sys.executable, "-m", "ioc.simulators.cli", "run", str(scenario), "--to", to, "--speed",
                f"{speed:g}", "--start", start.isoformat(), "--seed", str(self.plan.seed), "--batch", "50"]
        if token:
            argv += ["--token", token]
        self._out = open(log, "wb")  # noqa: SIM115 - the child's, closed in wait()
        self.process = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._out.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def points(self) -> Counter[tuple[str, str, int]]:
        """What the play sends, as InfluxDB keeps it: (measurement, series tag, time in ns) -> events.
        The series tag is the station of a telemetry event, the entity of a status event."""
        found: Counter[tuple[str, str, int]] = Counter()
        for _, _, payload in events(self.scenario, self.plan):
            event = orjson.loads(payload)
            if event["type"] == "telemetry":
                found[(event["metric"], event.get("tags", {}).get("station", ""), _ns(event["time"]))] += 1
            elif event["type"] == "status":
                found[("status", event["entity"], _ns(event["time"]))] += 1
        return found


def stored_points(url: str, database: str, measurement: str, tag: str, values: Iterable[str], *, low: int,
                  high: int) -> Counter[tuple[str, str, int]]:
    """The points of `measurement` whose `tag` is one of `values`, between `low` and `high` (ns)."""
    wanted = " OR ".join(f"\"{tag}\" = '{value}'" for value in sorted(set(values)))
    found: Counter[tuple[str, str, int]] = Counter()
    for series in influx_query(url, database, f'SELECT "{tag}", "{"value" if measurement != "status" else "up"}" '
                                              f'FROM "{measurement}" WHERE ({wanted}) AND time >= {low} AND '
                                              f'time <= {high}'):
        for time_ns, series_tag, _ in series["values"]:  # type: ignore[union-attr]
            found[(measurement, str(series_tag), int(time_ns))] += 1
    return found


def sim_points_missing(play: SimPlay, url: str, database: str) -> tuple[list[str], list[str]]:
    """(played events with no point, points of the play's series that no event explains)."""
    expected = play.points()
    low = int(play.plan.start * 1e9) - 1_000_000_000
    high = int((play.plan.start + (play.plan.duration or 0)) * 1e9) + 1_000_000_000
    found: Counter[tuple[str, str, int]] = Counter()
    for measurement in sorted({key[0] for key in expected}):
        tags = {key[1] for key in expected if key[0] == measurement}
        found += stored_points(url, database, measurement, "entity" if measurement == "status" else "station",
                               tags, low=low, high=high)
    missing = [f"{key}" for key in sorted(expected) if key not in found]
    foreign = [f"{key}" for key in sorted(found) if key not in expected]
    return missing, foreign


def stream_points(url: str, database: str, stream: Stream) -> tuple[Counter[int], list[str]]:
    """(event index -> points found for it, points that are no event's) of a chaos generator's stream:
    event `i` is the point at `base + i` µs with value `i`."""
    points: Counter[int] = Counter()
    foreign: list[str] = []
    base = stream.base_ns
    for series in influx_query(url, database, f'SELECT "value" FROM "{stream.metric}"'):
        for time_ns, value in series["values"]:  # type: ignore[union-attr]
            offset = int(time_ns) - base
            if offset < 0 or offset % 1000 or value != float(offset // 1000):
                foreign.append(f"{stream.metric} at {time_ns}: {value}")
            else:
                points[offset // 1000] += 1
    return points, foreign


def poll(what: str, probe: Callable[[], Any], *, timeout: float, every: float = 0.2,
         explain: Callable[[], object] | None = None) -> Any:
    """`wait_until` for a cluster under faults: HTTP errors (a node killed or restarting) count as not yet."""
    return wait_until(what, probe, timeout, every=every, transient=(httpx.HTTPError,), explain=explain)
