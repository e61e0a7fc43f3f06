"""The InfluxDB sink: the shared batching loop over an InfluxDB writer (1.x `/write` or the v2 API) and a
bounded disk spool in the SQLite store for while the server cannot take the points. See README.md here."""

from __future__ import annotations

from pathlib import Path

from ioc.config import InfluxSettings
from ioc.sinks.base import RefusedCallback
from ioc.sinks.influx.writers import make_writer
from ioc.sinks.output import BatchingOutput, Policy
from ioc.sinks.spool import Spool


def influx_policy(settings: InfluxSettings) -> Policy:
    return Policy(batch_size=settings.batch_size, flush_interval=settings.flush_interval,
                  queue_max_points=settings.queue_max_points, drop_when_full=settings.spool_on_full == "drop",
                  retry_min=settings.retry_min, retry_max=settings.retry_max)


class InfluxSink(BatchingOutput):
    """A `Sink` writing line protocol to InfluxDB, spooling to SQLite (`spool_path`) in an outage."""

    def __init__(self, settings: InfluxSettings, *, spool_path: str | Path, name: str = "influx",
                 on_refused: RefusedCallback | None = None) -> None:
        super().__init__(name, make_writer(settings),
                         Spool(spool_path, sink=name, max_points=settings.spool_max_points),
                         influx_policy(settings), on_refused=on_refused)
