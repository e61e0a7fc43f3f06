"""`ioc run` with its shared state in PostgreSQL (`[store] url`, CONTRACT §8).

- Events in, an alert fires, an operator acknowledges it and makes a silence; the rows are in PostgreSQL
  (the audit entry names the node), the node-local SQLite file holds none of them; after a restart the
  alert, its ack and the silence are still there and the rule state was saved. On one daemon and on two
  nodes (tests/e2e/cluster_world.py's World: the operator on the follower).
- PostgreSQL restarts while the daemon runs: intake and InfluxDB points carry on, an alert fired meanwhile
  is served and sent, an operator's ack is refused whole (`503`), and once PostgreSQL is back the daemon
  writes what it could not (the alert, the dossier tracker's rows) with no restart of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ioc.store.migrations import LATEST
from tests.e2e.cluster_world import RULES, World, running_cluster
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.mqtt_tools import Collector, publish_all
from tests.postgres_server import Postgres, start_postgres
from tests.servers import Server, influx_query
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VENDOR = {"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"}


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat()


def aqi(event_id: str, value: float, area: str = "22945") -> tuple[str, bytes]:
    return ("ioc/v1/events/qtmt-aqi", orjson.dumps({
        "id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": now_iso(), "metric": "env.aqi",
        "value": value, "area": area}))


def dossier(event_id: str, dossier_id: str) -> bytes:
    return orjson.dumps({"id": event_id, "source": "qtmt-aqi", "type": "dossier", "time": now_iso(),
                         "area": "22945", "dossier_id": dossier_id, "procedure": "1.001612",
                         "status": "received", "received_at": now_iso(), "due_at": now_iso(3 * 86400),
                         "channel": "online", "level": "commune"})


def alerts(daemon: DaemonProcess, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{daemon.api}/api/v1/alerts", params=params, timeout=5)
    assert response.status_code == 200, response.text
    return list(response.json())


def postgres_daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str,
                    url: str) -> tuple[DaemonProcess, dict[str, str]]:
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}", rules=RULES)
    return process, {"IOC_STORE__URL": url, "IOC_CLUSTER__NODE": "ioc-e2e"}


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Server, influxdb: Server, database: str,
          unique: str, postgres: Postgres) -> Iterator[World]:
    """A daemon on a fresh database of the session's PostgreSQL, or two nodes on one."""
    if request.param == "two":
        (tmp_path / "cluster").mkdir()
        yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, postgres, rules=RULES)
        return
    daemon, env = postgres_daemon(tmp_path, mosquitto, influxdb, database, unique, postgres.new_database("e2e"))
    daemon.env = env
    daemon.start()
    yield World((daemon,), database)
    daemon.stop()


def test_alerts_acks_and_silences_live_in_postgresql_across_a_restart(
        world: World, mosquitto: Server, unique: str, postgres: Postgres) -> None:
    """On two nodes the ack and the silence are made on the follower (the audit names it), no node's own
    SQLite file holds any of the shared state, and after both restart the follower serves them."""
    daemon = world.writer
    node = daemon.env["IOC_CLUSTER__NODE"]
    name = daemon.env["IOC_STORE__URL"].rsplit("/", 1)[1]
    sql = lambda query: postgres.psql(query, database=name)
    publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-1", 180)], qos=1)
    [alert] = wait_until("the alert firing", lambda: alerts(world.reader, state="firing"), 20)
    acked = httpx.post(f"{daemon.api}/api/v1/alerts/{alert['id']}/ack", headers=OPERATOR, timeout=5)
    assert acked.status_code == 200, acked.text
    made = httpx.post(f"{daemon.api}/api/v1/silences", headers=OPERATOR, timeout=5, json={
        "matchers": [{"name": "area", "value": "22918"}], "duration": "2h", "comment": "bảo trì trạm"})
    assert made.status_code in (200, 201), made.text
    silence_id = made.json()["id"]

    # In PostgreSQL at once (the operators' changes are committed before the answer).
    assert sql(f"SELECT acknowledged_by FROM alerts WHERE id = '{alert['id']}'") == "truc-ban-1"
    assert sql("SELECT action || ' ' || node FROM alert_audit ORDER BY seq").splitlines() == [
        f"alert.ack {node}", f"silence.create {node}"]
    assert sql("SELECT string_agg(node, ',' ORDER BY node) FROM cluster_nodes") == ",".join(
        sorted(each.env["IOC_CLUSTER__NODE"] for each in world.nodes))
    assert sql("SELECT max(version) FROM schema_migrations") == str(LATEST)
    for each in reversed(world.nodes):  # the leader last: it saves the state (only the leader does)
        assert each.terminate() == 0
    assert sql("SELECT string_agg(name, ',' ORDER BY name) FROM component_state") == "kpis.latest,rules.engine"
    for each in world.nodes:
        local = sqlite3.connect(each.config.parent / "var" / "ioc.db")
        tables = {row[0] for row in local.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        local.close()
        assert not tables & {"alerts", "silences", "alert_audit", "agg_dossiers", "component_state"}, tables

    for each in world.nodes:  # in order: the first leads again
        each.start()
    [kept] = alerts(daemon, state="firing")
    assert kept["id"] == alert["id"] and kept["acknowledged"]["by"] == "truc-ban-1"
    silences = httpx.get(f"{daemon.api}/api/v1/silences", timeout=5).json()
    assert [(s["id"], s["comment"], s["status"]) for s in silences] == [(silence_id, "bảo trì trạm", "active")]
    publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-2", 100)], qos=1)
    for each in world.nodes:
        [resolved] = wait_until("the alert resolved", lambda each=each: alerts(each, state="resolved"), 20)
        assert resolved["id"] == alert["id"]
    assert wait_until("the resolution stored", lambda: sql(
        f"SELECT state FROM alerts WHERE id = '{alert['id']}'") == "resolved", 20)
    for each in world.nodes:
        assert_counting_rule(each)


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL this test stops and starts."""
    server = start_postgres()
    yield server
    server.close()


def test_a_postgresql_restart_while_running_loses_nothing(
        tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str,
        own_postgres: Postgres) -> None:
    own_postgres.psql("CREATE DATABASE ioc")
    daemon, env = postgres_daemon(tmp_path, mosquitto, influxdb, database, unique, own_postgres.url("ioc"))
    sql = lambda query: own_postgres.psql(query, database="ioc")
    pages = Collector("127.0.0.1", mosquitto.port, "ioc/v1/alerts/aqi-bad")
    daemon.start(env=env)
    try:
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-1", 180)], qos=1)
        [first] = wait_until("the first alert", lambda: alerts(daemon, state="firing"), 20)
        pages.wait_for(1)

        own_postgres.stop()
        # Intake and points go on: an alert fires meanwhile, served and paged; a dossier is taken.
        publish_all("127.0.0.1", mosquitto.port, [aqi(f"{unique}-2", 190, area="22918")], qos=1)
        [second] = wait_until("the alert fired during the outage", lambda: [
            a for a in alerts(daemon, state="firing") if a["labels"]["area"] == "22918"], 20)
        assert orjson.loads(pages.wait_for(2)[-1][1])["id"] == second["id"]
        posted = httpx.post(f"{daemon.api}/api/v1/events", content=dossier(f"{unique}-d1", f"HS-{unique}"),
                            headers=VENDOR, timeout=10)
        assert posted.status_code == 202, posted.text
        assert wait_until("the points of the outage in InfluxDB", lambda: influx_query(
            influxdb.url, database, "SELECT value FROM \"env.aqi\" WHERE area = '22918'"), 20)
        assert httpx.get(f"{daemon.api}/healthz", timeout=5).status_code == 200
        refused = httpx.post(f"{daemon.api}/api/v1/alerts/{first['id']}/ack", headers=OPERATOR, timeout=10)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2", refused.text
        assert "nothing was changed" in refused.json()["error"]

        own_postgres.start()
        assert wait_until("the alert of the outage stored", lambda: sql(
            f"SELECT state FROM alerts WHERE id = '{second['id']}'") == "firing", timeout=30)
        assert wait_until("the dossier row stored", lambda: sql(
            f"SELECT count(*) FROM agg_dossiers WHERE dossier_id = 'HS-{unique}'") == "1", timeout=30)
        assert sql(f"SELECT state FROM alerts WHERE id = '{first['id']}'") == "firing"
        assert alerts(daemon, state="acknowledged") == []  # the refused ack left nothing behind
        assert "store.write_recovered" in daemon.log()
        assert_counting_rule(daemon)
        assert daemon.terminate() == 0
        assert len(pages.messages) == 2  # each change paged once
    finally:
        pages.close()
        daemon.stop()
