"""The sink's books: where every point handed to it is, and the metric families that show it.

Counting rule (docs/metrics.md), true at every instant a scrape sees: handed = written + dead_lettered +
dropped + queue + spool. Every count lives here and changes under `lock` (the memory buffer shares it),
and a point moves between columns in one step, so a scrape never sees it twice or nowhere.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from enum import Enum

from prometheus_client.core import Metric

from ioc.metrics import counter, gauge
from ioc.sinks.writer import ERROR_KINDS


class Held(Enum):
    """Where the points of a batch being handled are counted until they have an outcome."""

    MEMORY = "queue"
    SPOOL = "spool"


class Ledger:
    """Counts of one sink. Mutate only through the methods (or, for the memory buffer, under `lock`)."""

    def __init__(self, spooled: int) -> None:
        self.lock = threading.Lock()
        # Points an earlier run spooled count as handed to this one, which will write them.
        self.handed = spooled
        self.spooled = spooled  # in the spool, without an outcome yet
        self.in_flight = 0  # taken from the memory queue, without an outcome yet
        self.written = 0
        self.dead_lettered = 0
        self.dropped: dict[str, int] = {"spool_full": 0}
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self.batches_written = 0
        self.write_seconds = 0.0

    def settle(self, held: Held, outcome: str, count: int, reason: str = "") -> None:
        """`count` points of a batch got their outcome: `written`, `dead_lettered` or `dropped`."""
        with self.lock:
            if held is Held.MEMORY:
                self.in_flight -= count
            else:
                self.spooled -= count
            if outcome == "written":
                self.written += count
            elif outcome == "dead_lettered":
                self.dead_lettered += count
            else:
                self.dropped[reason] = self.dropped.get(reason, 0) + count

    def spooled_from_memory(self, count: int) -> None:
        with self.lock:
            self.in_flight -= count
            self.spooled += count

    def request(self, seconds: float, error_kind: str | None) -> None:
        """One write request took `seconds`; it failed with `error_kind`, or succeeded (None)."""
        with self.lock:
            self.write_seconds += seconds
            if error_kind is None:
                self.batches_written += 1
            else:
                self.errors[error_kind] = self.errors.get(error_kind, 0) + 1

    def collect(self, sink: str, queued: Callable[[], int], spool_bytes: Callable[[], int],
                state: Callable[[], Iterable[Metric]]) -> Iterable[Metric]:
        """The `ioc_sink_*` families; `queued()` (points in the memory queue) is read under the lock."""
        with self.lock:
            handed, written, dead = self.handed, self.written, self.dead_lettered
            dropped, errors = dict(self.dropped), dict(self.errors)
            queue, spooled, size = queued() + self.in_flight, self.spooled, spool_bytes()
            batches, seconds = self.batches_written, self.write_seconds
        points: dict[tuple[str, ...], float] = {(sink, "written", ""): float(written),
                                                (sink, "dead_lettered", ""): float(dead)}
        for reason, count in dropped.items():
            points[(sink, "dropped", reason)] = float(count)
        yield counter("ioc_sink_points_handed", "Points handed to the sink.", ("sink",), {(sink,): float(handed)})
        yield counter("ioc_sink_points", "Points handled for good, by outcome (and reason when dropped).",
                      ("sink", "outcome", "reason"), points)
        yield gauge("ioc_sink_queue_points", "Points in memory: queued or being written.", ("sink",),
                    {(sink,): float(queue)})
        yield gauge("ioc_sink_spool_points", "Points in the disk spool, waiting for the database.",
                    ("sink",), {(sink,): float(spooled)})
        yield gauge("ioc_sink_spool_bytes", "Bytes of points in the disk spool.", ("sink",),
                    {(sink,): float(size)})
        yield counter("ioc_sink_write_errors", "Failed write requests, by kind.", ("sink", "kind"),
                      {(sink, kind): float(count) for kind, count in errors.items()})
        yield counter("ioc_sink_batches_written", "Write requests that succeeded.", ("sink",),
                      {(sink,): float(batches)})
        yield counter("ioc_sink_write_seconds", "Seconds spent in write requests.", ("sink",),
                      {(sink,): seconds})
        yield from state()
