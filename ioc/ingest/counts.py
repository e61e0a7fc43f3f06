"""The intake's counters (docs/metrics.md): per source received = accepted + rejected + duplicate, and
the former area codes converted.

A batch's counts (`BatchCounts`) are gathered while it is checked and added to the totals in one step
once it is handed over, under a lock a scrape takes too: no scrape sees a batch half counted.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.core import Metric

from ioc.metrics import counter


class BatchCounts:
    """One batch's counts, added to the totals in one step once the batch is handed over."""

    __slots__ = ("accepted", "converted", "duplicates", "received", "rejected")

    def __init__(self) -> None:
        self.received: defaultdict[str, int] = defaultdict(int)
        self.accepted: defaultdict[str, int] = defaultdict(int)
        self.duplicates: defaultdict[str, int] = defaultdict(int)
        self.rejected: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.converted: defaultdict[str, int] = defaultdict(int)  # former area codes, by level


class IntakeCounts:
    """The totals. The dicts are never replaced (the pipeline exposes them); change them with `add`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: defaultdict[tuple[str], int] = defaultdict(int)
        self.accepted: defaultdict[tuple[str], int] = defaultdict(int)
        self.duplicates: defaultdict[tuple[str], int] = defaultdict(int)
        self.rejected: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.converted: defaultdict[tuple[str], int] = defaultdict(int)

    def add(self, batch: BatchCounts) -> None:
        """Add one batch's counts to the totals, all at once."""
        with self.lock:
            for totals, counts in ((self.received, batch.received), (self.accepted, batch.accepted),
                                   (self.duplicates, batch.duplicates)):
                for source, number in counts.items():
                    totals[(source,)] += number
            for key, number in batch.rejected.items():
                self.rejected[key] += number
            for level, number in batch.converted.items():
                self.converted[(level,)] += number

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            received, accepted = self.received.copy(), self.accepted.copy()
            duplicates, rejected = self.duplicates.copy(), self.rejected.copy()
            converted = self.converted.copy()
        for (source,) in received:  # every source shows all three, zeros included, so sums are checkable
            accepted.setdefault((source,), 0)
            duplicates.setdefault((source,), 0)
        yield counter("ioc_events_received", "Events received, by source.", ("source",), received)
        yield counter("ioc_events_accepted", "Events accepted and handed to the sinks.", ("source",), accepted)
        yield counter("ioc_events_duplicate", "Repeats of (source, id) counted and ignored.", ("source",),
                      duplicates)
        yield counter("ioc_events_rejected", "Events rejected, by source and reason.", ("source", "reason"),
                      rejected)
        yield counter("ioc_area_codes_converted", "Events dated from 2025-07-01 whose former area code was "
                      "converted to the unit it became, by the former code's level.", ("level",), converted)
