"""Aggregators: dossier and status events -> the derived indicators (KPIs) of docs/rules.md.

An aggregator sees every accepted event (`observe`), is told when the clock moves (`advance`), keeps its
state in the shared store so a restart loses nothing (`close` writes what is buffered) and hands each KPI
whose value changed to a listener (`ioc.kpis.KpiBoard.publish`, in the daemon). The daemon calls
`advance(time.time())` about once a second so due dates pass with no event at all.
"""

from __future__ import annotations

from typing import Protocol

from ioc.aggregators.calendar import WorkCalendar, default_holidays_path, load_holidays
from ioc.aggregators.dossiers import DossierTracker
from ioc.aggregators.status import StatusTracker
from ioc.areas import AreaRegistry
from ioc.config import KpisSettings
from ioc.envelope import AnyEvent
from ioc.kpis import KpiListener
from ioc.metrics import MetricSource
from ioc.store import StoreTarget

__all__ = ["Aggregator", "DossierTracker", "StatusTracker", "WorkCalendar", "build_aggregators"]


class Aggregator(Protocol):
    def observe(self, event: AnyEvent) -> None:
        """Take an event into account; event types it does not handle are ignored."""

    def advance(self, now: float) -> None:
        """The clock passed `now` (Unix s): timers fire, buffered state is persisted."""

    def persist(self) -> None:
        """Write buffered state now (before the events it holds are acknowledged)."""

    def close(self) -> None:
        """Persist and release."""

    def metrics(self) -> MetricSource:
        """Its `ioc_aggregator_*` metric families for `/metrics`."""


def work_calendar(kpis: KpisSettings) -> WorkCalendar:
    """The working-day calendar of `[kpis]` (raises ConfigError for a bad holidays file)."""
    return WorkCalendar(load_holidays(kpis.holidays_file or default_holidays_path()), kpis.near_due_days)


def build_aggregators(areas: AreaRegistry, kpis: KpisSettings, store_path: StoreTarget,
                      on_kpi: KpiListener) -> list[Aggregator]:
    """The dossier and status trackers over the shared store `store_path` (a Database, whose connection
    each reopens, a store URL or a SQLite path; `:memory:` for tests)."""
    return [
        DossierTracker(areas, work_calendar(kpis), store_path, on_kpi,
                       on_time_statuses=frozenset(kpis.on_time_statuses)),
        StatusTracker(areas, store_path, on_kpi),
    ]
