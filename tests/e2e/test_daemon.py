"""End to end: `ioc run` as a subprocess with a real Mosquitto and a real InfluxDB 1.x; the intake tests also on
two nodes on one PostgreSQL (tests/e2e/cluster_world.py's World)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.cluster_world import World, running_cluster, world_of
from tests.e2e.daemon import (
    OTHER_VENDOR_TOKEN,
    VENDOR_TOKEN,
    DaemonProcess,
    assert_counting_rule,
    make_daemon,
)
from tests.mqtt_tools import Collector, publish_all
from tests.postgres_server import Postgres
from tests.servers import Server, influx_count, influx_query
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def telemetry(index: int, *, source: str = "qtmt-aqi", run: str = "r", **extra: object) -> bytes:
    """One event; each index has its own microsecond, so every event is its own point."""
    time_ = (BASE + timedelta(microseconds=index)).isoformat()
    return orjson.dumps({"id": f"{run}-{index}", "source": source, "type": "telemetry", "time": time_,
                         "metric": "env.aqi", "value": index, "area": "22723", **extra})


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def cluster(tmp_path: Path, mosquitto: Server, influxdb: Server, postgres: Postgres) -> Iterator[World]:
    # For one test, gone after it: two idle nodes on the session's broker would take the heavy loads of
    # this module's later tests too.
    (tmp_path / "cluster").mkdir()
    yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, postgres)


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, database: str) -> World:
    return world_of(request, database)


def test_mqtt_and_http_events_land_in_influxdb_with_dead_letters(
    world: World, mosquitto: Server, influxdb: Server
) -> None:
    """On two nodes: both take the MQTT events, the HTTP ones are posted to the follower (which publishes them
    for the leader); both write every point, InfluxDB holds each once; a bad MQTT message is dead-lettered
    once (by the leader), the HTTP item refused by the follower once (by the follower)."""
    daemon, database = world.writer, world.database
    rejected_before = [node.metric_sum("ioc_events_rejected_total") for node in world.nodes]
    accepted_before = [node.metric_sum("ioc_events_accepted_total") for node in world.nodes]
    dead = Collector("127.0.0.1", mosquitto.port, "ioc/v1/deadletter/#")
    try:
        good = [("ioc/v1/events/qtmt-aqi", telemetry(i, run="mqtt", tags={"station": "Phan Thiết 1"}))
                for i in range(50)]
        bad = [
            ("ioc/v1/events/qtmt-aqi", b"{not json"),
            ("ioc/v1/events/qtmt-aqi", telemetry(1000, run="mqtt", value="12")),
            ("ioc/v1/events/viettel-ran", telemetry(1001, run="mqtt")),
            ("ioc/v1/events/qtmt-aqi", b"\xff\xfe"),
        ]
        publish_all("127.0.0.1", mosquitto.port, good[:25] + bad + good[25:])
        body = b"\n".join(telemetry(i, run="http") for i in range(100, 130)) + b"\n" + telemetry(
            131, run="http", time="2099-01-01T00:00:00Z")
        response = httpx.post(f"{daemon.api}/api/v1/events", content=body,
                              headers={"Authorization": f"Bearer {VENDOR_TOKEN}",
                                       "Content-Type": "application/x-ndjson"}, timeout=10)
        assert response.status_code == 202
        assert response.json()["accepted"] == 30
        assert response.json()["rejected"][0]["index"] == 30
        assert "in the future" in response.json()["rejected"][0]["error"]

        wait_until("the 80 good events in InfluxDB",
                   lambda: influx_count(influxdb.url, database, "env.aqi") == 80, 20)
        # Every node has refused the bad MQTT messages (the writer the HTTP item too): all its dead letters
        # are on their way; a second one of a message would come within the grace.
        refused = [4] * (len(world.nodes) - 1) + [5]
        wait_until("all the bad events refused", lambda: [
            node.metric_sum("ioc_events_rejected_total") - before
            for node, before in zip(world.nodes, rejected_before, strict=True)] == refused, 20)
        received = dead.wait_for(5)
        if world.clustered:
            time.sleep(1.0)
            received = list(dead.messages)
        assert len(received) == 5  # four bad MQTT messages and the HTTP event from the future
        # A dead letter goes to the source of the topic it came in on: its publisher may read it there.
        assert sorted(topic for topic, _ in received) == ["ioc/v1/deadletter/qtmt-aqi"] * 4 + [
            "ioc/v1/deadletter/viettel-ran"]
        letters = [orjson.loads(payload) for _, payload in received]
        reasons = [letter["reason"] for letter in letters]
        assert any(reason.startswith("payload: invalid JSON") for reason in reasons)
        assert "value: expected a number, got a string" in reasons
        assert any("does not match the topic's 'viettel-ran'" in reason for reason in reasons)
        assert any("in the future" in reason for reason in reasons)
        [binary] = [letter for letter in letters if letter.get("encoding") == "base64"]
        assert binary["payload"] == "//4="
    finally:
        dead.close()

    [series] = influx_query(influxdb.url, database,
                            'SELECT "value", "station" FROM "env.aqi" WHERE "station" = \'Phan Thiết 1\'')
    assert len(series["values"]) == 50
    assert series["values"][0][2] == "Phan Thiết 1"
    # Every node took every good event: none ignores one because another node saw it first.
    assert [node.metric_sum("ioc_events_accepted_total") - before for node, before in zip(
        world.nodes, accepted_before, strict=True)] == [80] * len(world.nodes)
    for node in world.nodes:
        assert_counting_rule(node)


# The tests below run on one daemon only: a vendor's rights are the node's own config (nothing shared);
# on two nodes the other node takes every event while one is stopped or killed, so nothing is left with the
# broker for the restarted node to take (a node's restart and SIGKILL in a cluster: tests/e2e/
# test_cluster.py, test_cluster_failover.py); the InfluxDB outage is a node's own spool; `ioc check` and a
# taken port involve no store.
def test_other_vendors_source_is_forbidden_over_http(daemon: DaemonProcess) -> None:
    response = httpx.post(f"{daemon.api}/api/v1/events", content=telemetry(1, run="x"),
                          headers={"Authorization": f"Bearer {OTHER_VENDOR_TOKEN}"}, timeout=10)
    assert response.status_code == 403
    assert "viettel" in response.json()["error"]
    assert httpx.post(f"{daemon.api}/api/v1/events", content=telemetry(1, run="x"), timeout=10
                      ).status_code == 401


def test_sigterm_flushes_and_exits_zero(daemon: DaemonProcess, mosquitto: Server, influxdb: Server,
                                        database: str) -> None:
    publish_all("127.0.0.1", mosquitto.port, [("ioc/v1/events/qtmt-aqi", telemetry(i, run="term"))
                                              for i in range(2000)])
    assert daemon.terminate() == 0, daemon.log()
    [stopped] = [orjson.loads(line) for line in daemon.log().splitlines() if '"daemon.stopped"' in line]
    # Everything accepted before the stop was flushed; the rest stayed unacknowledged at the broker.
    assert influx_count(influxdb.url, database, "env.aqi") == stopped["accepted"] > 0
    daemon.start()
    wait_until("the events left with the broker at the stop, delivered after the restart",
               lambda: influx_count(influxdb.url, database, "env.aqi") == 2000, 30)
    assert daemon.metric_sum("ioc_events_accepted_total") == 2000 - stopped["accepted"]


@pytest.mark.slow
def test_sigkill_while_qos1_flows_loses_nothing_and_duplicates_nothing(
    daemon: DaemonProcess, mosquitto: Server, influxdb: Server, database: str
) -> None:
    total = 20_000
    messages = [("ioc/v1/events/qtmt-aqi", telemetry(i, run="kill")) for i in range(total)]
    publisher = threading.Thread(target=publish_all, args=("127.0.0.1", mosquitto.port, messages),
                                 kwargs={"rate": 4000, "timeout": 120})
    publisher.start()
    wait_until("the intake to start", lambda: influx_count(influxdb.url, database, "env.aqi") > 2000, 30)
    daemon.kill()  # SIGKILL: no flush, no goodbye; unacknowledged messages stay with the broker
    killed_at = influx_count(influxdb.url, database, "env.aqi")
    assert killed_at < total, "the kill came too late to test anything"
    time.sleep(1.0)
    daemon.start()
    publisher.join(120)
    assert not publisher.is_alive()
    wait_until("the events published around the kill in InfluxDB",
               lambda: influx_count(influxdb.url, database, "env.aqi") >= total, 60)
    time.sleep(1.0)  # anything redelivered twice would show up as extra points by now
    assert influx_count(influxdb.url, database, "env.aqi") == total
    [series] = influx_query(influxdb.url, database, 'SELECT count("value") FROM "env.aqi" GROUP BY "source"')
    assert series["values"][0][1] == total
    assert_counting_rule(daemon)
    # Nothing lost: everything InfluxDB lacked at the kill was accepted after the restart. Counters are per
    # process; an event written just before the kill whose dedup key was not saved yet (keys are saved
    # each second, acks go out right after the write) comes again and rewrites the same point, so the new
    # process may accept up to ~1.5 s of traffic a second time -- never more, and never a second point.
    accepted = daemon.metric_sum("ioc_events_accepted_total", source="qtmt-aqi")
    duplicates = daemon.metric_sum("ioc_events_duplicate_total", source="qtmt-aqi")
    assert accepted >= total - killed_at
    assert accepted + duplicates <= total - killed_at + 4000 * 1.5


@pytest.mark.slow
def test_influxdb_outage_under_load_delays_but_loses_nothing(
    tmp_path: Path, mosquitto: Server, private_influxdb: Server, database: str, unique: str
) -> None:
    daemon = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=private_influxdb.url, database=database,
                         client_id=f"ioc-outage-{unique}")
    daemon.start()
    try:
        total = 15_000
        messages = [("ioc/v1/events/qtmt-aqi", telemetry(i, run="outage")) for i in range(total)]
        publisher = threading.Thread(target=publish_all, args=("127.0.0.1", mosquitto.port, messages),
                                     kwargs={"rate": 3000, "timeout": 120})
        publisher.start()
        wait_until("the intake to start",
                   lambda: influx_count(private_influxdb.url, database, "env.aqi") > 1000, 30)
        private_influxdb.stop()
        wait_until("a spooled point", lambda: daemon.metric_sum("ioc_sink_spool_points") > 0, 20)
        assert httpx.get(f"{daemon.api}/readyz", timeout=5).status_code == 200  # the spool takes points
        time.sleep(3)
        private_influxdb.restart()
        publisher.join(120)
        assert not publisher.is_alive()
        wait_until("the points spooled during the outage, replayed",
                   lambda: influx_count(private_influxdb.url, database, "env.aqi") >= total, 90)
        wait_until("the spool drained", lambda: daemon.metric_sum("ioc_sink_spool_points") == 0, 30)
        assert influx_count(private_influxdb.url, database, "env.aqi") == total
        assert_counting_rule(daemon)
        assert daemon.metric_sum("ioc_sink_points_total", outcome="written") >= total
    finally:
        daemon.stop()


def test_check_reports_bad_config_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "ioc.toml"
    config.write_text('[http]\nlisten = "127.0.0.1:8080"\nlisen = 1\n')
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"{config}:3: http.lisen: unknown key"
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "check", "--config",
                             str(ROOT / "deploy" / "ioc.example.toml")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "http.lisen: unknown key" in result.stderr


def test_run_on_a_taken_port_exits_1_with_a_one_line_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "ioc.toml"
        config.write_text(f'[http]\nlisten = "127.0.0.1:{port}"\n[mqtt]\nenabled = false\n[influx]\nurl = ""\n'
                          f'[store]\npath = "{tmp_path / "ioc.db"}"\n[log]\nformat = "json"\n')
        result = subprocess.run([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)],
                                capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"ioc: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_check_and_run_report_bad_rule_and_registry_files_with_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "bad-rules.yaml"
    rules.write_text("rules:\n  - id: aqi\n    kind: threshold\n    severity: critical\n"
                     "    match: {metric: env.aqi}\n    op: '=>'\n    threshold: 151\n    summary: x\n")
    areas = tmp_path / "areas.csv"
    areas.write_text("code,name,level,parent\n60,Bình Thuận,province,\n22723,Phường X,commune,999\n",
                     encoding="utf-8")
    config = tmp_path / "ioc.toml"
    config.write_text(f'[rules]\npaths = ["{rules}"]\n[areas]\npath = "{areas}"\n[mqtt]\nenabled = false\n'
                      f'[influx]\nurl = ""\n[store]\npath = "{tmp_path / "ioc.db"}"\n')
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{rules}:6: ") and "op" in line for line in problems), problems
    assert any(line.startswith(f"{areas}:3: ") and "999" in line for line in problems), problems
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and result.stderr.startswith(f"{areas}:3: ")
