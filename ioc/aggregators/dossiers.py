"""The dossier tracker: one-stop-shop dossiers (hồ sơ TTHC) -> the `kpi.dossier.*` indicators (docs/rules.md).

Every dossier (key: source + dossier_id) is in the shared store (table `agg_dossiers`; SQLite or
PostgreSQL, `ioc.store`), the durable copy that a restart reloads. Rows are written in batches; while the
store fails they stay buffered and are written once it answers (`ioc.store.outage`). Open ones are also held in memory in a compact form: a dict key -> slot and parallel
typed arrays per slot (about 45 bytes a dossier besides its key), a heap of plain ints
`(next transition µs << 32) | slot` for the clock, and counters per area node. Finished ones (`done`,
`denied`, `cancelled`) live only in the store, where an event for one is looked up (during a store
outage it cannot be, and the event is taken as the dossier's first). A bitmap of their keys' hashes says
which keys may be there, so an event of a new dossier costs no lookup (a round trip to PostgreSQL).

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

import heapq
import threading
import time
from array import array
from typing import NamedTuple, cast, get_args

import structlog

from ioc.aggregators.calendar import WorkCalendar, period_of, period_start
from ioc.aggregators.rollup import AreaNodes, KpiChanges
from ioc.areas import AreaRegistry, local_date
from ioc.envelope import (
    FINISHED_DOSSIER_STATUSES,
    AnyEvent,
    AreaLevel,
    DossierEvent,
    DossierStatus,
    event_time_ns,
)
from ioc.kpis import Kpi, KpiListener
from ioc.metrics import MetricSource, counter, gauge
from ioc.store import StoreError, StoreTarget, ensure_schema, open_database, upsert
from ioc.store.outage import Outage

log = structlog.get_logger("ioc.aggregators.dossiers")

STATUSES: tuple[str, ...] = get_args(DossierStatus)
_STATUS_CODE = {status: code for code, status in enumerate(STATUSES)}
_SUPPLEMENT = _STATUS_CODE["supplement"]

# The phase of an open dossier relative to the clock.
NORMAL, NEAR, OVERDUE, UNTIMED = 0, 1, 2, 3  # UNTIMED: in supplement (never near-due nor overdue)
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_FLUSH_ROWS = 10_000  # rows buffered before they are written in one transaction
_NO_TIME = -1
_FINISHED_BITS = 1 << 24  # the bitmap of finished dossiers' key hashes: 2 MiB; ~6% false hits at 1M keys

_COLUMNS = ("source, dossier_id, area, level, channel, status, received_us, due_us, finished_us, last_us, "
            "chain")
_SAVE_ROWS = upsert("agg_dossiers", _COLUMNS.split(", "), ("source", "dossier_id"))
_SAVE_CLOCK = upsert("agg_clock", ("name", "clock_us"), ("name",))


class _Row(NamedTuple):
    source: str
    dossier_id: str
    area: str
    level: str
    channel: str
    status: str
    received_us: int
    due_us: int
    finished_us: int | None
    last_us: int
    chain: str


class _PeriodCounts:
    """Counters of one period per node: received, received online, finished (graded), on time."""

    __slots__ = ("finished", "on_time", "online", "received")

    def __init__(self, nodes: int) -> None:
        self.received = [0] * nodes
        self.online = [0] * nodes
        self.finished = [0] * nodes
        self.on_time = [0] * nodes

    def grow(self) -> None:
        for values in (self.received, self.online, self.finished, self.on_time):
            values.append(0)


def phase_at(status: int, due_us: int, near_us: int, now_us: int) -> int:
    """The phase of an open dossier at `now_us`."""
    if status == _SUPPLEMENT:
        return UNTIMED
    if now_us >= due_us:
        return OVERDUE
    if now_us >= near_us:
        return NEAR
    return NORMAL


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
        self._areas = areas
        self._calendar = calendar
        self._graded = on_time_statuses
        self._lock = threading.Lock()
        self._db = open_database(store_path)
        ensure_schema(self._db)
        self._outage = Outage(self.name)
        self._changes = KpiChanges(areas, on_kpi)
        # per node
        self._open: list[int] = []
        self._overdue: list[int] = []
        self._near: list[int] = []
        self._periods: dict[int, _PeriodCounts] = {}
        self._nodes = AreaNodes(areas, self._grow)
        # per slot (open dossiers)
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._chain = array("i")
        self._status = bytearray()
        self._online = bytearray()
        self._phase = bytearray()
        self._received_period = array("i")
        self._due = array("q")
        self._near_at = array("q")
        self._last = array("q")
        self._next = array("q")
        self._heap: list[int] = []
        # bookkeeping
        self._pending: dict[str, _Row] = {}
        self._finished_keys = bytearray(_FINISHED_BITS // 8)  # may be a finished dossier in the store
        self._clock_us = 0
        self._stored_clock = 0
        self._current = 0  # the period of the clock
        self._dirty: set[int] = set()  # chains whose nodes may have changed since the last emission
        self._all_dirty = True  # everything is new to the listener at start
        self._outcomes = {"applied": 0, "out_of_order": 0, "no_area": 0}
        self._unknown_area_events: dict[str, int] = {}  # by source
        self.last_sweep_seconds = 0.0
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
        key = f"{event.source}\x1f{event.dossier_id}"
        with self._lock:
            if at_us > self._clock_us:
                self._set_clock(at_us)
            slot = self._slot_of.get(key)
            if slot is not None:
                if at_us < self._last[slot]:
                    self._outcomes["out_of_order"] += 1
                    return
                self._uncount_slot(slot)
            else:
                stored = self._stored(key, event.source, event.dossier_id)
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
            self._count_received(chain, period_of(received_us / 1e6), online, 1)
            if finished_us is not None:
                self._mark_finished(key)
                if slot is not None:
                    self._free_slot(key, slot)
                if event.status in self._graded:
                    self._count_finished(chain, period_of(finished_us / 1e6), finished_us <= due_us, 1)
            else:
                if slot is None:
                    slot = self._new_slot(key)
                self._fill_slot(slot, chain, _STATUS_CODE[event.status], online,
                                period_of(received_us / 1e6), due_us, at_us)
            self._pending[key] = _Row(event.source, event.dossier_id, event.area, event.level, event.channel,
                                      event.status, received_us, due_us, finished_us, at_us,
                                      self._nodes.chain_text(chain))
            if len(self._pending) >= _FLUSH_ROWS:
                self._flush_rows()
            kpis = self._emit(at_us / 1e6)
        self._changes.send(kpis)

    def advance(self, now: float) -> None:
        """The clock reached `now`: flip what became near-due or overdue, persist, emit what changed."""
        now_us = int(now * 1_000_000)
        with self._lock:
            if now_us > self._clock_us:
                self._set_clock(now_us)
            self._flush_rows()
            kpis = self._emit(now)
            self._nodes.log_unknown_areas()
        self._changes.send(kpis)

    def persist(self) -> None:
        """Write the buffered rows now (the evaluation does before acknowledging a batch)."""
        with self._lock:
            self._flush_rows()

    def close(self) -> None:
        """Write what is buffered and close the store (what the store does not take is lost, and said)."""
        with self._lock:
            self._outage.retry_now()  # one last attempt, whatever the last one did
            self._flush_rows()
            if self._pending:
                log.error("aggregator.rows_lost", aggregator=self.name, rows=len(self._pending))
            self._db.close()

    def metrics(self) -> MetricSource:
        def collect():  # type: ignore[no-untyped-def]
            yield gauge("ioc_aggregator_dossiers_open", "Open dossiers held by the dossier tracker.",
                        (), {(): len(self._slot_of)})
            yield counter("ioc_aggregator_dossier_events", "Dossier events by what the tracker did with them "
                          "(out_of_order: older than the dossier's applied event, ignored).", ("outcome",),
                          {(name,): value for name, value in self._outcomes.items()})
            yield counter("ioc_aggregator_dossier_unknown_area_events",
                          "Dossier events applied for an area the registry does not know (no roll-up), by "
                          "source.", ("source",),
                          {(source,): count for source, count in self._unknown_area_events.copy().items()})
            yield gauge("ioc_aggregator_dossier_sweep_seconds", "Duration of the last clock sweep.", (),
                        {(): self.last_sweep_seconds})
        return collect

    # --- counting ------------------------------------------------------------------------------------

    def _grow(self) -> None:
        self._open.append(0)
        self._overdue.append(0)
        self._near.append(0)
        for counts in self._periods.values():
            counts.grow()

    def _period(self, period: int) -> _PeriodCounts | None:
        if period < self._current - 1:
            return None  # older than the previous period: not kept
        counts = self._periods.get(period)
        if counts is None:
            counts = self._periods[period] = _PeriodCounts(len(self._nodes.codes))
        return counts

    def _count_received(self, chain: int, period: int, online: bool, sign: int) -> None:
        counts = self._period(period)
        if counts is not None:
            for node in self._nodes.chains[chain]:
                counts.received[node] += sign
                if online:
                    counts.online[node] += sign
        self._dirty.add(chain)

    def _count_finished(self, chain: int, period: int, on_time: bool, sign: int) -> None:
        counts = self._period(period)
        if counts is not None:
            for node in self._nodes.chains[chain]:
                counts.finished[node] += sign
                if on_time:
                    counts.on_time[node] += sign
        self._dirty.add(chain)

    def _count_open(self, chain: int, phase: int, sign: int) -> None:
        for node in self._nodes.chains[chain]:
            self._open[node] += sign
            if phase == OVERDUE:
                self._overdue[node] += sign
            elif phase == NEAR:
                self._near[node] += sign
        self._dirty.add(chain)

    def _uncount_slot(self, slot: int) -> None:
        chain = self._chain[slot]
        self._count_received(chain, self._received_period[slot], bool(self._online[slot]), -1)
        self._count_open(chain, self._phase[slot], -1)

    def _uncount_row(self, row: _Row) -> None:
        """Uncount a finished dossier as stored."""
        chain = self._nodes.chain_from_text(row.chain, cast(AreaLevel, row.level), row.last_us / 1e6)
        self._count_received(chain, period_of(row.received_us / 1e6), row.channel == "online", -1)
        if row.status in self._graded and row.finished_us is not None:
            self._count_finished(chain, period_of(row.finished_us / 1e6), row.finished_us <= row.due_us, -1)

    # --- slots and the clock -------------------------------------------------------------------------

    def _new_slot(self, key: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._status)
            if slot > _SLOT_MASK:
                raise OverflowError("more open dossiers than the tracker can index")
            for values in (self._chain, self._received_period, self._due, self._near_at, self._last,
                           self._next):
                values.append(0)
            for flags in (self._status, self._online, self._phase):
                flags.append(0)
        self._slot_of[key] = slot
        return slot

    def _free_slot(self, key: str, slot: int) -> None:
        del self._slot_of[key]
        self._next[slot] = _NO_TIME
        self._free.append(slot)

    def _fill_slot(self, slot: int, chain: int, status: int, online: bool, received_period: int,
                   due_us: int, at_us: int) -> None:
        self._chain[slot] = chain
        self._status[slot] = status
        self._online[slot] = online
        self._received_period[slot] = received_period
        self._due[slot] = due_us
        near_us = int(self._calendar.near_start(due_us / 1e6) * 1_000_000)
        self._near_at[slot] = near_us
        self._last[slot] = at_us
        phase = phase_at(status, due_us, near_us, self._clock_us)
        self._phase[slot] = phase
        self._count_open(chain, phase, 1)
        self._schedule(slot, phase, due_us, near_us)

    def _schedule(self, slot: int, phase: int, due_us: int, near_us: int) -> None:
        at = near_us if phase == NORMAL else due_us if phase == NEAR else _NO_TIME
        if at != self._next[slot]:
            self._next[slot] = at
            if at != _NO_TIME:
                heapq.heappush(self._heap, (at << _SLOT_BITS) | slot)
                if len(self._heap) > 2 * len(self._slot_of) + 4096:
                    self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the heap's stale entries (of dossiers since finished or rescheduled)."""
        next_at = self._next
        self._heap = [(next_at[slot] << _SLOT_BITS) | slot for slot in self._slot_of.values()
                      if next_at[slot] != _NO_TIME]
        heapq.heapify(self._heap)

    def _set_clock(self, now_us: int) -> None:
        """Move the clock forward: a new period, then every phase change due by `now_us`."""
        self._clock_us = now_us
        period = period_of(now_us / 1e6)
        if period != self._current:
            self._new_period(period)
        self._sweep(now_us)

    def _sweep(self, now_us: int) -> None:
        started = time.perf_counter()
        heap, next_at, phases, status, due, near_at = (self._heap, self._next, self._phase, self._status,
                                                      self._due, self._near_at)
        chain_of, chains, dirty = self._chain, self._nodes.chains, self._dirty
        open_near, open_overdue = self._near, self._overdue
        limit = (now_us << _SLOT_BITS) | _SLOT_MASK
        heappop, heappush = heapq.heappop, heapq.heappush
        while heap and heap[0] <= limit:
            item = heappop(heap)
            slot = item & _SLOT_MASK
            if next_at[slot] != item >> _SLOT_BITS:
                continue  # stale: finished or rescheduled since
            old = phases[slot]
            due_us, near_us = due[slot], near_at[slot]
            new = phase_at(status[slot], due_us, near_us, now_us)
            if new != old:
                chain = chain_of[slot]
                for node in chains[chain]:
                    if old == NEAR:
                        open_near[node] -= 1
                    elif old == OVERDUE:
                        open_overdue[node] -= 1
                    if new == NEAR:
                        open_near[node] += 1
                    elif new == OVERDUE:
                        open_overdue[node] += 1
                phases[slot] = new
                dirty.add(chain)
            at = near_us if new == NORMAL else due_us if new == NEAR else _NO_TIME
            next_at[slot] = at
            if at != _NO_TIME:
                heappush(heap, (at << _SLOT_BITS) | slot)
        self.last_sweep_seconds = time.perf_counter() - started

    def _new_period(self, period: int) -> None:
        first = not self._current
        self._current = period
        for old in [p for p in self._periods if p < period - 1]:
            del self._periods[old]
        self._all_dirty = True
        if not first:
            self._flush_rows()
            cutoff = int(period_start(period - 1) * 1_000_000)
            try:
                with self._db.transaction():
                    deleted = self._db.execute(
                        "DELETE FROM agg_dossiers WHERE finished_us IS NOT NULL AND finished_us < ? "
                        "AND received_us < ?", (cutoff, cutoff)).rowcount
            except StoreError as error:  # pruned at the next turn of the month; only space is lost
                log.error("aggregator.prune_failed", aggregator=self.name, error=str(error))
                deleted = 0
            log.info("aggregator.period_started", period=f"{period // 12}-{period % 12 + 1:02d}",
                     pruned=deleted)

    # --- emission ------------------------------------------------------------------------------------

    def _emit(self, at: float) -> list[Kpi]:
        if self._all_dirty:
            nodes: set[int] | range = range(len(self._nodes.codes))
            self._all_dirty = False
        else:
            chains = self._nodes.chains
            nodes = {node for chain in self._dirty for node in chains[chain]}
        self._dirty.clear()
        out: list[Kpi] = []
        if not nodes:
            return out
        day = local_date(at)
        counts = self._periods.get(self._current)
        offer, codes, level_of = self._changes.offer, self._nodes.codes, self._nodes.level
        for node in sorted(nodes):
            area, level = codes[node], level_of(node, day)
            offer(out, "kpi.dossier.open", area, level, float(self._open[node]), day, at)
            offer(out, "kpi.dossier.overdue_open", area, level, float(self._overdue[node]), day, at)
            offer(out, "kpi.dossier.near_due_open", area, level, float(self._near[node]), day, at)
            if counts is not None:
                if counts.finished[node] > 0:
                    offer(out, "kpi.dossier.on_time_rate", area, level,
                          100.0 * counts.on_time[node] / counts.finished[node], day, at)
                if counts.received[node] > 0:
                    offer(out, "kpi.dossier.online_share", area, level,
                          100.0 * counts.online[node] / counts.received[node], day, at)
        return out

    # --- the store -----------------------------------------------------------------------------------

    def _stored(self, key: str, source: str, dossier_id: str) -> _Row | None:
        row = self._pending.get(key)
        if row is not None:
            return row
        if not self._may_be_finished(key) or self._outage.down:  # no lookup (see the module doc)
            return None
        try:
            found = self._db.execute(f"SELECT {_COLUMNS} FROM agg_dossiers WHERE source = ? AND dossier_id = ?",
                                     (source, dossier_id)).fetchone()
        except StoreError as error:
            self._outage.failed(error, buffered=len(self._pending))
            return None
        return _Row(*found) if found else None

    def _mark_finished(self, key: str) -> None:
        bit = hash(key) & (_FINISHED_BITS - 1)  # str hashes vary between processes: rebuilt by `_load`
        self._finished_keys[bit >> 3] |= 1 << (bit & 7)

    def _may_be_finished(self, key: str) -> bool:
        bit = hash(key) & (_FINISHED_BITS - 1)
        return bool(self._finished_keys[bit >> 3] & (1 << (bit & 7)))

    def _flush_rows(self) -> None:
        if not self._pending and self._stored_clock == self._clock_us:
            return
        if not self._outage.ready():
            return
        try:
            with self._db.transaction():
                if self._pending:
                    self._db.executemany(_SAVE_ROWS, self._pending.values())
                self._db.execute(_SAVE_CLOCK, (self.name, self._clock_us))
        except StoreError as error:  # the rows stay buffered and are written again
            self._outage.failed(error, buffered=len(self._pending))
            return
        self._outage.recovered(written=len(self._pending))
        self._pending.clear()
        self._stored_clock = self._clock_us

    def _load(self) -> None:
        """Rebuild memory from the store: open dossiers and the kept periods' counters."""
        found = self._db.execute("SELECT clock_us FROM agg_clock WHERE name = ?", (self.name,)).fetchone()
        self._stored_clock = found[0] if found else 0
        if found:
            self._clock_us = found[0]
            self._current = period_of(self._clock_us / 1e6)
        chains: dict[tuple[str, str], int] = {}
        opened = 0
        for batch in self._db.batches(f"SELECT {_COLUMNS} FROM agg_dossiers"):
            for values in batch:
                row = _Row(*values)
                chain = chains.get((row.chain, row.level))
                if chain is None:
                    chain = self._nodes.chain_from_text(row.chain, cast(AreaLevel, row.level),
                                                        row.last_us / 1e6)
                    chains[(row.chain, row.level)] = chain
                online = row.channel == "online"
                self._count_received(chain, period_of(row.received_us / 1e6), online, 1)
                if row.finished_us is not None:
                    self._mark_finished(f"{row.source}\x1f{row.dossier_id}")
                    if row.status in self._graded:
                        self._count_finished(chain, period_of(row.finished_us / 1e6),
                                             row.finished_us <= row.due_us, 1)
                    continue
                slot = self._new_slot(f"{row.source}\x1f{row.dossier_id}")
                self._fill_slot(slot, chain, _STATUS_CODE[row.status], online,
                                period_of(row.received_us / 1e6), row.due_us, row.last_us)
                opened += 1
        self._dirty.clear()
        self._all_dirty = True
        if opened:
            log.info("aggregator.loaded", aggregator=self.name, open=opened)
