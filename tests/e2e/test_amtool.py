"""The real `amtool` (Debian `prometheus-alertmanager`) against `ioc run` (CONTRACT §9): `alert query`,
`silence add|query|expire` with the operator's token through `--http.config.file`; a change without a
token is refused (amtool exits non-zero, the daemon answers 401). On one daemon and on two nodes on one
PostgreSQL (tests/e2e/cluster_world.py's World): amtool talks to the follower, the v1 API of the leader shows
its silences."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.cluster_world import World, running_cluster, world_of
from tests.e2e.daemon import OPERATOR_TOKEN, DaemonProcess, make_daemon
from tests.e2e.test_alertmanager_push import NO_MQTT, RULES, post_aqi
from tests.postgres_server import Postgres
from tests.servers import Server
from tests.waiting import wait_until


def amtool_binary() -> str:
    """amtool's path; outside CI a machine without it skips (CI installs it: .ci/run)."""
    found = shutil.which("amtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("amtool is missing in CI (Debian package prometheus-alertmanager; .ci/run installs it)")
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager; .ci/run installs it)")
    return found


class Amtool:
    """Runs amtool against the daemon, with a HOME of its own (no user's ~/.config/amtool)."""

    def __init__(self, daemon: DaemonProcess, home: Path) -> None:
        self.binary = amtool_binary()
        self.daemon = daemon
        self.home = home
        home.mkdir(exist_ok=True)
        self.operator = home / "operator.yml"
        self.operator.write_text(f"authorization:\n  type: Bearer\n  credentials: {OPERATOR_TOKEN}\n")
        self.wrong = home / "wrong.yml"
        self.wrong.write_text("authorization:\n  credentials: not-a-token\n")

    def __call__(self, *args: str, token: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, f"--alertmanager.url={self.daemon.api}"]
        if token is not None:
            argv.append(f"--http.config.file={token}")
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60,
                              env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "")}, check=False)

    def ok(self, *args: str, token: Path | None = None) -> str:
        done = self(*args, token=token)
        assert done.returncode == 0, f"amtool {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return orjson.loads(self.ok("-o", "json", *args))


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    amtool_binary()  # skip before starting anything
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}", rules=RULES)
    process.start(env=NO_MQTT)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server, influxdb: Server, postgres: Postgres
            ) -> Iterator[World]:
    amtool_binary()
    # With MQTT: an event posted to a node reaches the others through the broker.
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), mosquitto, influxdb, postgres, rules=RULES)


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, database: str) -> World:
    return world_of(request, database)


@pytest.fixture
def amtool(world: World, tmp_path: Path) -> Amtool:
    """amtool against the writer: on two nodes the follower serves the Alertmanager API and takes amtool's
    changes; the tests check them on the leader's API (`world.reader`)."""
    return Amtool(world.writer, tmp_path / "home")


def v1(daemon: DaemonProcess, path: str) -> Any:
    response = httpx.get(f"{daemon.api}{path}", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_amtool_queries_alerts_and_adds_queries_and_expires_silences(world: World, amtool: Amtool,
                                                                     unique: str) -> None:
    daemon = world.reader
    post_aqi(world.writer, f"{unique}-1", 180)
    [firing] = wait_until("aqi-bad firing", lambda: [a for a in v1(daemon, "/api/v1/alerts?state=firing")
                                                     if a["rule"] == "aqi-bad"], 30)
    area = firing["labels"]["area"]  # the registry's code for the event's area

    [listed] = wait_until("the alert on amtool's node", lambda: amtool.json("alert", "query"), 30)
    assert listed["labels"] == {"alertname": "aqi-bad", "area": area, "severity": "critical"}
    assert listed["status"]["state"] == "active" and listed["fingerprint"] == firing["fingerprint"]
    assert listed["annotations"]["summary"] == firing["summary"]
    assert "aqi-bad" in amtool.ok("alert", "query", f'area="{area}"')  # the table amtool prints
    assert amtool.json("alert", "query", "alertname=aqi-good") == []
    assert amtool.json("alert", "query", "aqi-bad")[0]["fingerprint"] == listed["fingerprint"]  # alertname=

    silence_id = amtool.ok("silence", "add", "alertname=aqi-bad", f'area=~"{area[:3]}.*"', "--comment=bảo trì trạm",
                           "--author=truc-ban-1", "--duration=2h", token=amtool.operator).strip()
    [made] = wait_until("the silence on the v1 API", lambda: [  # one set of silences, on every node
        s for s in v1(daemon, "/api/v1/silences") if s["id"] == silence_id], timeout=5)
    assert made["status"] == "active" and made["author"] == "truc-ban-1" and made["comment"] == "bảo trì trạm"
    assert made["matchers"] == [{"name": "alertname", "value": "aqi-bad", "op": "="},
                                {"name": "area", "value": f"{area[:3]}.*", "op": "=~"}]
    muted = wait_until("the alert silenced", lambda: [a for a in v1(daemon, "/api/v1/alerts")
                                                      if a["rule"] == "aqi-bad" and a["silenced"]], 30)
    assert muted[0]["silenced_by"] == [silence_id]
    assert amtool.json("alert", "query") == []  # amtool shows active alerts only by default
    [silenced] = amtool.json("alert", "query", "--silenced")
    assert silenced["status"]["state"] == "suppressed" and silenced["status"]["silencedBy"] == [silence_id]

    assert amtool.ok("silence", "query", "-q").split() == [silence_id]
    [queried] = amtool.json("silence", "query", "alertname=aqi-bad")
    assert queried["id"] == silence_id and queried["createdBy"] == "truc-ban-1"
    assert amtool.json("silence", "query", "alertname=other") == []

    amtool.ok("silence", "expire", silence_id, token=amtool.operator)
    wait_until("the silence expired on the v1 API", lambda: [
        s["status"] for s in v1(daemon, "/api/v1/silences") if s["id"] == silence_id] == ["expired"], timeout=5)
    assert amtool.ok("silence", "query", "-q").split() == []
    assert silence_id in amtool.ok("silence", "query", "--expired", "-q").split()
    wait_until("the alert unmuted", lambda: amtool.json("alert", "query"), 30)


def test_a_change_without_the_operators_token_is_refused(world: World, amtool: Amtool) -> None:
    daemon = world.writer  # the node amtool talks to: its refusals are counted there
    refusals = lambda route: daemon.metric_sum("ioc_http_requests_total", route=route, status="401")
    silences_before = v1(world.reader, "/api/v1/silences")
    refused_before = refusals("/api/v2/silences"), refusals("/api/v2/silence/{silence_id}")
    for token in (None, amtool.wrong):
        refused = amtool("silence", "add", "alertname=aqi-bad", "--comment=x", "--duration=1h", token=token)
        assert refused.returncode != 0, refused.stdout
    assert v1(world.reader, "/api/v1/silences") == silences_before
    assert refusals("/api/v2/silences") == refused_before[0] + 2

    silence_id = amtool.ok("silence", "add", "area=22723", "--comment=x", "--duration=1h",
                           token=amtool.operator).strip()
    refused = amtool("silence", "expire", silence_id)
    assert refused.returncode != 0
    assert refusals("/api/v2/silence/{silence_id}") == refused_before[1] + 1
    wait_until("the silence on the v1 API", lambda: [s["status"] for s in v1(world.reader, "/api/v1/silences")
                                                     if s["id"] == silence_id] == ["active"], timeout=5)
    assert [s["status"] for s in v1(daemon, "/api/v1/silences") if s["id"] == silence_id] == ["active"]
    amtool.ok("alert", "query")  # reads need no token ([http] public_read, the default)
    amtool.ok("silence", "expire", silence_id, token=amtool.operator)  # a world shared by the module
