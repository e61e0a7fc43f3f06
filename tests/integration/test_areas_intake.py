"""Former area codes through the real intake (CONTRACT §10): `ioc run` as a subprocess, HTTP events, a real
InfluxDB. An event dated now (after 2025-07-01) with the former Phường Mũi Né (22915) is accepted, stored
with `area` = its new commune 22918 and `area_former` = 22915, and counted; a divided commune is refused
naming its candidates; a code in use is stored as it came."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.servers import Server, influx_count, influx_query

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def event(event_id: str, area: str, offset: int) -> dict[str, object]:
    return {"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "metric": "env.aqi", "value": 80 + offset,
            "time": (NOW + timedelta(seconds=offset)).isoformat(), "area": area}


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}", extra='[areas]\nprovinces = ["68", "01"]\n')
    process.start()
    yield process
    process.stop()


def test_a_former_code_dated_now_lands_in_its_new_commune(daemon: DaemonProcess, influxdb: Server,
                                                          database: str) -> None:
    body = [event("old-mui-ne", "22915", 0), event("new-mui-ne", "22918", 1), event("cong-vi", "00007", 2),
            event("phan-thiet-district", "593", 3)]
    response = httpx.post(f"{daemon.api}/api/v1/events", json=body, timeout=10,
                          headers={"Authorization": f"Bearer {VENDOR_TOKEN}"})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 3
    [refused] = answer["rejected"]
    assert refused["index"] == 2
    assert "00007 (Phường Cống Vị)" in refused["error"]
    assert "00008 (Phường Ngọc Hà), 00025 (Phường Giảng Võ)" in refused["error"]

    deadline = time.monotonic() + 30
    while influx_count(influxdb.url, database, "env.aqi") < 3:
        assert time.monotonic() < deadline, "the points did not reach InfluxDB"
        time.sleep(0.2)
    [series] = influx_query(influxdb.url, database,
                            'SELECT "value", "area", "area_former" FROM "env.aqi" ORDER BY time')
    columns: list[str] = series["columns"]  # type: ignore[assignment]
    rows = [dict(zip(columns, values, strict=True)) for values in series["values"]]  # type: ignore[attr-defined]
    assert [(row["value"], row["area"], row["area_former"]) for row in rows] == [
        (80.0, "22918", "22915"), (81.0, "22918", None), (83.0, "68", "593")]

    assert daemon.metric_sum("ioc_area_codes_converted_total", level="commune") == 1
    assert daemon.metric_sum("ioc_area_codes_converted_total", level="district") == 1
    assert daemon.metric_sum("ioc_area_codes_converted_total", level="province") == 0
    assert daemon.metric_sum("ioc_events_rejected_total", source="qtmt-aqi", reason="area_divided") == 1
    assert_counting_rule(daemon)
