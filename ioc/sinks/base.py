"""What a sink is: something that takes rendered points and makes them durable.

The pipeline hands each sink a list of line-protocol points plus an optional `on_durable` callback. A
sink calls the callbacks in the order it received them, once the points handed with it (and all before
them) are durable: written to the database, or to the sink's spool. The MQTT connector acknowledges a
QoS 1 message from that callback, which is why order matters (MQTT wants PUBACKs in arrival order).

Counting rule (docs/metrics.md): every point handed to a sink is, at any quiet moment, exactly one of
written, dead_lettered, dropped (with a reason), still queued, or spooled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ioc.metrics import MetricSource

DurableCallback = Callable[[], None]


@runtime_checkable
class Sink(Protocol):
    name: str

    def start(self) -> None:
        """Start background work (writer threads). Connecting may fail and is retried, never fatal."""

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        """Queue points (possibly none, to order a callback behind earlier points). Blocks while the
        queue is full, up to `timeout` seconds (None: as long as it takes); raises `SinkFull` then."""

    def has_room(self, points: int) -> bool:
        """Whether `points` more would be taken now without waiting."""

    def problems(self) -> list[str]:
        """Failing readiness checks, named (empty when the sink can take points)."""

    def metrics(self) -> MetricSource:
        """The sink's metric families (`ioc_sink_*{sink=name}`)."""

    def close(self, timeout: float) -> None:
        """Stop taking points, flush what is queued (to the database or the spool), stop threads."""
