"""A point InfluxDB refuses is traced to its event by the origin it carries from the intake (no reading
of the rendered line): `ioc run` with a real Mosquitto and InfluxDB 1.x; the field `value` of `env.aqi`
is made a string first, so the daemon's float point is refused (`partial write: field type conflict`)
and dead-lettered to its event's source, naming the event."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.mqtt_tools import Collector
from tests.servers import Server, influx_count

WHEN = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def influx_post(server: Server, path: str, body: bytes, **params: str) -> None:
    url = f"{server.url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10) as answer:
        assert answer.status in (200, 204)


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    influx_post(influxdb, "/query", urllib.parse.urlencode({"q": f'CREATE DATABASE "{database}"'}).encode())
    stamp = int(WHEN.timestamp()) * 10**9 - 1
    influx_post(influxdb, "/write", f'env.aqi,source=someone-else value="text" {stamp}'.encode(), db=database)
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}")
    process.start()
    yield process
    process.stop()


def event(event_id: str, metric: str, offset: int) -> bytes:
    return orjson.dumps({"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "metric": metric,
                         "time": (WHEN + timedelta(microseconds=offset)).isoformat(), "value": 42, "area": "22723"})


def test_a_refused_point_is_dead_lettered_to_its_events_source_naming_the_event(
    daemon: DaemonProcess, mosquitto: Server, influxdb: Server, database: str
) -> None:
    dead = Collector("127.0.0.1", mosquitto.port, "ioc/v1/deadletter/#")
    try:
        body = b"\n".join([event("fine-1", "env.pm25", 1), event("conflict-7", "env.aqi", 2),
                           event("fine-2", "env.pm25", 3)])
        answer = httpx.post(f"{daemon.api}/api/v1/events", content=body, timeout=10,
                            headers={"Authorization": f"Bearer {VENDOR_TOKEN}",
                                     "Content-Type": "application/x-ndjson"})
        assert answer.status_code == 202 and answer.json()["accepted"] == 3
        [(topic, payload)] = dead.wait_for(1, timeout=20)
    finally:
        dead.close()
    assert topic == "ioc/v1/deadletter/qtmt-aqi"
    letter = orjson.loads(payload)
    assert letter["reason"].startswith("influx refused the point of event 'conflict-7': HTTP 400: partial write")
    assert letter["payload"].startswith("env.aqi,source=qtmt-aqi,") and " value=42.0 " in letter["payload"]
    assert influx_count(influxdb.url, database, "env.pm25") == 2  # the rest of the batch was written
    assert daemon.metric_sum("ioc_sink_points_total", outcome="dead_lettered") == 1
    assert_counting_rule(daemon)
