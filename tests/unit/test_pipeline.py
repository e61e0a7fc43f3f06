"""The intake pipeline's logic: checks, dedup, dead letters, counting rule, callback order.
Sinks here are test doubles (pure logic); real sinks are covered by the integration tests."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from ioc import failpoints
from ioc.errors import SinkFull
from ioc.ingest import memory
from ioc.ingest.decode import MAX_ITEM_BYTES, Rejection
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import MetricSource
from tests.evaluation_tap import EventTap

NOW = 1_772_413_200.0  # 2026-03-02T08:00:00+07:00


def event(event_id: str, source: str = "qtmt-aqi", **fields: object) -> dict[str, object]:
    return {"id": event_id, "source": source, "type": "telemetry", "time": "2026-03-02T08:00:00+07:00",
            "metric": "env.aqi", "value": 100, **fields}


class RecordingSink:
    name = "recording"

    def __init__(self, *, full: bool = False) -> None:
        self.points: list[str] = []
        self.callbacks: list[object] = []
        self.full = full

    def start(self) -> None: ...

    def submit(self, points: list[str], on_durable: object = None, *, timeout: float | None = None) -> None:
        if self.full:
            raise SinkFull("full")
        self.points.extend(points)
        self.callbacks.append(on_durable)

    def has_room(self, points: int) -> bool:
        return not self.full

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> MetricSource:
        return list

    def close(self, timeout: float) -> None: ...


class DeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str, bytes]] = []

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        self.letters.append((source, reason, payload))


def make(sinks: list[RecordingSink] | None = None, connection: sqlite3.Connection | None = None
         ) -> tuple[Pipeline, DeadLetters]:
    clock = lambda: NOW
    pipeline = Pipeline(sinks=sinks or [], dedup=DedupIndex(connection, window=3600, max_keys=1000, clock=clock),
                        max_bytes=1 << 20, max_future=300, clock=clock)
    letters = DeadLetters()
    pipeline.dead_letter_targets.append(letters)
    return pipeline, letters


def assert_counting_rule(pipeline: Pipeline) -> None:
    for (source,), received in pipeline.received.items():
        rejected = sum(n for (s, _), n in pipeline.rejected.items() if s == source)
        assert received == pipeline.accepted[(source,)] + rejected + pipeline.duplicates[(source,)], source


def test_good_event_reaches_the_sink() -> None:
    sink = RecordingSink()
    pipeline, _ = make([sink])
    result = pipeline.ingest(orjson.dumps(event("a")), topic_source="qtmt-aqi")
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, [])
    assert sink.points == ["env.aqi,source=qtmt-aqi value=100.0 1772413200000000000"]
    assert_counting_rule(pipeline)


def test_repeat_is_a_duplicate_across_payloads_and_within_one() -> None:
    sink = RecordingSink()
    pipeline, _ = make([sink])
    pipeline.ingest(orjson.dumps(event("a")))
    result = pipeline.ingest(orjson.dumps([event("a"), event("b"), event("b")]))
    assert (result.accepted, result.duplicates) == (1, 2)
    assert len(sink.points) == 2
    assert pipeline.duplicates[("qtmt-aqi",)] == 2
    assert_counting_rule(pipeline)


def test_same_id_from_another_source_is_not_a_duplicate() -> None:
    pipeline, _ = make()
    assert pipeline.ingest(orjson.dumps([event("a"), event("a", source="other")])).accepted == 2


def test_topic_mismatch_and_future_time_are_dead_lettered() -> None:
    pipeline, letters = make()
    result = pipeline.ingest(orjson.dumps([event("a", source="other"), event("b", time="2026-03-02T01:10:00Z"),
                                           event("c")]), topic_source="qtmt-aqi")
    assert result.accepted == 1
    assert result.rejected == [
        (0, "source: 'other' does not match the topic's 'qtmt-aqi'"),
        (1, "time: 2026-03-02T01:10:00+00:00 is more than 300s in the future"),
    ]
    # One dead letter for the message's two rejected items: the message, their indexes and reasons.
    [(source, reason, payload)] = letters.letters
    assert source == "qtmt-aqi" and payload.startswith(b'[{"id":"a"')
    assert reason == ("2 items rejected: [0] source: 'other' does not match the topic's 'qtmt-aqi'; "
                      "[1] time: 2026-03-02T01:10:00+00:00 is more than 300s in the future")
    assert pipeline.dead_letters == {("qtmt-aqi",): 2}
    assert pipeline.rejected == {("qtmt-aqi", "source_mismatch"): 1, ("qtmt-aqi", "future_time"): 1}
    assert_counting_rule(pipeline)


def test_unparseable_payload_is_dead_lettered_under_the_topic_source() -> None:
    pipeline, letters = make()
    pipeline.ingest(b"\xff\xfe garbage", topic_source="dvc-binhthuan")
    [(source, reason, payload)] = letters.letters
    assert source == "dvc-binhthuan" and reason.startswith("payload: not valid UTF-8")
    assert payload == b"\xff\xfe garbage"
    assert_counting_rule(pipeline)


def test_durable_callback_runs_after_sink_even_without_points() -> None:
    sink = RecordingSink()
    pipeline, _ = make([sink])
    calls: list[str] = []
    pipeline.ingest(orjson.dumps(event("a")), on_durable=lambda: calls.append("first"))
    pipeline.ingest(orjson.dumps(event("a")), on_durable=lambda: calls.append("duplicate"))
    assert calls == []  # nothing is durable until the sink says so
    for callback in sink.callbacks:
        callback()  # type: ignore[operator]
    assert calls == ["first", "duplicate"]


def test_with_two_sinks_the_callback_waits_for_both() -> None:
    first, second = RecordingSink(), RecordingSink()
    pipeline, _ = make([first, second])
    calls: list[int] = []
    pipeline.ingest(orjson.dumps(event("a")), on_durable=lambda: calls.append(1))
    first.callbacks[0]()  # type: ignore[operator]
    assert calls == []
    second.callbacks[0]()  # type: ignore[operator]
    assert calls == [1]


def test_full_sink_rejects_as_overloaded_and_forgets_the_keys() -> None:
    sink = RecordingSink(full=True)
    pipeline, _ = make([sink])
    result = pipeline.ingest(orjson.dumps([event("a"), {"bad": 1}, event("b")]), timeout=0)
    assert result.accepted == 0
    assert [index for index, _ in result.rejected] == [0, 1, 2]
    assert pipeline.rejected[("qtmt-aqi", "overloaded")] == 2
    assert_counting_rule(pipeline)
    sink.full = False
    assert pipeline.ingest(orjson.dumps(event("a"))).accepted == 1  # not taken for a duplicate


def test_dedup_keys_survive_a_restart_only_once_durable(tmp_path: object) -> None:
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    sink = RecordingSink()
    pipeline, _ = make([sink], connection)
    pipeline.ingest(orjson.dumps(event("kept")), on_durable=lambda: None)
    pipeline.ingest(orjson.dumps(event("lost")), on_durable=lambda: None)
    sink.callbacks[0]()  # type: ignore[operator]  # only the first became durable before the "crash"
    pipeline.dedup.persist()
    restarted, _ = make([RecordingSink()], connection)
    assert restarted.ingest(orjson.dumps(event("kept"))).duplicates == 1
    assert restarted.ingest(orjson.dumps(event("lost"))).accepted == 1


def test_dedup_window_expires() -> None:
    now = [NOW]
    dedup = DedupIndex(None, window=60, max_keys=10, clock=lambda: now[0])
    assert not dedup.seen_before("a")
    now[0] += 61
    assert not dedup.seen_before("b")
    assert dedup.expire() == 1
    assert not dedup.seen_before("a")


def test_dedup_max_keys_evicts_oldest_and_counts() -> None:
    dedup = DedupIndex(None, window=60, max_keys=2, clock=lambda: NOW)
    for key in "abc":
        dedup.seen_before(key)
    assert dedup.evicted == 1 and len(dedup) == 2
    assert not dedup.seen_before("a")


def test_a_failing_evaluation_does_not_stop_intake_nor_hold_the_acknowledgement() -> None:
    pipeline, _ = make()
    seen: list[str] = []

    class Broken:
        def offer(self, events: object, on_done: object) -> None:
            raise RuntimeError("bug")

    pipeline.evaluation = Broken()
    acked: list[bool] = []
    assert pipeline.ingest(orjson.dumps([event("a"), event("b")]), on_durable=lambda: acked.append(True)).accepted == 2
    assert acked == [True]
    pipeline.evaluation = EventTap(lambda e: seen.append(e.id))
    assert pipeline.ingest(orjson.dumps([event("c"), event("d")])).accepted == 2
    assert seen == ["c", "d"]


def test_the_acknowledgement_waits_for_the_evaluation_as_for_a_sink() -> None:
    """Acknowledged means evaluated: with the sinks durable but the batch not yet evaluated (its alert
    changes not stored), `on_durable` has not run; it runs once the evaluation calls back."""
    sink = RecordingSink()
    pipeline, _ = make(sinks=[sink])
    held: list[Callable[[], None] | None] = []

    class Held:
        def offer(self, events: object, on_done: Callable[[], None] | None) -> None:
            held.append(on_done)

    pipeline.evaluation = Held()
    acked: list[bool] = []
    assert pipeline.ingest(orjson.dumps([event("a")]), on_durable=lambda: acked.append(True)).accepted == 1
    sink.callbacks[0]()  # type: ignore[operator]  # the sink: durable
    assert acked == [] and len(held) == 1 and held[0] is not None
    held[0]()
    assert acked == [True]
    # Nobody waits (QoS 0): the batch is still evaluated, with no callback to make.
    assert pipeline.ingest(orjson.dumps([event("b")])).accepted == 1
    assert held[1] is None


# --- hostile payloads (docs/operations.md) ------------------------------------------------------------------

def test_too_many_items_is_one_rejection_and_one_dead_letter_of_the_whole_payload() -> None:
    pipeline, letters = make()
    payload = orjson.dumps([{"id": i} for i in range(10_001)])
    result = pipeline.ingest(payload, topic_source="qtmt-aqi")
    assert (result.accepted, result.rejected) == (0, [(0, "too many items: 10001 > 10000")])
    assert pipeline.rejected == {("qtmt-aqi", "too_many_items"): 1}
    [(source, reason, raw)] = letters.letters
    assert (source, reason) == ("qtmt-aqi", "too many items: 10001 > 10000") and raw is payload
    assert_counting_rule(pipeline)
    small = Pipeline(sinks=[], dedup=DedupIndex(None, window=60, max_keys=10), max_bytes=1 << 20, max_future=300,
                     max_items=2, clock=lambda: NOW)
    result = small.ingest_batch([(orjson.dumps([event("a"), event("b"), event("c")]), "qtmt-aqi"),
                                 (orjson.dumps([event("d"), event("e")]), "qtmt-aqi")])
    assert result.accepted == 2 and result.rejected == [(0, "too many items: 3 > 2")]


def test_a_lone_event_over_the_item_cap_is_refused_unparsed_on_the_fast_path() -> None:
    pipeline, letters = make()
    huge = orjson.dumps(event("big", unit="x" * (MAX_ITEM_BYTES + 1)))
    result = pipeline.ingest(huge, topic_source="qtmt-aqi")
    assert result.rejected == [(0, f"event: {len(huge)} bytes is over the limit of {MAX_ITEM_BYTES} for one event")]
    assert pipeline.rejected == {("qtmt-aqi", "item_too_large"): 1}
    assert letters.letters[0][2] is huge


def test_times_a_store_cannot_hold_never_reach_the_sinks() -> None:
    sink = RecordingSink()
    pipeline, _ = make([sink])
    result = pipeline.ingest(orjson.dumps([event("old", time="0001-01-01T00:00:00Z"), event("ok")]))
    assert result.accepted == 1 and len(sink.points) == 1
    assert result.rejected == [
        (0, "time: 0001-01-01T00:00:00Z is outside the range a store can hold (1970-01-01 .. 2199-12-31)")]
    assert pipeline.rejected == {("qtmt-aqi", "time_out_of_range"): 1}
    assert_counting_rule(pipeline)


def test_the_intake_failpoint_fires_after_decoding() -> None:
    pipeline, _ = make()
    failpoints.configure("intake.after_decode=1*error")
    try:
        with pytest.raises(failpoints.FailpointError):
            pipeline.ingest(orjson.dumps(event("a")))
        assert failpoints.hits("intake.after_decode") == 1
        assert pipeline.received == {}  # nothing was counted: the fault came before the checks
        assert pipeline.ingest(orjson.dumps(event("a"))).accepted == 1  # 1*: off again
    finally:
        failpoints.configure("")


def test_memory_is_handed_back_once_after_big_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", trims.append)
    monkeypatch.setattr(memory, "_DELAY", 0.01)
    monkeypatch.setattr(memory, "_last", 0.0)
    memory.after_payload(memory.TRIM_AFTER_BYTES - 1)
    for _ in range(5):
        memory.after_payload(memory.TRIM_AFTER_BYTES)
    deadline = time.monotonic() + 5
    while not trims and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert trims == [0]  # once for the five, none for the small one


def test_failures_per_item_are_logged_a_bounded_number_of_times() -> None:
    pipeline, _ = make()

    class Broken:
        def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
            raise OSError("gone")

    def broken(_: object) -> None:
        raise RuntimeError("bug")

    pipeline.dead_letter_targets.append(Broken())

    class BrokenEvaluation:
        def offer(self, events: object, on_done: object) -> None:
            broken(events)

    pipeline.evaluation = BrokenEvaluation()
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            payload = orjson.dumps([event(f"ok{i}") for i in range(500)] + [{"bad": i} for i in range(500)])
            result = pipeline.ingest(payload)
    finally:
        structlog.configure(**saved)
    assert result.accepted == 500 and len(result.rejected) == 500
    events = [line["event"] for line in logs]
    assert events.count("ingest.rejected") == 5 and events.count("ingest.rejected_more") == 1
    assert events.count("ingest.dead_letter_failed") == 1 and events.count("ingest.evaluation_failed") == 1
    assert pipeline.dead_letters[("unknown",)] == 500  # each one still counted


def test_the_rejected_items_of_a_message_share_one_dead_letter_per_source() -> None:
    pipeline, letters = make()
    bad = orjson.dumps([{"id": i} for i in range(10_000)])
    result = pipeline.ingest(bad, topic_source="qtmt-aqi")
    assert len(result.rejected) == 10_000
    [(source, reason, payload)] = letters.letters
    assert source == "qtmt-aqi" and payload is bad
    assert reason.startswith("10000 items rejected: [0] type: required field missing") and reason.endswith(
        "; and 9980 more")
    assert reason.count("[") == 20 and len(reason) < 4096
    assert pipeline.dead_letters == {("qtmt-aqi",): 10_000}
    assert_counting_rule(pipeline)

    letters.letters.clear()
    first = orjson.dumps([event("a"), {"id": "x"}])
    second = orjson.dumps([{"id": "y"}, event("b"), event("c", source="other", value="v"), {"id": "z"}])
    pipeline.ingest_batch([(first, "qtmt-aqi"), (orjson.dumps(event("d")), "qtmt-aqi"), (second, None)])
    by_source = [(source, reason.split(":")[0], payload) for source, reason, payload in letters.letters]
    assert by_source == [
        ("qtmt-aqi", "type", b'{"id":"x"}'),  # alone in its message: the item itself
        ("unknown", "2 items rejected", second),  # indexes within the message: [0] and [3]
        ("other", "value", orjson.dumps(event("c", source="other", value="v"))),
    ]
    assert letters.letters[1][1].startswith("2 items rejected: [0] ") and "; [3] " in letters.letters[1][1]
    assert_counting_rule(pipeline)
    letters.letters.clear()
    refused = [Rejection("rate_limited", "rate_limited", b"m1", "qtmt-aqi"),
               Rejection("rate_limited", "rate_limited", b"m2", "qtmt-aqi")]
    pipeline.admit(refused)  # no payload: each item a message of its own (the connector's refusals)
    assert letters.letters == [("qtmt-aqi", "rate_limited", b"m1"), ("qtmt-aqi", "rate_limited", b"m2")]


class FailingSink(RecordingSink):
    """A sink whose disk fails (the local sink's SQLite on a full disk raises an OSError)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def submit(self, points: list[str], on_durable: object = None, *, timeout: float | None = None) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        super().submit(points, on_durable, timeout=timeout)


def test_a_failing_sink_rejects_the_batch_and_forgets_its_keys_so_a_redelivery_is_not_a_duplicate() -> None:
    sink = FailingSink()
    pipeline, _ = make([sink])
    acked: list[bool] = []
    result = pipeline.ingest(orjson.dumps(event("a")), topic_source="qtmt-aqi", on_durable=lambda: acked.append(True))
    assert result.accepted == 0 and [reason[:10] for _, reason in result.rejected] == ["sink_error"]
    assert acked == []  # never acknowledged: the broker redelivers it
    assert pipeline.rejected[("qtmt-aqi", "sink_error")] == 1
    assert_counting_rule(pipeline)
    sink.failing = False
    redelivered = pipeline.ingest(orjson.dumps(event("a")), topic_source="qtmt-aqi",
                                  on_durable=lambda: acked.append(True))
    assert (redelivered.accepted, redelivered.duplicates) == (1, 0)
    assert len(sink.points) == 1
    assert_counting_rule(pipeline)


class WaitingSink(RecordingSink):
    """A sink whose submit waits for room (as the InfluxDB sink does under back-pressure)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, points: list[str], on_durable: object = None, *, timeout: float | None = None) -> None:
        self.entered.set()
        assert self.release.wait(10)
        super().submit(points, on_durable, timeout=timeout)


def test_a_scrape_while_a_batch_waits_for_room_sees_the_counting_rule_hold() -> None:
    sink = WaitingSink()
    pipeline, _ = make([sink])
    worker = threading.Thread(target=pipeline.ingest,
                              args=(orjson.dumps([event("a"), event("b"), {"bad": 1}]),))
    worker.start()
    assert sink.entered.wait(10)
    scraped = {family.name: {tuple(sample.labels.values()): sample.value for sample in family.samples}
               for family in pipeline.metrics()}
    sink.release.set()
    worker.join(10)
    received = scraped["ioc_events_received"].get(("qtmt-aqi",), 0.0)
    accepted = scraped["ioc_events_accepted"].get(("qtmt-aqi",), 0.0)
    rejected = sum(v for k, v in scraped["ioc_events_rejected"].items() if k[0] == "qtmt-aqi")
    duplicates = scraped["ioc_events_duplicate"].get(("qtmt-aqi",), 0.0)
    assert received == accepted + rejected + duplicates  # the batch is counted whole or not at all
    assert_counting_rule(pipeline)
    assert pipeline.accepted[("qtmt-aqi",)] == 2
