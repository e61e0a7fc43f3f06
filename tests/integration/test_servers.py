"""The fixtures' servers are real and answer: a guard that the other integration tests stand on."""

from __future__ import annotations

import urllib.request

from tests.servers import Server, influx_count, influx_query


def test_influxdb_accepts_writes_and_queries(influxdb: Server, database: str) -> None:
    influx_query(influxdb.url, database, f'CREATE DATABASE "{database}"')
    request = urllib.request.Request(
        f"{influxdb.url}/write?db={database}", data=b"m,k=v value=1.0 1000000000", method="POST"
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 204
    assert influx_count(influxdb.url, database, "m") == 1


def test_victoria_metrics_is_healthy(victoria: Server) -> None:
    with urllib.request.urlopen(f"{victoria.url}/health") as response:
        assert response.read().strip() == b"OK"
