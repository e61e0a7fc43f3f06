"""The local sink: the shared batching loop over the embedded store; points in order, callbacks in
order once written, a bounded ring, the counting rule, and a failing disk holding the batch."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ioc.sinks.local import LocalSink
from tests.waiting import wait_until


def samples(sink: LocalSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in sink.metrics()() for s in family.samples}


def value(sink: LocalSink, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples(sink).items() if n == name and all((k, x) in ls for k, x in labels.items()))



def test_points_are_kept_in_order_and_callbacks_run_in_order(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "store.db")
    sink.start()
    order: list[int] = []
    sink.submit(["m value=1.0 1", "m value=2.0 2"], lambda: order.append(1))
    sink.submit([], lambda: order.append(2))  # no points: only orders the callback
    sink.submit(["kpi,area=60 value=3.0 3"], lambda: order.append(3))
    wait_until("the callbacks", lambda: order == [1, 2, 3])
    assert sink.recent() == ["m value=1.0 1", "m value=2.0 2", "kpi,area=60 value=3.0 3"]
    assert value(sink, "ioc_sink_points_handed_total") == 3 == value(sink, "ioc_sink_points_total", outcome="written")
    sink.close(5)


def test_the_ring_keeps_the_newest_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sink = LocalSink(path, max_points=5)
    sink.start()
    for index in range(8):
        sink.submit([f"m value={index}.0 {index}"])
    sink.close(5)  # flushes
    assert value(sink, "ioc_local_points_evicted_total") == 3 and value(sink, "ioc_local_points") == 5
    assert value(sink, "ioc_sink_points_total", outcome="written") == 8
    again = LocalSink(path, max_points=5)
    assert value(again, "ioc_local_points") == 5
    again.start()
    again.submit(["m value=8.0 8"])
    wait_until("the point written", lambda: value(again, "ioc_sink_points_total", outcome="written") == 1)
    assert [line.split()[-1] for line in again.recent()] == ["4", "5", "6", "7", "8"]
    again.close(5)


def test_a_failing_disk_holds_the_batch_unacknowledged_then_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ioc.sinks.local import writer

    failures = [2]
    real = writer.transaction

    def flaky(connection: sqlite3.Connection) -> object:
        if failures[0]:
            failures[0] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real(connection)

    monkeypatch.setattr(writer, "transaction", flaky)
    sink = LocalSink(tmp_path / "store.db")
    sink.start()
    done = threading.Event()
    sink.submit(["m value=1.0 1"], done.set)
    wait_until("a write error", lambda: value(sink, "ioc_sink_write_errors_total", kind="io") >= 1)
    # Between the failures (the retries come after 0.25 s, then ~0.5 s): held, unacknowledged, said so.
    wait_until("a problem said", lambda: sink.problems() != [])
    assert sink.problems() == ["local: cannot write, no spool: holding 1 points in memory"]
    assert not done.is_set() and not sink.has_room(1)
    wait_until("the retried write", done.is_set)  # retried (0.25 s, then ~0.5 s), written: only then acked
    assert failures == [0] and value(sink, "ioc_sink_write_errors_total", kind="io") == 2
    assert sink.recent() == ["m value=1.0 1"] and sink.problems() == []
    assert value(sink, "ioc_sink_state", state="writing") == 1
    assert value(sink, "ioc_sink_points_total", outcome="written") == 1
    sink.close(5)
