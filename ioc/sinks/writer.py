"""What a backend does for the batching loop: write one batch, or say why not.

A `Writer` sends the points it is given as one request (one transaction) and turns every failure into a
`WriteError` saying whether the same points may succeed later (`retryable`), whether the points
themselves were refused so smaller batches may get through (`splittable`), what the server asked for
(`retry_after`), its status, and a `kind` for the error counter. Batching, retries, splitting, the spool
and the outage are the loop's business (`ioc.sinks.output`), the same for every backend.
"""

from __future__ import annotations

from typing import Protocol

from ioc.errors import SinkError

# Refusals of the points themselves: the loop splits the batch to find the bad ones. 422 is what
# InfluxDB 2.x answers for points it cannot store (e.g. outside the bucket's retention).
SPLIT_STATUSES = frozenset({400, 413, 422})

ERROR_KINDS = ("timeout", "connection", "http_5xx", "http_429", "http_4xx", "auth", "io")
"""Labels of `ioc_sink_write_errors_total{kind}` (`io`: the local store's disk)."""


class WriteError(SinkError):
    """A failed write; `kind` is one of ERROR_KINDS."""

    def __init__(self, message: str, *, kind: str, retryable: bool, retry_after: float | None = None,
                 status: int | None = None, splittable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after, status=status)
        self.kind = kind
        self.splittable = status in SPLIT_STATUSES if splittable is None else splittable
        """Whether the server refused (some of) the points themselves: the loop splits the batch and
        dead-letters a single point still refused."""

    @property
    def needs_a_person(self) -> bool:
        """A failure that will not heal by itself (authentication, a wrong URL): a readiness problem."""
        return self.kind == "auth" or not self.retryable


class Writer(Protocol):
    """One backend: InfluxDB 1.x, the v2 write API, the local store."""

    def write(self, points: list[str]) -> None:
        """Store the points as one request; raise `WriteError` when they were not all stored."""

    def close(self) -> None:
        """Release connections."""
