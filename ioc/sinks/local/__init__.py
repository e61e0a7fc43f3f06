"""The local sink: points kept in the embedded SQLite store when no InfluxDB is configured."""

from ioc.sinks.local.sink import LocalSink

__all__ = ["LocalSink"]
