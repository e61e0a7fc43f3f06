"""The InfluxDB sink: batches line protocol to InfluxDB 1.x or the v2 write API, spooling to SQLite while
the server cannot take it. See README.md in this folder."""

from ioc.sinks.influx.sink import InfluxSink

__all__ = ["InfluxSink"]
