"""The InfluxDB sink's disk spool: FIFO order, bounds, counts, and surviving a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioc.errors import SinkFull
from ioc.sinks.influx.spool import Spool


def points(prefix: str, count: int) -> list[str]:
    return [f"m,batch={prefix} value={index}.0 {index}" for index in range(count)]


def test_batches_come_back_oldest_first_and_counts_follow(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    assert spool.peek(10) is None
    spool.append(points("a", 3))
    spool.append(points("b", 2))
    assert spool.points == len(spool) == 5
    assert spool.bytes > 0

    first = spool.peek(3)
    assert first is not None
    assert first.points == points("a", 3)  # "b" would go over 3 points
    spool.delete(first)
    assert spool.points == 2

    second = spool.peek(10)
    assert second is not None and second.points == points("b", 2)
    spool.delete(second)
    assert spool.points == 0 and spool.bytes == 0
    assert spool.peek(10) is None


def test_peek_joins_small_batches_up_to_the_limit_but_always_returns_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    for name in "abcd":
        spool.append(points(name, 2))
    batch = spool.peek(5)
    assert batch is not None and batch.points == points("a", 2) + points("b", 2)
    assert spool.peek(1) is not None and len(spool.peek(1).points) == 2  # type: ignore[union-attr]


def test_points_keep_raw_newlines_and_any_text(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    odd = ['status,area=Phan\\ Thiết state="line one\nline two" 1', 'm,x=a\\,b\\=c value="q\\"\\\\" 2']
    spool.append(odd)
    batch = spool.peek(10)
    assert batch is not None and batch.points == odd


def test_bound_is_in_points(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=5)
    spool.append(points("a", 4))
    assert spool.has_room(1) and not spool.has_room(2)
    with pytest.raises(SinkFull):
        spool.append(points("b", 2))
    assert spool.points == 4


def test_zero_bound_means_no_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=0)
    assert not spool.has_room(1)
    with pytest.raises(SinkFull):
        spool.append(points("a", 1))


def test_replace_keeps_the_remainder_first_in_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    spool.append(points("a", 2))
    spool.append(points("b", 2))
    spool.append(points("c", 2))
    batch = spool.peek(4)
    assert batch is not None and len(batch.points) == 4
    remainder = batch.points[3:]  # a0, a1, b0 were handled
    spool.replace(batch, remainder)
    assert spool.points == 3
    again = spool.peek(100)
    assert again is not None and again.points == remainder + points("c", 2)
    spool.replace(again, [])
    assert spool.points == 0 and spool.bytes == 0 and spool.peek(100) is None


def test_survives_a_restart_and_sinks_do_not_share_rows(tmp_path: Path) -> None:
    path = tmp_path / "var" / "store.db"
    first = Spool(path, sink="influx", max_points=100)
    other = Spool(path, sink="influx-b", max_points=100)
    first.append(points("a", 3))
    other.append(points("z", 1))
    size = first.bytes
    first.close()
    other.close()

    reopened = Spool(path, sink="influx", max_points=100)
    assert reopened.points == 3 and reopened.bytes == size
    batch = reopened.peek(100)
    assert batch is not None and batch.points == points("a", 3)
    reopened.delete(batch)
    reopened.close()
    assert Spool(path, sink="influx-b", max_points=100).points == 1
