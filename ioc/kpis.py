"""A derived indicator (CONTRACT §5 KPIs): the value the aggregators compute for one area.

The aggregators (`ioc.aggregators`) produce `Kpi` values; the daemon writes each to InfluxDB as the
`kpi` measurement (CONTRACT §4), serves the latest of each at `/api/v1/kpis`, sends it on the SSE stream
and feeds it back into the rule engine as telemetry of `source = "ioc"` (`Kpi.as_event`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ioc.models import AreaLevel, TelemetryEvent

KPI_SOURCE = "ioc"


@dataclass(frozen=True, slots=True)
class Kpi:
    """`kpi` is the metric name (`kpi.dossier.overdue_open`); `value` and `target` are counts or
    percentages (0-100); `target` is None where none is set; `updated_at` is event time (Unix seconds)."""

    kpi: str
    area: str
    level: AreaLevel
    value: float
    target: float | None
    updated_at: float

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a KPI series: (metric, area)."""
        return (self.kpi, self.area)

    def as_event(self) -> TelemetryEvent:
        """The KPI as the telemetry event the rule engine sees (`source = "ioc"`, metric = `kpi`).

        The id is unique per (metric, area, time) so that dedup never swallows a KPI update."""
        time = datetime.fromtimestamp(self.updated_at, UTC)
        return TelemetryEvent(
            id=f"{self.kpi}:{self.area}:{int(self.updated_at * 1_000_000)}",
            source=KPI_SOURCE,
            type="telemetry",
            time=time,
            area=self.area,
            metric=self.kpi,
            value=float(self.value),
        )

    def as_json(self) -> dict[str, object]:
        """The API/SSE shape (CONTRACT §3 kpi): `kpi`, `area`, `level`, `value`, `target`, `updated_at`."""
        return {
            "kpi": self.kpi,
            "area": self.area,
            "level": self.level,
            "value": self.value,
            "target": self.target,
            "updated_at": datetime.fromtimestamp(self.updated_at, UTC).isoformat(),
        }


KpiListener = Callable[[Kpi], None]
