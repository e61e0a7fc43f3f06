"""The batching loop and the outage state machine, over a scripted writer (the backend is the only fake:
the memory queue, the SQLite spool, the ledger and the loop's thread are the real ones). The InfluxDB
writers against real servers are in tests/integration/test_influx_sink.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ioc.ingest.dedup import dedup_key
from ioc.sinks.base import Origin, Points, origin_key
from ioc.sinks.outage import Outage, State
from ioc.sinks.output import BatchingOutput, Policy
from ioc.sinks.spool import Spool
from ioc.sinks.writer import WriteError
from tests.waiting import wait_until


class ScriptedWriter:
    """Up (`down` False) it stores every batch, refusing lines that hold `refuse` as InfluxDB 1.x does
    (400 partial write); down, every write fails as a 503 does."""

    def __init__(self) -> None:
        self.down = False
        self.refuse = "\x00never"
        self.stored: list[str] = []
        self.lock = threading.Lock()

    def write(self, points: list[str]) -> None:
        with self.lock:
            if self.down:
                raise WriteError("HTTP 503: down", kind="http_5xx", retryable=True, status=503)
            if any(self.refuse in point for point in points):
                raise WriteError("HTTP 400: partial write", kind="http_4xx", retryable=False, status=400)
            self.stored += points

    def close(self) -> None:
        pass


def samples(sink: BatchingOutput) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value for family in sink.metrics()() for s in family.samples}


def metric(sink: BatchingOutput, name: str, **labels: str) -> float:
    return sum(value for (sample, have), value in samples(sink).items()
               if sample == name and set(labels.items()) <= have)


def assert_counting_rule(sink: BatchingOutput) -> None:
    handed = metric(sink, "ioc_sink_points_handed_total")
    rest = sum(metric(sink, name) for name in ("ioc_sink_points_total", "ioc_sink_queue_points",
                                               "ioc_sink_spool_points"))
    assert handed == rest


def state(sink: BatchingOutput) -> str:
    [current] = [dict(labels)["state"] for (name, labels), value in samples(sink).items()
                 if name == "ioc_sink_state" and value == 1]
    return current


@pytest.fixture
def writer() -> ScriptedWriter:
    return ScriptedWriter()


@pytest.fixture
def refused() -> list[tuple[str, Origin | None]]:
    return []


@pytest.fixture
def make(tmp_path: Path, writer: ScriptedWriter, refused: list[tuple[str, Origin | None]]
         ) -> Iterator[Callable[..., BatchingOutput]]:
    made: list[BatchingOutput] = []

    def build(spool_max: int = 100, **policy: object) -> BatchingOutput:
        values: dict[str, object] = {"batch_size": 5, "flush_interval": 0.01, "queue_max_points": 10,
                                     "drop_when_full": False, "retry_min": 0.05, "retry_max": 0.1, **policy}
        sink = BatchingOutput("test", writer, Spool(tmp_path / "store.db", sink="test", max_points=spool_max),
                              Policy(**values),  # type: ignore[arg-type]
                              on_refused=lambda reason, point, origin: refused.append((point, origin)))
        made.append(sink)
        sink.start()
        return sink

    yield build
    for sink in made:
        sink.close(5)


def lines(start: int, count: int) -> list[str]:
    return [f"m value={index}.0 {index}" for index in range(start, start + count)]


def test_the_outage_goes_writing_spooling_holding_and_back(make: Callable[..., BatchingOutput],
                                                           writer: ScriptedWriter) -> None:
    sink = make(spool_max=10)
    done: list[int] = []
    sink.submit(lines(0, 5), lambda: done.append(0))
    wait_until("the write", lambda: done == [0])
    assert state(sink) == "writing" and writer.stored == lines(0, 5)

    writer.down = True
    with capture_logs() as logs:
        for number in (1, 2):  # 10 points: the spool takes them, their callbacks run (durable on disk)
            sink.submit(lines(number * 5, 5), lambda number=number: done.append(number))
        wait_until("the spooled points", lambda: done == [0, 1, 2])
        assert state(sink) == "spooling" and metric(sink, "ioc_sink_spool_points") == 10
        assert sink.has_room(1) and sink.problems() == []  # an outage alone is not a problem
        sink.submit(lines(15, 5), lambda: done.append(3))  # the spool is full: held, unacknowledged
        wait_until("holding", lambda: state(sink) == "holding")
    assert not sink.has_room(1) and sink.problems() == ["test: spool full (10 points)"]
    assert done == [0, 1, 2]
    assert_counting_rule(sink)
    events = [entry["event"] for entry in logs]
    assert events.count("sink.outage_started") == 1 and events.count("sink.spool_full") == 1

    with capture_logs() as logs:
        writer.down = False
        wait_until("the recovery", lambda: done == [0, 1, 2, 3] and state(sink) == "writing")
    # The spool drained first (making room), the held batch went behind it: every point once, in order.
    assert writer.stored == lines(0, 20)
    assert sink.problems() == [] and sink.has_room(1)
    assert metric(sink, "ioc_sink_outages_total") == 1 and metric(sink, "ioc_sink_outage") == 0
    assert [entry["event"] for entry in logs].count("sink.outage_ended") == 1
    assert_counting_rule(sink)


def test_origins_reach_the_refusal_from_memory_and_from_the_spool(
    make: Callable[..., BatchingOutput], writer: ScriptedWriter, refused: list[tuple[str, Origin | None]]
) -> None:
    sink = make()
    writer.refuse = "bad"
    batch = Points(["m value=1.0 1", "m,x=bad value=2.0 2", "m value=3.0 3"],
                   [origin_key("src-a", "e1"), origin_key("src-a", "e2"), origin_key("src-b", "e3")])
    sink.submit(batch)
    sink.submit(["kpi,x=bad value=4.0 4"])  # the daemon's own point: no origin
    wait_until("the refusals", lambda: len(refused) == 2)
    assert refused == [("m,x=bad value=2.0 2", Origin("src-a", "e2")), ("kpi,x=bad value=4.0 4", None)]

    writer.down = True
    sink.submit(Points(["m value=5.0 5", "m,x=bad value=6.0 6"], [origin_key("src-c", "e5"), origin_key("src-c", "e6")]))
    wait_until("the spooled points", lambda: metric(sink, "ioc_sink_spool_points") == 2)
    writer.down = False
    wait_until("the refusal on replay", lambda: len(refused) == 3)
    assert refused[2] == ("m,x=bad value=6.0 6", Origin("src-c", "e6"))  # the origin went through the spool
    assert writer.stored == ["m value=1.0 1", "m value=3.0 3", "m value=5.0 5"]
    assert metric(sink, "ioc_sink_points_total", outcome="dead_lettered") == 3
    assert_counting_rule(sink)


def test_points_and_origins_must_align() -> None:
    from ioc.sinks.base import origins_of

    assert origins_of(["a"]) is None and origins_of(Points(["a"])) is None
    with pytest.raises(ValueError):
        origins_of(Points(["a", "b"], [origin_key("s", "1")]))


def test_the_origin_key_is_the_intakes_event_key() -> None:
    """The pipeline hands its dedup keys over as the points' origins: the two formats must stay one."""
    for source, event_id in (("qtmt-aqi", "e-1"), ("viettel-ran", "id with \x00 and , = spaces"), ("s", "")):
        assert origin_key(source, event_id) == dedup_key(source, event_id)
        assert Origin.of(dedup_key(source, event_id)) == Origin(source, event_id)
    assert Origin.of(None) is None


def test_the_state_machine_alone() -> None:
    outage = Outage("test", retry_min=0.05, retry_max=1.0, spooled=0)
    down = WriteError("HTTP 401: no", kind="auth", retryable=False, status=401)
    assert outage.state is State.WRITING and not outage.active
    outage.write_failed(down, spooled=0)
    assert outage.state is State.SPOOLING and outage.outages == 1 and outage.next_probe > time.monotonic()
    assert outage.problems(spooled=3, held=0, spool_max=10) == ["test: HTTP 401: no, spooling (3 points)"]
    outage.spool_refused("OSError: disk full", points=5, spooled=3, max_points=10)
    assert outage.state is State.HOLDING and outage.holding
    outage.spool_took()
    assert outage.state is State.SPOOLING and outage.spool_error is None
    outage.probe_succeeded(5, spool_empty=False, spool_has_room=True)
    assert outage.state is State.SPOOLING and outage.next_probe == 0.0 and outage.problem is None
    outage.probe_succeeded(5, spool_empty=True, spool_has_room=True)
    assert outage.state is State.WRITING
    assert Outage("again", retry_min=0.05, retry_max=1.0, spooled=7).state is State.SPOOLING  # replay at start
