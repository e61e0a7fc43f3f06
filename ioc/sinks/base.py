"""What a sink is: something that takes rendered points and makes them durable.

The pipeline hands each sink a list of line-protocol points plus an optional `on_durable` callback. A
sink calls the callbacks in the order it received them, once the points handed with it (and all before
them) are durable: written to the database, or to the sink's spool. The MQTT connector acknowledges a
QoS 1 message from that callback, which is why order matters (MQTT wants PUBACKs in arrival order).

A point may carry its origin (`ioc.lineproto.Points`: a list of lines with, aligned, the origin key of
each: its event's source and id), so a point the database refuses for good is traced to its event and
source without reading the line back. Any plain list of lines is accepted too (its points have no
origin: the daemon's own KPI and alert points). The intake sees a sink through its own narrower port
(`ioc.ingest.pipeline.PointSink`: submit, has_room), so it imports nothing of this layer.

Counting rule (docs/metrics.md): every point handed to a sink is, at any quiet moment, exactly one of
written, dead_lettered, dropped (with a reason), still queued, or spooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ioc.ingest.port import DurableCallback
from ioc.lineproto import Origin, Points, origin_key
from ioc.metrics import MetricSource

__all__ = ["DurableCallback", "Origin", "Points", "RefusedCallback", "Sink", "origin_key", "origins_of"]


def origins_of(points: Sequence[str]) -> list[str] | None:
    """The origin keys submitted with `points`, or None when they carry none."""
    origins: list[str] | None = getattr(points, "origins", None)
    if not origins:
        return None
    if len(origins) != len(points):  # a bug of the caller: refuse rather than misfile a dead letter
        raise ValueError(f"{len(points)} points with {len(origins)} origins")
    return origins


RefusedCallback = Callable[[str, str, Origin | None], None]
"""`on_refused(reason, point, origin)`: a point the database refused for good (the daemon dead-letters
it to its origin's source)."""


@runtime_checkable
class Sink(Protocol):
    name: str

    def start(self) -> None:
        """Start background work (writer threads). Connecting may fail and is retried, never fatal."""

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        """Queue points (possibly none, to order a callback behind earlier points; a `Points` to give
        their origins). Blocks while the queue is full, up to `timeout` seconds (None: as long as it
        takes); raises `SinkFull` then."""

    def has_room(self, points: int) -> bool:
        """Whether `points` more would be taken now without waiting."""

    def problems(self) -> list[str]:
        """Failing readiness checks, named (empty when the sink can take points)."""

    def metrics(self) -> MetricSource:
        """The sink's metric families (`ioc_sink_*{sink=name}`)."""

    def close(self, timeout: float) -> None:
        """Stop taking points, flush what is queued (to the database or the spool), stop threads."""
