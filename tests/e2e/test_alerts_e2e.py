"""End to end through `ioc run`: events -> aggregators and rules -> alerts (pending, firing, acknowledged,
resolved) on the API, the SSE stream, MQTT and InfluxDB; an operator's ack; SIGHUP with a bad rule file keeps the old rules; a restart keeps alerts
and acks and notifies nobody again. On one daemon and on two nodes on one PostgreSQL (tests/e2e/
cluster_world.py's World)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.cluster_world import (
    LEASE,
    RULE_FILE,
    StreamTap,
    World,
    role,
    rule_file,
    running_cluster,
    world_of,
)
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.mqtt_tools import Collector, publish_all
from tests.postgres_server import Postgres
from tests.servers import Server, influx_query
from tests.waiting import wait_until

RULES = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    for: 1m
    summary: "Chất lượng không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
  - id: backlog-open
    kind: threshold
    severity: warning
    match: {source: ioc, metric: kpi.dossier.open}
    group_by: [area]
    op: ">="
    threshold: 1
"""


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat()


def aqi(event_id: str, value: float, offset: float = 0.0) -> tuple[str, bytes]:
    return ("ioc/v1/events/qtmt-aqi", orjson.dumps({
        "id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": now_iso(offset), "metric": "env.aqi",
        "value": value, "area": "22945"}))


def alerts(daemon: DaemonProcess, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{daemon.api}/api/v1/alerts", params=params, timeout=5)
    assert response.status_code == 200, response.text
    return list(response.json())


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}", rules=RULES)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server, influxdb: Server, postgres: Postgres
            ) -> Iterator[World]:
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), mosquitto, influxdb, postgres, rules=RULES)


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, database: str) -> World:
    return world_of(request, database)


def test_alert_lifecycle_through_the_daemon(world: World, mosquitto: Server, influxdb: Server,
                                            unique: str) -> None:
    """On two nodes: the events come over MQTT to both (the dossier posted to the follower), the operator
    acks on the follower; the alert, its ack and its resolution are on both nodes' API and stream, paged
    once by whoever leads; the leader is restarted (the follower takes over, the restarted node comes
    back as a follower) and nobody pages again."""
    daemon = world.reader
    taps = {node.http_port: StreamTap(node) for node in world.nodes}
    pages = Collector("127.0.0.1", mosquitto.port, "ioc/v1/alerts/aqi-bad")
    try:
        # Bad air 90 s ago: pending (`for: 1m`, by event time); still bad now: firing, the same alert.
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-0", 180, offset=-90)], qos=1)
        [pending] = wait_until("the alert pending", lambda: alerts(daemon, state="pending"), 15)
        for node in world.nodes:
            wait_until("the pending alert on each node", lambda node=node: [
                a["id"] for a in alerts(node, state="pending")] == [pending["id"]], 15)
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-1", 180)], qos=1)
        [alert] = wait_until("the alert firing", lambda: alerts(daemon, state="firing"), 15)
        assert alert["id"] == pending["id"]
        assert alert["rule"] == "aqi-bad" and alert["labels"] == {"area": "22945"}
        assert alert["severity"] == "critical" and alert["value"] == 180
        assert alert["summary"] == "Chất lượng không khí xấu tại Phường Phan Thiết: VN_AQI 180"
        assert alert["acknowledged"] is None and alert["silenced"] is False
        for node in world.nodes:  # one alert, one id, on every node
            wait_until("the alert on each node",
                       lambda node=node: [a["id"] for a in alerts(node, state="firing")] == [alert["id"]], 15)
        paged = pages.wait_for(2)
        assert [(topic, orjson.loads(body)["id"], orjson.loads(body)["change"]) for topic, body in paged] == [
            ("ioc/v1/alerts/aqi-bad", alert["id"], "pending"), ("ioc/v1/alerts/aqi-bad", alert["id"], "firing")]

        # The retained state, for a subscriber that comes late.
        late = Collector("127.0.0.1", mosquitto.port, f"ioc/v1/alerts/state/{alert['fingerprint']}")
        try:
            [(_, retained)] = late.wait_for(1)
            assert orjson.loads(retained)["state"] == "firing"
        finally:
            late.close()

        # A vendor may not acknowledge; an operator may, and is recorded.
        ack = f"{world.writer.api}/api/v1/alerts/{alert['id']}/ack"
        assert httpx.post(ack, headers={"Authorization": f"Bearer {VENDOR_TOKEN}"}).status_code == 403
        assert httpx.post(ack).status_code == 401
        acked = httpx.post(ack, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert acked.status_code == 200, acked.text
        assert acked.json()["acknowledged"]["by"] == "truc-ban-1"
        for node in world.nodes:  # on every node within a second (CONTRACT §8)
            wait_until("the ack on each node", lambda node=node: [a["id"] for a in alerts(
                node, state="acknowledged")] == [alert["id"]], timeout=5)
        for tap in taps.values():
            wait_until("pending, firing and acknowledged on each stream",
                       lambda tap=tap: tap.of(alert["id"]) == ["pending", "firing", "acknowledged"], 15)

        # A dossier makes KPIs for its commune and the province, served and fed back into the rules.
        dossier = {"id": f"{unique}-d1", "source": "qtmt-aqi", "type": "dossier", "time": now_iso(),
                   "area": "22945", "dossier_id": f"HS-{unique}", "procedure": "1.001612",
                   "status": "received", "received_at": now_iso(), "due_at": now_iso(3 * 86400),
                   "channel": "online", "level": "commune"}
        posted = httpx.post(f"{world.writer.api}/api/v1/events", content=orjson.dumps(dossier),
                            headers={"Authorization": f"Bearer {VENDOR_TOKEN}",
                                     "Content-Type": "application/json"})
        assert posted.status_code == 202 and posted.json()["accepted"] == 1, posted.text

        def open_kpi(area: str) -> float | None:
            kpis = httpx.get(f"{daemon.api}/api/v1/kpis", params={"area": area}, timeout=5).json()
            return next((k["value"] for k in kpis if k["kpi"] == "kpi.dossier.open"), None)

        assert wait_until("kpi.dossier.open of the commune", lambda: open_kpi("22945"), 15) == 1
        assert open_kpi("68") == 1  # rolled up to the province
        backlog = wait_until("the KPI rule firing", lambda: [a for a in alerts(daemon, state="firing")
                                                              if a["rule"] == "backlog-open"], 15)
        assert {a["labels"]["area"] for a in backlog} == {"22945", "68"}

        # InfluxDB holds the alert's state change and the KPI points.
        def rows(query: str) -> list[Any]:
            series = influx_query(influxdb.url, world.database, query)
            return list(series[0]["values"]) if series else []

        def changes() -> list[Any] | None:
            found = rows("SELECT state, fingerprint FROM alert WHERE rule = 'aqi-bad'")
            return found if len(found) >= 2 else None

        assert [row[1:] for row in wait_until("the alert points", changes, 15)] == [
            ["pending", alert["fingerprint"]], ["firing", alert["fingerprint"]]]
        assert wait_until("the KPI points", lambda: rows(
            "SELECT value FROM kpi WHERE kpi = 'kpi.dossier.open' AND area = '68'"), 15)[-1][1] == 1.0

        # SIGHUP with a broken rule file: refused, counted, old rules kept.
        rules = rule_file(daemon)
        rules.write_text(RULES + "  - id: broken\n    kind: nonsense\n", encoding="utf-8")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        wait_until("the reload failure",
                   lambda: daemon.metric_sum("ioc_rules_reload_failures_total") == 1, 15)
        assert "rules.reload_failed" in daemon.log() and f"{RULE_FILE}:" in daemon.log()
        assert [a["id"] for a in alerts(daemon, state="firing") if a["rule"] == "aqi-bad"] == [alert["id"]]
        rules.write_text(RULES, encoding="utf-8")

        # A restart keeps the alert and its ack, and pages nobody again. On two nodes it is the leader's: it
        # gives the lease up, the follower leads (and pages nobody either), the node comes back a follower.
        pages_before = len(pages.messages)
        taps.pop(daemon.http_port).close()
        assert daemon.terminate() == 0
        daemon.start()
        taps[daemon.http_port] = StreamTap(daemon)
        [kept] = [a for a in alerts(daemon, state="firing") if a["rule"] == "aqi-bad"]
        assert kept["id"] == alert["id"] and kept["acknowledged"]["by"] == "truc-ban-1"
        assert open_kpi("22945") == 1 and open_kpi("68") == 1  # the KPIs are served at once after it
        if world.clustered:
            wait_until("the follower leads", lambda: role(world.writer) == "leader", timeout=LEASE + 5)
        time.sleep(1.5)
        assert len(pages.messages) == pages_before

        # Clean air resolves it; the retained state is cleared.
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-2", 100)], qos=1)
        for node in world.nodes:
            [resolved] = wait_until("the alert resolved", lambda node=node: [
                a for a in alerts(node, state="resolved") if a["rule"] == "aqi-bad"], 15)
            assert resolved["id"] == alert["id"] and resolved["resolved_at"]
        assert orjson.loads(pages.wait_for(pages_before + 1)[-1][1])["state"] == "resolved"
        assert not [a for a in alerts(daemon) if a["rule"] == "aqi-bad"]
        for tap in taps.values():
            wait_until("the resolution on each stream",
                       lambda tap=tap: tap.of(alert["id"])[-1:] == ["resolved"], 15)
        cleared = Collector("127.0.0.1", mosquitto.port, f"ioc/v1/alerts/state/{alert['fingerprint']}")
        try:
            time.sleep(0.5)
            assert cleared.messages == []
        finally:
            cleared.close()
        assert len(pages.messages) == pages_before + 1  # the resolution paged once
        told = Counter((orjson.loads(body)["id"], orjson.loads(body)["change"]) for _, body in pages.messages)
        assert told == {(alert["id"], change): 1 for change in ("pending", "firing", "acknowledged", "resolved")}
        for node in world.nodes:
            assert_counting_rule(node)
    finally:
        pages.close()
        for tap in taps.values():
            tap.close()
