"""The InfluxDB sink when its spool's disk fails (docs/operations.md): the batch is held in memory, never
acknowledged before it is durable somewhere, never dropped, and the sink goes on once the disk or the
database takes it. Also the failpoints of the sink: `spool.write`, `spool.after_write`, `sink.before_write`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ioc import failpoints
from ioc.sinks.buffer import Batch
from ioc.sinks.influx import InfluxSink
from ioc.sinks.spool import Spool
from tests.integration.test_influx_sink import (
    Callbacks,
    TinyInflux,
    assert_counting_rule,
    metric,
    quiet,
    settings,
    started,
)
from tests.waiting import wait_until


@pytest.fixture
def tiny() -> Iterator[TinyInflux]:
    server = TinyInflux()
    yield server
    server.close()


@pytest.fixture
def sinks() -> Iterator[list[InfluxSink]]:
    made: list[InfluxSink] = []
    yield made
    for sink in made:
        sink.close(timeout=5)


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    yield
    failpoints.configure("")


def failing_disk(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the spool's first `failures` appends fail as a full disk does; returns the attempt count."""
    attempts = [0]
    append = Spool.append

    def flaky(self: Spool, batch: Batch) -> None:
        attempts[0] += 1
        if attempts[0] <= failures:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, batch)

    monkeypatch.setattr(Spool, "append", flaky)
    return attempts


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_failing_spool_disk_holds_the_batch_unacknowledged_and_loses_nothing(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink], monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    attempts = failing_disk(monkeypatch, failures=3)
    tiny.fallback = (503, {})
    sink = started(InfluxSink(settings(tiny.url, retry_min="50ms", retry_max="100ms", batch_size=5,
                                       spool_on_full=policy), spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sent = [f"m value={i}.0 {i}" for i in range(20)]
    with capture_logs() as logs:
        for number in range(4):
            sink.submit(sent[number * 5:(number + 1) * 5], callbacks.make(number))
        # The database is down and the disk refuses the batch: nothing may be acknowledged.
        wait_until("three tries of the spool", lambda: attempts[0] >= 3, 10)
        assert callbacks.ran == []
        assert any(problem.startswith("influx: spool write failed (OSError") for problem in sink.problems())
        assert_counting_rule(sink)
        # The disk comes back (the 4th append works): the held batch and the rest are spooled, acknowledged.
        wait_until("every batch spooled once the disk came back", lambda: callbacks.ran == [0, 1, 2, 3], 10,
                   explain=lambda: f"callbacks {callbacks.ran}, problems {sink.problems()}")
        assert sink.problems() == []
        assert metric(sink, "ioc_sink_points_total", outcome="dropped") == 0
        tiny.fallback = (204, {})
        wait_until("the spool drained", lambda: quiet(sink), 10)
    assert tiny.accepted_lines() == sent  # every point once, in order
    assert metric(sink, "ioc_sink_points_total", outcome="written") == 20
    assert [entry["event"] for entry in logs].count("sink.spool_failed") == 1  # one line per episode
    assert_counting_rule(sink)


def test_a_held_batch_goes_to_the_database_when_it_returns_before_the_disk(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_disk(monkeypatch, failures=10**9)  # the disk never recovers
    tiny.fallback = (503, {})
    sink = started(InfluxSink(settings(tiny.url, retry_min="50ms", retry_max="100ms", batch_size=5),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sent = [f"m value={i}.0 {i}" for i in range(10)]
    sink.submit(sent[:5], callbacks.make(1))
    sink.submit(sent[5:], callbacks.make(2))
    wait_until("the spool failure reported", lambda: sink.problems() != [], 10)
    assert callbacks.ran == []
    assert not sink.has_room(1000)  # back-pressure to intake while a batch is held
    tiny.fallback = (204, {})
    wait_until("both batches written", lambda: quiet(sink) and callbacks.ran == [1, 2], 10,
               explain=lambda: f"problems {sink.problems()}")
    assert tiny.accepted_lines() == sent
    assert sink.problems() == []
    assert_counting_rule(sink)


def test_spool_write_failpoint_error_is_a_disk_error(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    failpoints.configure("spool.write=2*error")
    tiny.fallback = (503, {})
    sink = started(InfluxSink(settings(tiny.url, retry_min="50ms", retry_max="100ms"),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sink.submit(["m value=1.0 1"], callbacks.make(1))
    wait_until("the batch spooled once the failpoint turned off", lambda: callbacks.ran == [1], 10)
    assert failpoints.hits("spool.write") == 2
    assert metric(sink, "ioc_sink_spool_points") == 1
    tiny.fallback = (204, {})
    wait_until("the spool drained", lambda: quiet(sink), 10)
    assert tiny.accepted_lines() == ["m value=1.0 1"]
    assert_counting_rule(sink)


def test_sink_before_write_failpoint_error_is_a_failed_write_and_spools(
    tiny: TinyInflux, tmp_path: Path, sinks: list[InfluxSink]
) -> None:
    failpoints.configure("sink.before_write=1*error,spool.after_write=sleep(1000)")
    sink = started(InfluxSink(settings(tiny.url, retry_min="50ms", retry_max="100ms"),
                              spool_path=tmp_path / "store.db"))
    sinks.append(sink)
    callbacks = Callbacks()
    sink.submit(["m value=1.0 1"], callbacks.make(1))
    # The failed write sends the batch to the spool; the callback waits behind spool.after_write.
    wait_until("the batch spooled", lambda: failpoints.hits("spool.after_write") == 1, 10)
    assert callbacks.ran == []
    wait_until("the spooled batch replayed", lambda: quiet(sink) and callbacks.ran == [1], 10)
    assert metric(sink, "ioc_sink_write_errors_total", kind="connection") == 1
    assert tiny.accepted_lines() == ["m value=1.0 1"]
    assert_counting_rule(sink)
