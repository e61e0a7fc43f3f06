"""The InfluxDB sink against real servers: InfluxDB 1.x (`influxdb`, `private_influxdb`), VictoriaMetrics
for the v2 write API (`victoria`), and a tiny threaded HTTP server of our own for answers a real server
will not give on demand (503 with Retry-After, 401). Nothing of InfluxDB is mocked.

Every scenario ends with `assert_counting_rule`: handed = written + dead_lettered + dropped + queue + spool.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from ioc.config import InfluxSettings, load_settings
from ioc.envelope import EVENT_ADAPTER
from ioc.errors import SinkFull
from ioc.lineproto import render_event, render_point
from ioc.sinks.base import Sink
from ioc.sinks.influx import InfluxSink
from tests.servers import Server, free_port, influx_count, influx_query
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


# --- helpers -----------------------------------------------------------------------------------------


def settings(url: str, **overrides: Any) -> InfluxSettings:
    """Fast settings for tests: small batches, short intervals."""
    values: dict[str, Any] = {"url": url, "flush_interval": "20ms", "timeout": "2s", "retry_min": "50ms",
                              "retry_max": "500ms"}
    values.update(overrides)
    return InfluxSettings(**values)


def query(server: Server, database: str, text: str) -> list[dict[str, Any]]:
    """InfluxQL, the series of the first statement (typed loosely for the comparisons below)."""
    return [dict(series) for series in influx_query(server.url, database, text)]


def metric_values(sink: InfluxSink) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the sink's metric families: (sample name, labels) -> value."""
    values = {}
    for family in sink.metrics()():
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def metric(sink: InfluxSink, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in metric_values(sink).items()
               if sample == name and wanted <= have)


def assert_counting_rule(sink: InfluxSink) -> None:
    """docs/metrics.md: every point handed to the sink is written, dead-lettered, dropped, queued or
    spooled."""
    values = metric_values(sink)

    def of(name: str) -> float:
        return sum(value for (sample, _), value in values.items() if sample == name)

    handed = of("ioc_sink_points_handed_total")
    outcomes = of("ioc_sink_points_total")
    queued, spooled = of("ioc_sink_queue_points"), of("ioc_sink_spool_points")
    assert handed == outcomes + queued + spooled, (
        f"handed {handed} != written/dead/dropped {outcomes} + queue {queued} + spool {spooled}")


def quiet(sink: InfluxSink) -> bool:
    """Nothing queued or spooled and no outage: every point handed has an outcome, the sink writes
    directly again."""
    return (metric(sink, "ioc_sink_queue_points") == 0 and metric(sink, "ioc_sink_spool_points") == 0
            and metric(sink, "ioc_sink_outage") == 0)


class Callbacks:
    """Records the order in which `on_durable` callbacks run."""

    def __init__(self) -> None:
        self.ran: list[int] = []
        self._lock = threading.Lock()

    def make(self, number: int) -> Callable[[], None]:
        def callback() -> None:
            with self._lock:
                self.ran.append(number)
        return callback


def event(**fields: object) -> Any:
    base = {"id": "e1", "source": "qtmt-aqi", "time": "2026-03-02T08:00:00.000001+07:00"}
    return EVENT_ADAPTER.validate_json(orjson.dumps({**base, **fields}))


def started(sink: InfluxSink) -> InfluxSink:
    assert isinstance(sink, Sink)
    sink.start()
    return sink


@pytest.fixture
def sinks() -> Iterator[list[InfluxSink]]:
    """Sinks a test made; closed at its end even when it fails."""
    made: list[InfluxSink] = []
    yield made
    for sink in made:
        sink.close(timeout=5)


# --- a tiny InfluxDB 1.x stand-in for answers on demand ----------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out hung up on a stalled answer: expected


class TinyInflux:
    """A threaded HTTP server taking `/write`: it answers from `script` first (status, headers), then
    `fallback`; while that is a 204, a body holding `refuse` gets a 400 `partial write` as InfluxDB 1.x
    answers. A scripted status 0 means: stall 1 s, then 204 (to a client that has given up). It records
    each request's time, status and body."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, dict[str, str]]] = deque()
        self.fallback: tuple[int, dict[str, str]] = (204, {})
        self.refuse: bytes | None = None
        self.requests: list[tuple[float, int, bytes]] = []
        self.lock = threading.Lock()
        tiny = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with tiny.lock:
                    status, headers = tiny.script.popleft() if tiny.script else tiny.fallback
                    refused = status == 204 and tiny.refuse is not None and tiny.refuse in body
                    if refused:
                        status = 400
                    tiny.requests.append((time.monotonic(), status, body))
                if status == 0:
                    time.sleep(1)
                    status = 204
                if refused:
                    payload = orjson.dumps({"error": "partial write: field type conflict dropped=1"})
                else:
                    payload = b"" if status == 204 else orjson.dumps({"error": f"scripted {status}"})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted_lines(self) -> list[str]:
        """The points of the requests answered 204, in arrival order."""
        with self.lock:
            bodies = [body for _, status, body in self.requests if status == 204]
        return [line for body in bodies for line in body.decode().split("\n")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tiny() -> Iterator[TinyInflux]:
    server = TinyInflux()
    yield server
    server.close()


# --- InfluxDB 1.x round trips ------------------------------------------------------------------------

ODD = 'a,b c=d"e\\f'  # comma, space, '=', a double quote and a backslash inside


def test_v1_round_trip_is_exact_and_creates_the_database(
    influxdb: Server, database: str, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    sink = started(InfluxSink(settings(influxdb.url, database=database), spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    telemetry = event(type="telemetry", metric="env.aqi", value=160, area="22723",
                      tags={"station": "Phan Thiết", "commune": "Xã Tân Thành", "odd": ODD})
    status = event(id="e2", type="status", entity=f"BTS {ODD}", state="down", area="593")
    note_time = 1772413200_000002_000
    text = 'Trạm "Mũi Né", x=1, a\\b, end\\'  # quotes, commas, '=', backslashes (one trailing)
    multiline = "dòng một\ndòng hai"  # a raw newline inside a string field
    points = [
        render_event(telemetry),
        render_event(status),
        render_point("note", {"area": "Xã Tân Thành", "odd": ODD}, {"text": text, "n": 7}, note_time),
        render_point("note", {"area": "Phan Thiết", "odd": ODD}, {"text": multiline, "n": 8}, note_time),
    ]
    callbacks = Callbacks()
    sink.submit(points, callbacks.make(1))
    wait_until("the callback", lambda: callbacks.ran == [1], 10)

    databases = query(influxdb, database, "SHOW DATABASES")[0]["values"]
    assert [database] in databases  # created on the first "database not found"

    [aqi] = query(influxdb, database, 'SELECT * FROM "env.aqi"')
    row = dict(zip(aqi["columns"], aqi["values"][0], strict=True))
    assert row == {"time": 1772413200_000001_000, "area": "22723", "commune": "Xã Tân Thành", "odd": ODD,
                   "source": "qtmt-aqi", "station": "Phan Thiết", "value": 160}
    [state] = query(influxdb, database, 'SELECT * FROM "status"')
    row = dict(zip(state["columns"], state["values"][0], strict=True))
    assert row == {"time": 1772413200_000001_000, "area": "593", "entity": f"BTS {ODD}",
                   "source": "qtmt-aqi", "state": "down", "up": 0}
    [notes] = query(influxdb, database, 'SELECT "area", "odd", "text", "n" FROM "note"')
    got = {(value[1], value[2], value[3], value[4]) for value in notes["values"]}
    assert got == {("Xã Tân Thành", ODD, text, 7), ("Phan Thiết", ODD, multiline, 8)}

    # Integers were written as floats (`160.0`, `7.0`), so a later 160.5 never conflicts.
    [fields] = query(influxdb, database, 'SHOW FIELD KEYS FROM "env.aqi"')
    assert fields["values"] == [["value", "float"]]
    [fields] = query(influxdb, database, 'SHOW FIELD KEYS FROM "status"')
    assert dict(map(tuple, fields["values"])) == {"state": "string", "up": "float"}

    assert metric(sink, "ioc_sink_points_total", outcome="written") == 4
    assert metric(sink, "ioc_sink_batches_written_total") == 1
    assert_counting_rule(sink)


def test_a_refused_point_is_dead_lettered_and_the_rest_written(
    influxdb: Server, database: str, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    refused: list[tuple[str, str]] = []
    sink = started(InfluxSink(settings(influxdb.url, database=database, batch_size=100),
                              spool_path=tmp_path / "store.db",
                              on_refused=lambda reason, point, origin: refused.append((reason, point))))
    sinks.append(sink)
    first = Callbacks()
    sink.submit(['conflict,s=x f="text" 1'], first.make(0))  # the field is a string from now on
    wait_until("the first point written", lambda: first.ran == [0], 10)

    good = [f"good,s=x value={index}.0 {index + 1}" for index in range(11)]
    bad = "conflict,s=x f=1.0 2"
    batch = good[:7] + [bad] + good[7:]
    with capture_logs() as logs:
        sink.submit(batch, first.make(1))
        sink.submit([], first.make(2))  # an empty submit orders its callback behind the batch
        wait_until("the callbacks in order", lambda: first.ran == [0, 1, 2], 10)

    assert influx_count(influxdb.url, database, "good") == 11
    assert influx_count(influxdb.url, database, "conflict", "f") == 1
    [(reason, point)] = refused
    assert point == bad
    assert "field type conflict" in reason
    assert metric(sink, "ioc_sink_points_total", outcome="dead_lettered") == 1
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 12
    assert metric(sink, "ioc_sink_write_errors_total", kind="http_4xx") >= 2  # the batch and a half at least
    assert metric(sink, "ioc_sink_outage") == 0  # a refusal is not an outage
    assert any(entry["event"] == "sink.point_refused" for entry in logs)
    assert sink.problems() == []
    assert_counting_rule(sink)


# --- the v2 write API, against VictoriaMetrics -------------------------------------------------------


def victoria_export(server: Server, match: str) -> list[dict[str, Any]]:
    urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=10).read()
    query = urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(f"{server.url}/api/v1/export?{query}", timeout=10) as response:
        return [json.loads(line) for line in response.read().decode().splitlines() if line.strip()]


def test_v2_writes_reach_victoria_metrics(
    victoria: Server, tmp_path: Path, unique: str, sinks: list[InfluxSink]
) -> None:
    token = f"secret-token-{unique}"
    sink = started(InfluxSink(settings(victoria.url, api="v2", org="ioc", bucket="ioc", token=token),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    base_ms = int(time.time() * 1000) - 60_000
    points = [
        render_point("env.aqi", {"source": "qtmt-aqi", "run": unique, "area": "Xã Tân Thành", "odd": ODD,
                                 "n": str(index)}, {"value": index * 10}, (base_ms + index) * 1_000_000)
        for index in range(5)
    ]
    callbacks = Callbacks()
    sink.submit(points, callbacks.make(1))
    wait_until("the callback", lambda: callbacks.ran == [1], 10)

    series: list[dict[str, Any]] = []

    def arrived() -> bool:
        series[:] = victoria_export(victoria, f'{{__name__="env.aqi_value",run="{unique}"}}')
        return len(series) == 5

    wait_until("the points in VictoriaMetrics", arrived, 15)
    got = {}
    for item in series:
        labels = item["metric"]
        assert labels["area"] == "Xã Tân Thành" and labels["odd"] == ODD and labels["source"] == "qtmt-aqi"
        got[int(labels["n"])] = (item["values"], item["timestamps"])
    assert got == {index: ([index * 10.0], [base_ms + index]) for index in range(5)}
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 5
    assert_counting_rule(sink)


def test_v2_failures_never_log_the_token(tmp_path: Path, unique: str, sinks: list[InfluxSink]) -> None:
    token = f"secret-token-{unique}"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    with capture_logs() as logs:
        sink = started(InfluxSink(settings(url, api="v2", org="ioc", bucket="ioc", token=token),
                                  spool_path=tmp_path / "store.db"))
        sinks.append(sink)
        sink.submit(["m value=1.0 1"])
        wait_until("the point spooled", lambda: metric(sink, "ioc_sink_spool_points") == 1, 10)
        sink.close(timeout=5)
    assert metric(sink, "ioc_sink_write_errors_total", kind="connection") >= 1
    assert any(entry["event"] == "sink.outage_started" for entry in logs)
    assert token not in repr(logs)
    assert_counting_rule(sink)


# --- server errors, Retry-After, authentication -------------------------------------------------------


def test_503_with_retry_after_is_waited_for_and_nothing_is_lost(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.script.extend([(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"})])
    # A Retry-After is honoured up to retry_max (ioc.retry: a bogus "come back tomorrow" must not stall).
    sink = started(InfluxSink(settings(tiny.url, retry_min="10ms", retry_max="5s"), spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sent: list[str] = []
    with capture_logs() as logs:
        for number in range(6):
            points = [f"m,n={number} value={index}.0 {number * 10 + index}" for index in range(3)]
            sent += points
            sink.submit(points, callbacks.make(number))
            if number == 2:
                sink.submit([], callbacks.make(100))  # orders behind submit 2, before submit 3
            time.sleep(0.05)
        wait_until("the points", lambda: quiet(sink) and len(callbacks.ran) == 7, 10)

    assert callbacks.ran == [0, 1, 2, 100, 3, 4, 5]
    assert tiny.accepted_lines() == sent  # every point once, in order
    times = [when for when, _, _ in tiny.requests]
    statuses = [status for _, status, _ in tiny.requests]
    assert statuses[:3] == [503, 503, 204]
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # Retry-After: 1 was honoured
    assert metric(sink, "ioc_sink_write_errors_total", kind="http_5xx") == 2
    assert metric(sink, "ioc_sink_points_total", outcome="written") == len(sent)
    events = [entry["event"] for entry in logs]
    assert "sink.outage_started" in events and events.count("sink.write_failed") == 2
    [ended] = [entry for entry in logs if entry["event"] == "sink.outage_ended"]
    assert ended["points_replayed"] > 0 and ended["duration"] >= 1.9
    assert metric(sink, "ioc_sink_outage") == 0
    assert_counting_rule(sink)


def test_429_honours_an_http_date_retry_after(tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
                                              ) -> None:
    from email.utils import formatdate

    tiny.script.append((429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}))
    sink = started(InfluxSink(settings(tiny.url, retry_min="10ms", retry_max="5s"), spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    sink.submit(["m value=1.0 1"])
    wait_until("a retry after the 429", lambda: len(tiny.requests) >= 2, 10)
    assert tiny.requests[1][0] - tiny.requests[0][0] >= 0.5  # a whole-second date: at least 1 s minus rounding
    wait_until("the point written", lambda: quiet(sink), 5)
    assert metric(sink, "ioc_sink_write_errors_total", kind="http_429") == 1
    assert_counting_rule(sink)


def test_a_timeout_spools_and_the_retry_writes(tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
                                               ) -> None:
    tiny.script.append((0, {}))
    sink = started(InfluxSink(settings(tiny.url, timeout="200ms"), spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sink.submit(["m value=1.0 1"], callbacks.make(1))
    wait_until("the point written after a timeout", lambda: quiet(sink) and callbacks.ran == [1], 10)
    assert metric(sink, "ioc_sink_write_errors_total", kind="timeout") == 1
    assert [status for _, status, _ in tiny.requests] == [0, 204]
    assert_counting_rule(sink)


def test_authentication_failure_spools_and_is_a_problem(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.fallback = (401, {})
    sink = started(InfluxSink(settings(tiny.url, username="ioc", password="wrong"),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sink.submit(["m value=1.0 1", "m value=2.0 2"], callbacks.make(1))
    wait_until("a spooled batch's callback", lambda: callbacks.ran == [1], 10)
    assert metric(sink, "ioc_sink_spool_points") == 2
    assert metric(sink, "ioc_sink_write_errors_total", kind="auth") >= 1
    [problem] = sink.problems()
    assert problem.startswith("influx: HTTP 401") and "spooling (2 points)" in problem
    assert "wrong" not in problem

    tiny.fallback = (204, {})  # the operator fixed the password
    wait_until("the spool drained", lambda: quiet(sink), 10)
    assert sink.problems() == []
    assert tiny.accepted_lines() == ["m value=1.0 1", "m value=2.0 2"]
    assert_counting_rule(sink)


def test_a_refused_point_in_the_spool_is_dead_lettered_on_replay(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.fallback = (503, {})
    tiny.refuse = b"bad"
    refused: list[tuple[str, str]] = []
    sink = started(InfluxSink(settings(tiny.url), spool_path=tmp_path / "store.db",
                              on_refused=lambda reason, point, origin: refused.append((reason, point))))
    sinks.append(sink)
    good = [f"m value={i}.0 {i}" for i in range(9)]
    callbacks = Callbacks()
    sink.submit(good[:5] + ["m,x=bad value=1.0 1"] + good[5:], callbacks.make(1))
    wait_until("the batch spooled", lambda: metric(sink, "ioc_sink_spool_points") == 10, 5)
    assert callbacks.ran == [1]

    tiny.fallback = (204, {})
    wait_until("the spool drained", lambda: quiet(sink), 10)
    assert refused == [("HTTP 400: partial write: field type conflict dropped=1", "m,x=bad value=1.0 1")]
    assert tiny.accepted_lines() == good  # in order, around the refused one
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 9
    assert metric(sink, "ioc_sink_points_total", outcome="dead_lettered") == 1
    assert metric(sink, "ioc_sink_spool_bytes") == 0
    assert_counting_rule(sink)


# --- an outage of a real InfluxDB --------------------------------------------------------------------


def test_outage_under_a_steady_stream_loses_and_duplicates_nothing(
    private_influxdb: Server, database: str, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    sink = started(InfluxSink(settings(private_influxdb.url, database=database, batch_size=200,
                                       flush_interval="50ms", timeout="1s", retry_min="100ms",
                                       retry_max="500ms"),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    stop = threading.Event()
    sent = [0]

    def produce() -> None:  # 10 points every 5 ms, each with a callback
        number = 0
        while not stop.is_set():
            start = number * 10
            sink.submit([f"outage,run=a seq={i}.0 {1_000_000 + i}" for i in range(start, start + 10)],
                        callbacks.make(number))
            number += 1
            sent[0] = number * 10
            time.sleep(0.005)

    producer = threading.Thread(target=produce)
    spooled_during_outage = 0.0
    with capture_logs() as logs:
        producer.start()
        try:
            wait_until("points written before the outage",
                       lambda: metric(sink, "ioc_sink_points_total", outcome="written") > 500, 10)
            private_influxdb.stop()
            wait_until("a spooled point", lambda: metric(sink, "ioc_sink_spool_points") > 0, 10)
            time.sleep(2)
            spooled_during_outage = metric(sink, "ioc_sink_spool_points")
            assert metric(sink, "ioc_sink_outage") == 1 and sink.problems() == []  # the spool takes points: still ready
            private_influxdb.restart()
            time.sleep(0.5)
        finally:
            stop.set()
            producer.join(10)
        total = sent[0]
        wait_until("the spool drained", lambda: quiet(sink), 20)

    assert spooled_during_outage > 0
    rows = query(private_influxdb, database, 'SELECT "seq" FROM "outage"')[0]["values"]
    assert [int(seq) for _, seq in rows] == list(range(total))  # each point once
    assert callbacks.ran == list(range(total // 10))  # every callback, in submission order
    assert metric(sink, "ioc_sink_points_total", outcome="written") == total
    assert metric(sink, "ioc_sink_spool_bytes") == 0
    events = [entry["event"] for entry in logs]
    assert "sink.outage_started" in events and "sink.outage_ended" in events
    assert_counting_rule(sink)


# --- bounds ------------------------------------------------------------------------------------------


def test_spool_full_with_block_pushes_back_on_submit(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.fallback = (503, {})
    sink = started(InfluxSink(settings(tiny.url, batch_size=5, queue_max_points=10, spool_max_points=20),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    submitted = 0
    with capture_logs() as logs:
        with pytest.raises(SinkFull):
            for number in range(10):
                sink.submit([f"m value={submitted + i}.0 {submitted + i}" for i in range(5)],
                            callbacks.make(number), timeout=0.3)
                submitted += 5
        assert submitted == 30  # 20 in the spool, 10 in the queue
        wait_until("the spool full", lambda: sink.problems() == ["influx: spool full (20 points)"], 5,
                   explain=sink.problems)
    assert not sink.has_room(1)
    assert callbacks.ran == [0, 1, 2, 3]  # the spooled batches are durable; the queued ones not yet
    assert metric(sink, "ioc_sink_spool_points") == 20 and metric(sink, "ioc_sink_queue_points") == 10
    assert any(entry["event"] == "sink.spool_full" for entry in logs)
    assert_counting_rule(sink)

    tiny.fallback = (204, {})
    wait_until("the spool and queue drained", lambda: quiet(sink), 10)
    assert callbacks.ran == [0, 1, 2, 3, 4, 5]
    assert sink.has_room(1) and sink.problems() == []
    assert tiny.accepted_lines() == [f"m value={i}.0 {i}" for i in range(30)]
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 30
    assert_counting_rule(sink)


def test_spool_full_with_drop_counts_what_it_drops(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.fallback = (503, {})
    sink = started(InfluxSink(settings(tiny.url, batch_size=5, queue_max_points=10, spool_max_points=20,
                                       spool_on_full="drop"),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    for number in range(10):  # never blocks: batches that do not fit are dropped
        sink.submit([f"m value={number * 5 + i}.0 {number * 5 + i}" for i in range(5)], callbacks.make(number),
                    timeout=2)
    wait_until("the callbacks of dropped batches", lambda: len(callbacks.ran) == 10, 10)
    assert callbacks.ran == list(range(10))
    assert metric(sink, "ioc_sink_points_total", outcome="dropped", reason="spool_full") == 30
    assert metric(sink, "ioc_sink_spool_points") == 20
    assert sink.problems() == ["influx: spool full (20 points)"]
    assert_counting_rule(sink)

    tiny.fallback = (204, {})
    wait_until("the spool drained", lambda: quiet(sink), 10)
    assert tiny.accepted_lines() == [f"m value={i}.0 {i}" for i in range(20)]  # the oldest were kept
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 20
    assert sink.problems() == []
    assert_counting_rule(sink)


# --- close and restart -------------------------------------------------------------------------------


def test_close_flushes_and_is_safe_twice(influxdb: Server, database: str, tmp_path: Path) -> None:
    sink = started(InfluxSink(settings(influxdb.url, database=database, flush_interval="1h"),
                              spool_path=tmp_path / "store.db"))
    callbacks = Callbacks()
    sink.submit([f"closing value={i}.0 {i + 1}" for i in range(100)], callbacks.make(1))
    sink.submit([], callbacks.make(2))
    sink.close(timeout=10)
    assert callbacks.ran == [1, 2]
    assert influx_count(influxdb.url, database, "closing") == 100
    sink.close(timeout=1)  # again: nothing happens
    with pytest.raises(SinkFull):
        sink.submit(["closing value=1.0 1"])
    assert not sink.has_room(1) and sink.problems() == ["influx: closed"]
    assert_counting_rule(sink)


def test_close_in_an_outage_spools_and_the_next_start_replays(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    tiny.fallback = (503, {})
    store = tmp_path / "store.db"
    sink = started(InfluxSink(settings(tiny.url, flush_interval="1h"), spool_path=store))
    callbacks = Callbacks()
    sink.submit(["m value=1.0 1", "m value=2.0 2"], callbacks.make(1))
    sink.close(timeout=5)
    assert callbacks.ran == [1]  # durable in the spool
    assert metric(sink, "ioc_sink_spool_points") == 2
    assert_counting_rule(sink)

    tiny.fallback = (204, {})
    again = InfluxSink(settings(tiny.url), spool_path=store)
    sinks.append(again)
    assert metric(again, "ioc_sink_spool_points") == 2  # counted as handed to this run too
    assert_counting_rule(again)
    again.start()
    wait_until("the spool of the earlier run replayed", lambda: quiet(again), 10)
    assert tiny.accepted_lines() == ["m value=1.0 1", "m value=2.0 2"]
    assert metric(again, "ioc_sink_points_total", outcome="written") == 2
    assert_counting_rule(again)


def test_submit_blocks_until_the_queue_has_room_then_times_out(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sink = InfluxSink(settings(url, queue_max_points=10), spool_path=tmp_path / "store.db")  # not started
    sink.submit([f"m value={i}.0 {i}" for i in range(10)])
    assert not sink.has_room(1)
    began = time.monotonic()
    with pytest.raises(SinkFull):
        sink.submit(["m value=0.0 0"], timeout=0.2)
    assert time.monotonic() - began >= 0.2
    assert_counting_rule(sink)
    sink.close(timeout=5)  # never started: flushes in this thread (here into the spool)
    assert metric(sink, "ioc_sink_spool_points") == 10
    assert_counting_rule(sink)


def test_submit_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a timed assertion: prints what one submit costs, the MQTT thread's share of the sink."""
    url = f"http://127.0.0.1:{free_port()}"
    sink = InfluxSink(settings(url, queue_max_points=1_000_000, spool_max_points=0, spool_on_full="drop"),
                      spool_path=tmp_path / "store.db")
    point = ["env.aqi,source=qtmt-aqi,area=22723 value=42.0 1772413200000001000"]
    callback = Callbacks().make(0)
    count = 200_000
    began = time.perf_counter()
    for _ in range(count):
        sink.submit(point, callback)
    per_call = (time.perf_counter() - began) / count
    ten = [point[0]] * 10
    began = time.perf_counter()
    for _ in range(count // 10):
        sink.submit(ten, callback)
    per_ten = (time.perf_counter() - began) / (count // 10)
    with capsys.disabled():
        print(f"\nsubmit(): {per_call * 1e6:.2f} µs with 1 point + callback, {per_ten * 1e6:.2f} µs with 10")
    assert metric(sink, "ioc_sink_points_handed_total") == 2 * count
    sink.close(timeout=10)
    assert_counting_rule(sink)


def test_the_sample_config_parses() -> None:
    loaded = load_settings(ROOT / "ioc" / "sinks" / "influx" / "sample.conf")
    assert loaded.influx.api == "v1" and loaded.influx.spool_on_full == "block"


def test_a_spool_the_old_daemon_wrote_replays_after_the_upgrade(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    """Rows as the sink wrote them before points carried origins (no `origins` column): replayed in order
    at start; a refused one is dead-lettered with no origin."""
    import sqlite3

    store = tmp_path / "store.db"
    old = sqlite3.connect(store)
    old.executescript("""
        CREATE TABLE influx_spool (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
                                   count INTEGER NOT NULL, points BLOB NOT NULL);
        CREATE INDEX influx_spool_sink ON influx_spool (sink, id);
    """)
    rows = [["m value=1.0 1", "m,x=bad value=2.0 2"], ["m value=3.0 3"]]
    old.executemany("INSERT INTO influx_spool (sink, count, points) VALUES ('influx', ?, ?)",
                    [(len(row), orjson.dumps(row)) for row in rows])
    old.commit()
    old.close()

    tiny.refuse = b"bad"
    refused: list[tuple[str, object]] = []
    sink = InfluxSink(settings(tiny.url), spool_path=store,
                      on_refused=lambda reason, point, origin: refused.append((point, origin)))
    sinks.append(sink)
    assert metric(sink, "ioc_sink_spool_points") == 3 and metric(sink, "ioc_sink_outage") == 1
    sink.start()
    wait_until("the old spool replayed", lambda: quiet(sink), 10)
    assert tiny.accepted_lines() == ["m value=1.0 1", "m value=3.0 3"]
    assert refused == [("m,x=bad value=2.0 2", None)]
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 2
    assert_counting_rule(sink)
