"""The disk spool: FIFO order, bounds, counts, origins, surviving a restart, and reading a spool an older
daemon wrote (no `origins` column)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from ioc.errors import SinkFull
from ioc.sinks.base import origin_key
from ioc.sinks.buffer import Batch
from ioc.sinks.spool import NoSpool, Spool


def points(prefix: str, count: int) -> list[str]:
    return [f"m,batch={prefix} value={index}.0 {index}" for index in range(count)]


def batch(prefix: str, count: int, *, origins: bool = False) -> Batch:
    return Batch(points(prefix, count), [origin_key(prefix, f"e{index}") if origins else None for index in range(count)])


def test_batches_come_back_oldest_first_and_counts_follow(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    assert spool.begin(10) is None
    spool.append(batch("a", 3))
    spool.append(batch("b", 2))
    assert spool.points == len(spool) == 5
    assert spool.bytes > 0

    first = spool.begin(3)
    assert first is not None
    assert first.lines == points("a", 3)  # "b" would go over 3 points
    spool.end(first, 3)
    assert spool.points == 2

    second = spool.begin(10)
    assert second is not None and second.lines == points("b", 2)
    spool.end(second, 2)
    assert spool.points == 0 and spool.bytes == 0
    assert spool.begin(10) is None


def test_begin_joins_small_batches_up_to_the_limit_but_always_returns_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    for name in "abcd":
        spool.append(batch(name, 2))
    joined = spool.begin(5)
    assert joined is not None and joined.lines == points("a", 2) + points("b", 2)
    one = spool.begin(1)
    assert one is not None and len(one) == 2


def test_points_keep_raw_newlines_and_any_text(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    odd = ['status,area=Phan\\ Thiết state="line one\nline two" 1', 'm,x=a\\,b\\=c value="q\\"\\\\" 2']
    spool.append(Batch(odd, [None, None]))
    read = spool.begin(10)
    assert read is not None and read.lines == odd


def test_origins_are_kept_point_by_point(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    spool.append(batch("a", 2, origins=True))
    spool.append(batch("b", 1))  # no origins: stored as NULL
    spool.append(Batch(points("c", 2), [None, origin_key("c", "e1")]))
    read = spool.begin(100)
    assert read is not None
    assert read.origins == [origin_key("a", "e0"), origin_key("a", "e1"), None, None, origin_key("c", "e1")]
    spool.end(read, 3)  # the rest keeps its origins
    again = spool.begin(100)
    assert again is not None and again.origins == [None, origin_key("c", "e1")]


def test_bound_is_in_points(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=5)
    spool.append(batch("a", 4))
    assert spool.has_room(1) and not spool.has_room(2)
    with pytest.raises(SinkFull):
        spool.append(batch("b", 2))
    assert spool.points == 4


def test_zero_bound_and_no_spool_take_nothing(tmp_path: Path) -> None:
    for spool in (Spool(tmp_path / "store.db", sink="influx", max_points=0), NoSpool()):
        assert not spool.has_room(1)
        with pytest.raises(SinkFull):
            spool.append(batch("a", 1))
        assert spool.begin(10) is None


def test_end_keeps_the_unhandled_rest_first_in_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "store.db", sink="influx", max_points=100)
    for name in "abc":
        spool.append(batch(name, 2))
    read = spool.begin(4)
    assert read is not None and len(read) == 4
    spool.end(read, 0)  # nothing handled: nothing changes
    assert spool.points == 6
    spool.end(read, 3)  # a0, a1, b0 were handled
    assert spool.points == 3
    again = spool.begin(100)
    assert again is not None and again.lines == points("b", 2)[1:] + points("c", 2)
    spool.end(again, len(again))
    assert spool.points == 0 and spool.bytes == 0 and spool.begin(100) is None


def test_survives_a_restart_and_sinks_do_not_share_rows(tmp_path: Path) -> None:
    path = tmp_path / "var" / "store.db"
    first = Spool(path, sink="influx", max_points=100)
    other = Spool(path, sink="influx-b", max_points=100)
    first.append(batch("a", 3, origins=True))
    other.append(batch("z", 1))
    size = first.bytes
    first.close()
    other.close()

    reopened = Spool(path, sink="influx", max_points=100)
    assert reopened.points == 3 and reopened.bytes == size
    read = reopened.begin(100)
    assert read is not None and read.lines == points("a", 3) and read.origins[2] == origin_key("a", "e2")
    reopened.end(read, 3)
    reopened.close()
    assert Spool(path, sink="influx-b", max_points=100).points == 1


def test_a_spool_written_by_the_old_daemon_is_read(tmp_path: Path) -> None:
    """The schema before the reshape (no `origins` column), with a row as the old code wrote it."""
    path = tmp_path / "store.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE influx_spool (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,
                                   count INTEGER NOT NULL, points BLOB NOT NULL);
        CREATE INDEX influx_spool_sink ON influx_spool (sink, id);
    """)
    blob = orjson.dumps(points("old", 2))
    old.execute("INSERT INTO influx_spool (sink, count, points) VALUES ('influx', 2, ?)", (blob,))
    old.commit()
    old.close()

    spool = Spool(path, sink="influx", max_points=100)
    assert spool.points == 2 and spool.bytes == len(blob)
    spool.append(batch("new", 1, origins=True))
    read = spool.begin(100)
    assert read is not None
    assert read.lines == points("old", 2) + points("new", 1)
    assert read.origins == [None, None, origin_key("new", "e0")]
