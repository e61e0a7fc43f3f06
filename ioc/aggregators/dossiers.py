"""The dossier tracker: one-stop-shop dossiers (hồ sơ TTHC) -> the `kpi.dossier.*` indicators (docs/rules.md).

Every dossier (key: source + dossier_id) is in the shared store (`DossierRows`, dossier_rows.py), the
durable copy that a restart reloads; rows are written in batches and kept buffered through a store outage.
Open ones are also in memory in a compact form (`OpenDossiers`, open_dossiers.py), counted per area node
(`DossierCounts`, dossier_counts.py); the KPIs of the nodes that changed are emitted (`changed_kpis`,
dossier_kpis.py). Finished ones (`done`, `denied`, `cancelled`) live only in the store, where an event for
one is looked up (during a store outage it cannot be, and the event is taken as the dossier's first).

A dossier's state is what its latest event (by event time) says. Applying an event uncounts what the
dossier's previous state contributed and counts the new state, so a repeat changes nothing and an
older event than the one applied is ignored (counted as out of order): no double counting.

Time: the tracker's clock is the latest of the event times it saw and the `advance(now)` times. An open
dossier not in `supplement` is near-due from the start of the day set by `[kpis] near_due_days` (see
`calendar`) and overdue once `due_at <= clock`; both flip with the clock alone.

Grading a finished dossier (`finished_at`, or the event time when absent, against `due_at`, dates in
Asia/Ho_Chi_Minh): early = finished on a day before the due day; on time = on the due day and at or before
`due_at`; late = after `due_at`. `kpi.dossier.on_time_rate` = (early + on time) / finished, over the
dossiers finished in the current period with a status in `[kpis] on_time_statuses`.
`kpi.dossier.online_share` = online / received, over the dossiers received in the current period. The
current period is the calendar month of the clock; a rate with no dossier yet in the period is not emitted
(the previous value stays on the board with its `updated_at`). Periods before the previous month are
dropped (rows of dossiers finished and received before it are deleted from the store at the month's turn).
"""

from __future__ import annotations

import threading
from typing import cast, get_args

import structlog

from ioc.aggregators.calendar import WorkCalendar, period_of, period_start
from ioc.aggregators.dossier_counts import DossierCounts
from ioc.aggregators.dossier_kpis import changed_kpis
from ioc.aggregators.dossier_rows import DossierRow, DossierRows, dossier_key
from ioc.aggregators.open_dossiers import OpenDossiers
from ioc.aggregators.rollup import KpiChanges
from ioc.areas import AreaRegistry, local_date
from ioc.envelope import (
    FINISHED_DOSSIER_STATUSES,
    AnyEvent,
    AreaLevel,
    DossierEvent,
    DossierStatus,
    event_time_ns,
)
from ioc.kpis import KpiListener
from ioc.metrics import MetricSource, counter, gauge
from ioc.store import StoreTarget

log = structlog.get_logger("ioc.aggregators.dossiers")

STATUSES: tuple[str, ...] = get_args(DossierStatus)
_STATUS_CODE = {status: code for code, status in enumerate(STATUSES)}


def grade(finished_us: int, due_us: int) -> str:
    """`early`, `on_time` or `late` (see the module's docstring)."""
    if finished_us > due_us:
        return "late"
    if local_date(finished_us / 1e6) < local_date(due_us / 1e6):
        return "early"
    return "on_time"


class DossierTracker:
    """Counts open, overdue and near-due dossiers and the period's rates per area and its ancestors."""

    name = "dossiers"

    def __init__(self, areas: AreaRegistry, calendar: WorkCalendar, store_path: StoreTarget,
                 on_kpi: KpiListener, *,
                 on_time_statuses: frozenset[str] = FINISHED_DOSSIER_STATUSES) -> None:
        self._graded = on_time_statuses
        self._lock = threading.Lock()
        self._rows = DossierRows(store_path, self.name)
        self._changes = KpiChanges(areas, on_kpi)
        self._counts = DossierCounts(areas)
        self._nodes = self._counts.nodes
        self._opened = OpenDossiers(self._counts, calendar)
        self._clock_us = 0
        self._outcomes = {"applied": 0, "out_of_order": 0, "no_area": 0}
        self._unknown_area_events: dict[str, int] = {}  # by source
        self._load()

    # --- the Aggregator interface --------------------------------------------------------------------

    def observe(self, event: AnyEvent) -> None:
        """Apply a dossier event (other types are ignored)."""
        if type(event) is not DossierEvent:
            return
        if event.area is None:
            self._outcomes["no_area"] += 1
            return
        at_us = event_time_ns(event.time) // 1000
        received_us = event_time_ns(event.received_at) // 1000
        due_us = event_time_ns(event.due_at) // 1000
        finished_us = None
        if event.status in FINISHED_DOSSIER_STATUSES:
            finished_us = event_time_ns(event.finished_at) // 1000 if event.finished_at else at_us
        key = dossier_key(event.source, event.dossier_id)
        counts, opened = self._counts, self._opened
        with self._lock:
            if at_us > self._clock_us:
                self._set_clock(at_us)
            slot = opened.slot_of.get(key)
            if slot is not None:
                if at_us < opened.last_us(slot):
                    self._outcomes["out_of_order"] += 1
                    return
                opened.uncount(slot)
            else:
                stored = self._rows.find(key, event.source, event.dossier_id)
                if stored is not None:
                    if at_us < stored.last_us:
                        self._outcomes["out_of_order"] += 1
                        return
                    self._uncount_row(stored)
            self._outcomes["applied"] += 1
            chain = self._nodes.chain_for(event.area, event.level, at_us / 1e6)
            if not self._nodes.chain_known[chain]:
                self._unknown_area_events[event.source] = self._unknown_area_events.get(event.source, 0) + 1
            online = event.channel == "online"
            received_period = period_of(received_us / 1e6)
            if finished_us is not None:
                if slot is not None:
                    opened.remove(key, slot)
                counts.received(chain, received_period, online, 1)
                if event.status in self._graded:
                    counts.finished(chain, period_of(finished_us / 1e6), finished_us <= due_us, 1)
            else:
                opened.put(key, slot, chain, _STATUS_CODE[event.status], online, received_period, due_us, at_us,
                           self._clock_us)
            self._rows.put(key, DossierRow(event.source, event.dossier_id, event.area, event.level, event.channel,
                                           event.status, received_us, due_us, finished_us, at_us,
                                           self._nodes.chain_text(chain)), self._clock_us)
            kpis = changed_kpis(counts, self._changes, at_us / 1e6)
        self._changes.send(kpis)

    def advance(self, now: float) -> None:
        """The clock reached `now`: flip what became near-due or overdue, persist, emit what changed."""
        now_us = int(now * 1_000_000)
        with self._lock:
            if now_us > self._clock_us:
                self._set_clock(now_us)
            self._rows.flush(self._clock_us)
            kpis = changed_kpis(self._counts, self._changes, now)
            self._nodes.log_unknown_areas()
        self._changes.send(kpis)

    def persist(self) -> None:
        """Write the buffered rows now (the evaluation does before acknowledging a batch)."""
        with self._lock:
            self._rows.flush(self._clock_us)

    def close(self) -> None:
        """Write what is buffered and close the store (what the store does not take is lost, and said)."""
        with self._lock:
            self._rows.close(self._clock_us)

    def metrics(self) -> MetricSource:
        def collect():  # type: ignore[no-untyped-def]
            yield gauge("ioc_aggregator_dossiers_open", "Open dossiers held by the dossier tracker.",
                        (), {(): len(self._opened)})
            yield counter("ioc_aggregator_dossier_events", "Dossier events by what the tracker did with them "
                          "(out_of_order: older than the dossier's applied event, ignored).", ("outcome",),
                          {(name,): value for name, value in self._outcomes.items()})
            yield counter("ioc_aggregator_dossier_unknown_area_events",
                          "Dossier events applied for an area the registry does not know (no roll-up), by "
                          "source.", ("source",),
                          {(source,): count for source, count in self._unknown_area_events.copy().items()})
            yield counter("ioc_aggregator_dossier_unknown_areas_folded",
                          "Dossier events of an unknown area code counted on the one node `unknown`, past "
                          "the bound of distinct unknown codes with series of their own (10,000).", (),
                          {(): self._nodes.folded})
            yield gauge("ioc_aggregator_dossier_sweep_seconds", "Duration of the last clock sweep.", (),
                        {(): self._opened.last_sweep_seconds})
        return collect

    # --- inside the lock -----------------------------------------------------------------------------

    def _uncount_row(self, row: DossierRow) -> None:
        """Uncount a finished dossier as stored."""
        chain = self._nodes.chain_from_text(row.chain, cast(AreaLevel, row.level), row.last_us / 1e6)
        self._counts.received(chain, period_of(row.received_us / 1e6), row.channel == "online", -1)
        if row.status in self._graded and row.finished_us is not None:
            self._counts.finished(chain, period_of(row.finished_us / 1e6), row.finished_us <= row.due_us, -1)

    def _set_clock(self, now_us: int) -> None:
        """Move the clock forward: a new period, then every phase change due by `now_us`."""
        self._clock_us = now_us
        period = period_of(now_us / 1e6)
        if period != self._counts.current:
            self._new_period(period)
        self._opened.sweep(now_us)

    def _new_period(self, period: int) -> None:
        first = not self._counts.current
        self._counts.start_period(period)
        if not first:
            pruned = self._rows.prune(int(period_start(period - 1) * 1_000_000), self._clock_us)
            log.info("aggregator.period_started", period=f"{period // 12}-{period % 12 + 1:02d}", pruned=pruned)

    def _load(self) -> None:
        """Rebuild memory from the store: open dossiers and the kept periods' counters."""
        clock_us = self._rows.load_clock()
        if clock_us is not None:
            self._clock_us = clock_us
            self._counts.start_period(period_of(clock_us / 1e6))
        counts = self._counts
        chains: dict[tuple[str, str], int] = {}  # (stored chain, level) -> chain
        opened = 0
        for row in self._rows.load():
            chain = chains.get((row.chain, row.level))
            if chain is None:
                chain = self._nodes.chain_from_text(row.chain, cast(AreaLevel, row.level), row.last_us / 1e6)
                chains[(row.chain, row.level)] = chain
            online = row.channel == "online"
            received_period = period_of(row.received_us / 1e6)
            if row.finished_us is not None:
                counts.received(chain, received_period, online, 1)
                if row.status in self._graded:
                    counts.finished(chain, period_of(row.finished_us / 1e6), row.finished_us <= row.due_us, 1)
                continue
            self._opened.put(dossier_key(row.source, row.dossier_id), None, chain, _STATUS_CODE[row.status],
                             online, received_period, row.due_us, row.last_us, self._clock_us)
            opened += 1
        counts.reset_changes()
        if opened:
            log.info("aggregator.loaded", aggregator=self.name, open=opened)
