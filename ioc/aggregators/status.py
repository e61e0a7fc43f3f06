"""The status tracker: the latest state of every entity -> `kpi.coverage.*` (docs/rules.md).

An entity (key: source + entity, e.g. a cell site of `viettel-ran`) counts in the area of its latest
status event and in that area's ancestors. `kpi.coverage.down` is the number of the area's known entities
whose latest state is `down`; `kpi.coverage.down_share` is that as a % of the area's known entities.
Entities are few (thousands), so they are plain dict entries; the shared store (`agg_entities`, SQLite
or PostgreSQL) keeps the latest states over a restart, written in batches (kept buffered while it fails). An event older than the entity's applied one is ignored (counted out of order).

An area the registry does not know is counted alone, with the level its code's length suggests (GSO
codes: 2 digits a province, 3 a district, 5 a commune), since status events carry no level.
"""

from __future__ import annotations

import threading
from typing import cast

import structlog

from ioc.aggregators.rollup import AreaNodes, KpiChanges
from ioc.areas import AreaRegistry, local_date
from ioc.envelope import AnyEvent, AreaLevel, StatusEvent, event_time_ns
from ioc.kpis import Kpi, KpiListener
from ioc.metrics import MetricSource, counter, gauge
from ioc.store import StoreError, StoreTarget, ensure_schema, open_database, upsert
from ioc.store.outage import Outage

log = structlog.get_logger("ioc.aggregators.status")

_SAVE = upsert("agg_entities", ("source", "entity", "area", "state", "last_us", "chain"), ("source", "entity"))
_FLUSH_ROWS = 1000


def guess_level(code: str) -> AreaLevel:
    """The level a GSO code's length suggests, for areas the registry does not know."""
    return "province" if len(code) <= 2 else "district" if len(code) == 3 else "commune"


class StatusTracker:
    """Counts known and down entities per area and its ancestors."""

    name = "status"

    def __init__(self, areas: AreaRegistry, store_path: StoreTarget, on_kpi: KpiListener) -> None:
        self._lock = threading.Lock()
        self._db = open_database(store_path)
        ensure_schema(self._db)
        self._outage = Outage(self.name)
        self._changes = KpiChanges(areas, on_kpi)
        self._known: list[int] = []
        self._down: list[int] = []
        self._nodes = AreaNodes(areas, self._grow)
        self._entities: dict[tuple[str, str], tuple[int, bool, int]] = {}  # -> (chain, down, last_us)
        self._pending: dict[tuple[str, str], tuple[str, str, str, str, int, str]] = {}
        self._dirty: set[int] = set()
        self._all_dirty = True
        self._outcomes = {"applied": 0, "out_of_order": 0, "no_area": 0}
        self._unknown_area_events: dict[str, int] = {}  # by source
        self._load()

    def observe(self, event: AnyEvent) -> None:
        """Apply a status event (other types are ignored)."""
        if type(event) is not StatusEvent:
            return
        if event.area is None:
            self._outcomes["no_area"] += 1
            return
        at_us = event_time_ns(event.time) // 1000
        key = (event.source, event.entity)
        with self._lock:
            previous = self._entities.get(key)
            if previous is not None:
                if at_us < previous[2]:
                    self._outcomes["out_of_order"] += 1
                    return
                self._count(previous[0], previous[1], -1)
            self._outcomes["applied"] += 1
            chain = self._nodes.chain_for(event.area, guess_level(event.area), at_us / 1e6)
            if not self._nodes.chain_known[chain]:
                self._unknown_area_events[event.source] = self._unknown_area_events.get(event.source, 0) + 1
            down = event.state == "down"
            self._entities[key] = (chain, down, at_us)
            self._count(chain, down, 1)
            self._pending[key] = (event.source, event.entity, event.area, event.state, at_us,
                                  self._nodes.chain_text(chain))
            if len(self._pending) >= _FLUSH_ROWS:
                self._flush()
            kpis = self._emit(at_us / 1e6)
        self._changes.send(kpis)

    def advance(self, now: float) -> None:
        """Persist; emit at first sight after a restart (no state of an entity changes with time)."""
        with self._lock:
            self._flush()
            kpis = self._emit(now)
            self._nodes.log_unknown_areas()
        self._changes.send(kpis)

    def persist(self) -> None:
        """Write the buffered rows now (the evaluation does before acknowledging a batch)."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        with self._lock:
            self._outage.retry_now()  # one last attempt, whatever the last one did
            self._flush()
            if self._pending:
                log.error("aggregator.rows_lost", aggregator=self.name, rows=len(self._pending))
            self._db.close()

    def metrics(self) -> MetricSource:
        def collect():  # type: ignore[no-untyped-def]
            yield gauge("ioc_aggregator_entities", "Entities whose latest status the status tracker holds.",
                        (), {(): len(self._entities)})
            yield counter("ioc_aggregator_status_events", "Status events by what the tracker did with them "
                          "(out_of_order: older than the entity's applied event, ignored).", ("outcome",),
                          {(name,): value for name, value in self._outcomes.items()})
            yield counter("ioc_aggregator_status_unknown_area_events",
                          "Status events applied for an area the registry does not know (no roll-up), by "
                          "source.", ("source",),
                          {(source,): count for source, count in self._unknown_area_events.copy().items()})
            yield counter("ioc_aggregator_status_unknown_areas_folded",
                          "Status events of an unknown area code counted on the one node `unknown`, past "
                          "the bound of distinct unknown codes with series of their own (10,000).", (),
                          {(): self._nodes.folded})
        return collect

    def _grow(self) -> None:
        self._known.append(0)
        self._down.append(0)

    def _count(self, chain: int, down: bool, sign: int) -> None:
        for node in self._nodes.chains[chain]:
            self._known[node] += sign
            if down:
                self._down[node] += sign
        self._dirty.add(chain)

    def _emit(self, at: float) -> list[Kpi]:
        if self._all_dirty:
            nodes: set[int] | range = range(len(self._nodes.codes))
            self._all_dirty = False
        else:
            nodes = {node for chain in self._dirty for node in self._nodes.chains[chain]}
        self._dirty.clear()
        out: list[Kpi] = []
        day = local_date(at)
        for node in sorted(nodes):
            area, level = self._nodes.codes[node], self._nodes.level(node, day)
            self._changes.offer(out, "kpi.coverage.down", area, level, float(self._down[node]), day, at)
            if self._known[node]:
                self._changes.offer(out, "kpi.coverage.down_share", area, level,
                                    100.0 * self._down[node] / self._known[node], day, at)
        return out

    def _flush(self) -> None:
        if not self._pending or not self._outage.ready():
            return
        try:
            with self._db.transaction():
                self._db.executemany(_SAVE, self._pending.values())
        except StoreError as error:  # the rows stay buffered and are written again
            self._outage.failed(error, buffered=len(self._pending))
            return
        self._outage.recovered(written=len(self._pending))
        self._pending.clear()

    def _load(self) -> None:
        for source, entity, area, state, last_us, chain_text in self._db.execute(
                "SELECT source, entity, area, state, last_us, chain FROM agg_entities"):
            chain = self._nodes.chain_from_text(chain_text, cast(AreaLevel, guess_level(area)), last_us / 1e6)
            down = state == "down"
            self._entities[(source, entity)] = (chain, down, last_us)
            self._count(chain, down, 1)
        self._dirty.clear()
        self._all_dirty = True
