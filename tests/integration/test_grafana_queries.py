"""Every InfluxQL query of the shipped Grafana dashboard (panels and template variables) runs against a
real InfluxDB 1.x holding points written by the daemon's own line protocol functions, and returns rows.

Grafana's macros are substituted as Grafana does: `$timeFilter` -> `time > now() - 1h`, `$__interval` ->
`1m`, and each variable by its value in the regex format Grafana uses for InfluxQL (`(a|b)` for a multi
selection, `.*` for an "All" with that `allValue`)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml

from ioc.envelope import EVENT_ADAPTER
from ioc.lineproto import render_alert, render_event, render_kpi
from tests.servers import Server, influx_query

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "provisioning" / "dashboards" / "ioc-overview.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
MACROS = {"$__interval": "1m", "$timeFilter": "time > now() - 1h"}
VARIABLES = {"kpi": r"kpi\.dossier\.online_share", "area": "(22723|60)", "level": ".*", "metric": r"env\.aqi"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def queries() -> list[tuple[str, str]]:
    """(where, query) of every panel target and every query variable."""
    board = dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", target["query"])
        for panel in board["panels"]
        for target in panel["targets"]
    ]
    found += [
        (f"variable ${variable['name']}", variable["query"])
        for variable in board["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def substitute(query: str) -> str:
    for macro, value in MACROS.items():
        query = query.replace(macro, value)
    for name in sorted(VARIABLES, key=len, reverse=True):
        query = query.replace(f"${{{name}}}", VARIABLES[name]).replace(f"${name}", VARIABLES[name])
    left = re.search(r"\$[A-Za-z_{]", query)
    assert left is None, f"an unknown variable or macro is left in {query!r}"
    return query


def event(body: dict[str, Any]) -> Any:
    return EVENT_ADAPTER.validate_json(orjson.dumps(body))


def simulated_points(now: float) -> list[str]:
    """A province's last half hour, as the daemon would have written it."""
    lines: list[str] = []
    for minute in range(30, 0, -1):
        at = now - minute * 60
        iso = datetime.fromtimestamp(at, UTC).isoformat()
        ns = int(at * 1e9)
        for area, aqi in (("22723", 140 + minute), ("22693", 60.0)):
            lines.append(
                render_event(
                    event(
                        {
                            "id": f"aqi-{area}-{minute}",
                            "source": "qtmt-aqi",
                            "type": "telemetry",
                            "time": iso,
                            "metric": "env.aqi",
                            "value": aqi,
                            "area": area,
                            "tags": {"station": f"QT-{area}"},
                        }
                    )
                )
            )
        for entity, state in (("BTN0123", "down" if minute < 10 else "up"), ("BTN0124", "up")):
            lines.append(
                render_event(
                    event(
                        {
                            "id": f"st-{entity}-{minute}",
                            "source": "viettel-ran",
                            "type": "status",
                            "time": iso,
                            "entity": entity,
                            "state": state,
                            "area": "22723",
                        }
                    )
                )
            )
        for area, level, share, target in (("60", "province", 87.5, 90.0), ("22723", "commune", 70.0, 60.0)):
            lines.append(render_kpi("kpi.dossier.online_share", area, level, share, target, ns))
            lines.append(render_kpi("kpi.dossier.overdue_open", area, level, float(minute % 4), None, ns))
    first, last = int((now - 20 * 60) * 1e9), int((now - 5 * 60) * 1e9)
    lines.append(render_alert("aqi-bad", "critical", "22723", "firing", "9a1b2c3d4e5f6a7b", 162.0, first))
    lines.append(render_alert("aqi-bad", "critical", "22723", "resolved", "9a1b2c3d4e5f6a7b", 110.0, last))
    lines.append(render_alert("source-silent", "warning", None, "firing", "0f0e0d0c0b0a0908", None, first))
    return lines


def post(url: str, body: bytes | None = None) -> None:
    request = urllib.request.Request(url, data=body if body is not None else b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 204), response.status


@pytest.fixture
def loaded(influxdb: Server, database: str) -> str:
    post(f"{influxdb.url}/query?" + urllib.parse.urlencode({"q": f'CREATE DATABASE "{database}"'}))
    lines = simulated_points(time.time())
    post(
        f"{influxdb.url}/write?" + urllib.parse.urlencode({"db": database, "precision": "ns"}),
        "\n".join(lines).encode(),
    )
    return database


def test_the_dashboard_uses_the_provisioned_data_source_and_covers_the_schema() -> None:
    [source] = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert source["type"] == "influxdb" and source["jsonData"]["dbName"] == "ioc"
    board = dashboard()
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(
            target["rawQuery"] and target["datasource"]["uid"] == source["uid"] for target in panel["targets"]
        )
    text = " ".join(query for _, query in queries())
    for measurement in ('FROM "kpi"', 'FROM "alert"', 'FROM "status"', "FROM /^$metric$/"):
        assert measurement in text, measurement
    assert {variable["name"] for variable in board["templating"]["list"]} == set(VARIABLES)


@pytest.mark.parametrize(("where", "query"), queries())
def test_every_dashboard_query_returns_rows(influxdb: Server, loaded: str, where: str, query: str) -> None:
    series = influx_query(influxdb.url, loaded, substitute(query))
    assert series, f"{where}: no series for {substitute(query)}"
    values = [
        value
        for one in series
        for row in cast(list[list[Any]], one["values"])
        for column, value in zip(cast(list[str], one["columns"]), row, strict=True)
        if column != "time" and value is not None
    ]
    assert values, f"{where}: only empty rows for {substitute(query)}"
