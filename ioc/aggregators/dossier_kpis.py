"""The `kpi.dossier.*` indicators of the nodes whose counters changed (docs/rules.md).

`open`, `overdue_open` and `near_due_open` per node; `on_time_rate` and `online_share` over the current
period, and only once the period has a dossier for the rate (the previous value stays on the board).
`KpiChanges` keeps the values that differ from the last emitted.
"""

from __future__ import annotations

from ioc.aggregators.dossier_counts import DossierCounts
from ioc.aggregators.rollup import KpiChanges
from ioc.areas import local_date
from ioc.kpis import Kpi


def changed_kpis(counts: DossierCounts, changes: KpiChanges, at: float) -> list[Kpi]:
    """The KPIs whose value changed since the last call, as of `at` (Unix s); the counters' changes are
    taken (`DossierCounts.take_changed`)."""
    nodes = counts.take_changed()
    out: list[Kpi] = []
    if not nodes:
        return out
    day = local_date(at)
    period = counts.periods.get(counts.current)
    offer, codes, level_of = changes.offer, counts.nodes.codes, counts.nodes.level
    for node in sorted(nodes):
        area, level = codes[node], level_of(node, day)
        offer(out, "kpi.dossier.open", area, level, float(counts.open[node]), day, at)
        offer(out, "kpi.dossier.overdue_open", area, level, float(counts.overdue[node]), day, at)
        offer(out, "kpi.dossier.near_due_open", area, level, float(counts.near[node]), day, at)
        if period is not None:
            if period.finished[node] > 0:
                offer(out, "kpi.dossier.on_time_rate", area, level,
                      100.0 * period.on_time[node] / period.finished[node], day, at)
            if period.received[node] > 0:
                offer(out, "kpi.dossier.online_share", area, level,
                      100.0 * period.online[node] / period.received[node], day, at)
    return out
