"""A derived indicator (docs/rules.md KPIs): the value the aggregators compute for one area.

The aggregators (`ioc.aggregators`) produce `Kpi` values; the daemon writes each to InfluxDB as the
`kpi` measurement (docs/influxdb.md), serves the latest of each at `/api/v1/kpis`, sends it on the SSE stream
and feeds it back into the rule engine as telemetry of `source = "ioc"` (`Kpi.as_event`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
import structlog

from ioc.envelope import AreaLevel, TelemetryEvent

log = structlog.get_logger("ioc.kpis")

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
        """The API/SSE shape (docs/http-api.md kpi): `kpi`, `area`, `level`, `value`, `target`,
        `updated_at`."""
        return {
            "kpi": self.kpi,
            "area": self.area,
            "level": self.level,
            "value": self.value,
            "target": self.target,
            "updated_at": datetime.fromtimestamp(self.updated_at, UTC).isoformat(),
        }


KpiListener = Callable[[Kpi], None]


class KpiBoard:
    """The latest value of every KPI series (what `/api/v1/kpis` answers), and who hears of changes.

    Aggregators call `publish`; listeners (the SSE stream, the InfluxDB writer, the rule engine's feed)
    are called in the publisher's thread, in order, and a failing listener never stops the others."""

    def __init__(self, listeners: Sequence[KpiListener] = ()) -> None:
        self._latest: dict[tuple[str, str], Kpi] = {}
        self._lock = threading.Lock()
        self.listeners: list[KpiListener] = list(listeners)  # given by the assembly (app.py)

    def publish(self, kpi: Kpi) -> None:
        with self._lock:
            self._latest[kpi.key] = kpi
        for listener in self.listeners:
            try:
                listener(kpi)
            except Exception:  # a listener's bug must not cost the others their update
                log.exception("kpis.listener_failed", listener=getattr(listener, "__name__", "?"), kpi=kpi.kpi)

    def latest(self, area: str | None = None) -> list[Kpi]:
        """Every series' latest value (of one area when `area` is given), sorted by area then metric."""
        with self._lock:
            values = [kpi for kpi in self._latest.values() if area is None or kpi.area == area]
        return sorted(values, key=lambda kpi: (kpi.area, kpi.kpi))

    def dump(self) -> bytes:
        """Every series' latest value (JSON), to be kept across a restart."""
        with self._lock:
            values = list(self._latest.values())
        return orjson.dumps([[k.kpi, k.area, k.level, k.value, k.target, k.updated_at] for k in values])

    def restore(self, data: bytes) -> int:
        """Put back what `dump` gave, telling no listener (the values were written and judged before), so
        `/api/v1/kpis` and the wall show them at once after a restart; the aggregators' next emission
        replaces them. Returns how many were restored; unreadable data restores nothing."""
        try:
            rows = orjson.loads(data)
            restored = [Kpi(str(kpi), str(area), level, float(value),
                            None if target is None else float(target), float(updated_at))
                        for kpi, area, level, value, target, updated_at in rows]
        except (orjson.JSONDecodeError, TypeError, ValueError):
            log.warning("kpis.restore_failed", reason="unreadable saved KPIs, starting empty")
            return 0
        with self._lock:
            for kpi in restored:
                self._latest.setdefault(kpi.key, kpi)
        return len(restored)

    def get(self, kpi: str, area: str) -> Kpi | None:
        with self._lock:
            return self._latest.get((kpi, area))
