"""Points kept in the embedded store (docs/configuration.md `[influx] url = ""`: "metrics kept only in the
embedded store"), so `ioc demo` and small installs keep their history with no database to run.

The shared batching loop over the `LocalWriter`, with no spool (a spool in the same SQLite file would
fail with it) and no flush delay: a batch is written as soon as the previous one is, so batches grow
with the load. `recent()` reads the points back as line protocol for tools and tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path

from prometheus_client.core import Metric

from ioc.sinks.local.writer import LocalWriter
from ioc.sinks.output import BatchingOutput, Policy
from ioc.sinks.spool import NoSpool

DEFAULT_MAX_POINTS = 1_000_000
# No flush delay (a local write costs little: batches grow with the load by themselves); a failing disk
# is retried within seconds, not the half-minute a remote server is given.
LOCAL_POLICY = Policy(batch_size=5000, flush_interval=0.0, queue_max_points=200_000, drop_when_full=False,
                      retry_min=0.25, retry_max=5.0)


class LocalSink(BatchingOutput):
    def __init__(self, store_path: str | Path, *, max_points: int = DEFAULT_MAX_POINTS,
                 name: str = "local") -> None:
        self._local = LocalWriter(store_path, max_points=max_points)
        super().__init__(name, self._local, NoSpool(), LOCAL_POLICY)

    def recent(self, limit: int = 1000) -> list[str]:
        """The newest `limit` points written, oldest first."""
        return self._local.recent(limit)

    def _collect(self) -> Iterable[Metric]:
        return chain(super()._collect(), self._local.metrics(self.name))
