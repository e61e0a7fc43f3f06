"""`SourceWatch`: per source, when its last event was seen and how fast events come; the latest value of a
few telemetry metrics per area (the wall's AQI tile).

It is a `Stage` of the evaluation thread (`ioc.evaluation.Evaluator`): `observe` runs there for each
accepted event, off the intake's hot path, and costs two dict updates; `advance` (once a second) takes
a sample of the counts so a rate over the last minute can be answered. Readers (HTTP handlers in other
threads) only copy the dicts, which the GIL makes atomic, so no lock is taken per event.

Memory is bounded: at most `max_sources` sources and `max_series` (metric, area) readings are kept;
beyond that new keys are counted in `dropped` and ignored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ioc.envelope import AnyEvent, TelemetryEvent

DEFAULT_METRICS = ("env.aqi",)
RATE_WINDOW = 60.0  # seconds over which `rate` is measured


@dataclass(frozen=True, slots=True)
class SourceStat:
    """What the wall shows of a subsystem: events seen since start, the rate over the last minute
    (events per second), when the last one arrived (wall clock) and its event time (Unix seconds)."""

    source: str
    events: int
    rate: float
    last_seen: float
    last_event_time: float


@dataclass(frozen=True, slots=True)
class TelemetryReading:
    """The latest value of a watched metric in one area (`time`: the event's time, Unix seconds)."""

    metric: str
    area: str
    source: str
    value: float
    time: float


class SourceWatch:
    """Per-source arrival statistics and the latest watched telemetry, fed by the evaluation thread."""

    def __init__(self, metrics: Iterable[str] = DEFAULT_METRICS, *, clock: Callable[[], float] = time.time,
                 window: float = RATE_WINDOW, max_sources: int = 1000, max_series: int = 10_000) -> None:
        self.metrics = frozenset(metrics)
        self._clock = clock
        self._window = window
        self._max_sources = max_sources
        self._max_series = max_series
        # source -> [events, last seen (wall), last event time]; lists so `observe` updates in place.
        self._seen: dict[str, list[float]] = {}
        self._readings: dict[tuple[str, str], TelemetryReading] = {}
        self._samples: deque[tuple[float, dict[str, float]]] = deque()
        self.dropped = 0

    # --- the evaluation thread -----------------------------------------------------------------------

    def observe(self, event: AnyEvent) -> None:
        now = self._clock()
        seen = self._seen.get(event.source)
        event_time = event.time.timestamp()
        if seen is None:
            if len(self._seen) >= self._max_sources:
                self.dropped += 1
                return
            self._seen[event.source] = [1, now, event_time]
        else:
            seen[0] += 1
            seen[1] = now
            seen[2] = max(seen[2], event_time)
        if isinstance(event, TelemetryEvent) and event.metric in self.metrics and event.area is not None:
            key = (event.metric, event.area)
            if key not in self._readings and len(self._readings) >= self._max_series:
                self.dropped += 1
                return
            self._readings[key] = TelemetryReading(event.metric, event.area, event.source,
                                                   float(event.value), event_time)

    def advance(self, now: float) -> None:
        """Take a sample of the counts (at most one a second); `now` is event time and not used."""
        wall = self._clock()
        if self._samples and wall - self._samples[-1][0] < 1.0:
            return
        self._samples.append((wall, {source: seen[0] for source, seen in self._seen.copy().items()}))
        while len(self._samples) > 2 and wall - self._samples[1][0] >= self._window:
            self._samples.popleft()

    # --- readers (any thread) ------------------------------------------------------------------------

    def sources(self) -> list[SourceStat]:
        """Every source seen, by name; `rate` over the samples of the last `window` seconds (0 until two
        samples exist)."""
        seen = {source: list(values) for source, values in self._seen.copy().items()}
        samples = list(self._samples)
        rates: dict[str, float] = {}
        if len(samples) >= 2:
            (t0, first), (t1, last) = samples[0], samples[-1]
            if t1 > t0:
                rates = {source: (count - first.get(source, 0)) / (t1 - t0) for source, count in last.items()}
        return [SourceStat(source, int(values[0]), max(0.0, rates.get(source, 0.0)), values[1], values[2])
                for source, values in sorted(seen.items())]

    def readings(self, metric: str | None = None) -> list[TelemetryReading]:
        """The latest reading of each watched (metric, area), by metric then area."""
        found = [reading for reading in self._readings.copy().values()
                 if metric is None or reading.metric == metric]
        return sorted(found, key=lambda reading: (reading.metric, reading.area))
