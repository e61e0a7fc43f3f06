"""Prometheus exposition of the daemon's own counters (docs/metrics.md `/metrics`).

Hot paths count into plain dicts (a labelled prometheus_client counter costs ~1 µs an increment); a
collector turns them into metric families at scrape time. Components register a `collect()` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MetricSource = Callable[[], Iterable[Metric]]
# Keys are tuples of label values; Mapping's key type is invariant, so a `dict[tuple[str], int]` of one
# label would not be accepted as `Mapping[tuple[str, ...], float]`.
LabelledValues = Mapping[Any, float]


def counter(name: str, documentation: str, labels: tuple[str, ...],
            values: LabelledValues) -> CounterMetricFamily:
    """A counter family from `{label values: count}` (`name` without the `_total` suffix)."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def gauge(name: str, documentation: str, labels: tuple[str, ...],
          values: LabelledValues) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


class _Sources(Collector):
    def __init__(self) -> None:
        self.sources: list[MetricSource] = []

    def collect(self) -> Iterable[Metric]:
        for source in self.sources:
            yield from source()


class Metrics:
    """The daemon's registry: components add sources; `/metrics` renders them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sources = _Sources()
        self.registry.register(self._sources)

    def add(self, source: MetricSource) -> None:
        self._sources.sources.append(source)

    def render(self) -> bytes:
        return generate_latest(self.registry)
