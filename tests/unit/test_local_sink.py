"""The local sink: points durable in the embedded store at once, a bounded ring, the counting rule."""

from __future__ import annotations

from pathlib import Path

from ioc.sinks.local import LocalSink


def samples(sink: LocalSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in sink.metrics()() for s in family.samples}


def value(sink: LocalSink, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples(sink).items() if n == name and all((k, x) in ls for k, x in labels.items()))


def test_points_are_kept_in_order_and_callbacks_run_in_order(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "store.db")
    order: list[int] = []
    sink.submit(["m value=1.0 1", "m value=2.0 2"], lambda: order.append(1))
    sink.submit([], lambda: order.append(2))  # no points: only orders the callback
    sink.submit(["kpi,area=60 value=3.0 3"], lambda: order.append(3))
    assert order == [1, 2, 3]
    assert sink.recent() == ["m value=1.0 1", "m value=2.0 2", "kpi,area=60 value=3.0 3"]
    assert value(sink, "ioc_sink_points_handed_total") == 3 == value(sink, "ioc_sink_points_total", outcome="written")
    sink.close(1)


def test_the_ring_keeps_the_newest_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    sink = LocalSink(path, max_points=5)
    for index in range(8):
        sink.submit([f"m value={index}.0 {index}"])
    assert [line.split()[-1] for line in sink.recent()] == ["3", "4", "5", "6", "7"]
    assert value(sink, "ioc_local_points_evicted_total") == 3 and value(sink, "ioc_local_points") == 5
    sink.close(1)
    again = LocalSink(path, max_points=5)
    assert value(again, "ioc_local_points") == 5
    again.submit(["m value=8.0 8"])
    assert [line.split()[-1] for line in again.recent()] == ["4", "5", "6", "7", "8"]
    again.close(1)
