"""`ioc run` pushing its alerts to a real Alertmanager (Debian `prometheus-alertmanager`, CONTRACT §9):
a firing alert is listed in Alertmanager's own `/api/v2/alerts` with its labels and routed to a receiver;
it ends there when the alert resolves; an Alertmanager that was away gets the alert once it is back; a
restarted daemon keeps Alertmanager hearing of what still fires. The first also on two nodes on one
PostgreSQL (tests/e2e/cluster_world.py's World): the leader pushes, the follower does not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.alertmanager_server import am_alerts, start_alertmanager
from tests.e2e.cluster_world import World, running_cluster
from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess, make_daemon
from tests.e2e.webhook import Receiver
from tests.servers import Server
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
    summary: "VN_AQI {{ value }} tại {{ area_name }}"
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    server = start_alertmanager(tmp_path / "alertmanager", webhook_url=receiver.url)
    yield server
    server.stop()


def daemon_for(tmp_path: Path, alertmanager: Server, mosquitto: Server, influxdb: Server, database: str,
               unique: str, *, resend: str = "2s") -> DaemonProcess:
    return make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                       client_id=f"ioc-{unique}", rules=RULES, extra=pushing_to(alertmanager, resend=resend))


def pushing_to(alertmanager: Server, *, resend: str = "2s") -> str:
    """The config that pushes alerts to `alertmanager`."""
    return f"""
[alerts]
external_url = "http://ioc.test:8080"

[[alerts.alertmanagers]]
url = "{alertmanager.url}"
resend_interval = "{resend}"
backoff_min = "100ms"
backoff_max = "1s"
labels = {{province = "60"}}
"""


NO_MQTT = {"IOC_MQTT__ENABLED": "false"}  # events come over HTTP; the push needs no broker


def post_aqi(daemon: DaemonProcess, event_id: str, value: float) -> None:
    event = {"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": datetime.now(UTC).isoformat(),
             "metric": "env.aqi", "value": value, "area": "22723"}
    response = httpx.post(f"{daemon.api}/api/v1/events", content=orjson.dumps(event), timeout=10,
                          headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == 202 and response.json()["accepted"] == 1, response.text


def daemon_alert(daemon: DaemonProcess, state: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{daemon.api}/api/v1/alerts", params={"state": state}, timeout=5)
    return [a for a in response.json() if a["rule"] == "aqi-bad"]


def ours(alertmanager: Server) -> list[dict[str, Any]]:
    return [a for a in am_alerts(alertmanager) if a["labels"].get("alertname") == "aqi-bad"]


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, tmp_path: Path, alertmanager: Server, mosquitto: Server,
          influxdb: Server, database: str, unique: str) -> Iterator[World]:
    """A daemon pushing to `alertmanager`, or two nodes on one PostgreSQL configured alike (the leader
    pushes)."""
    if request.param == "one":
        daemon = daemon_for(tmp_path, alertmanager, mosquitto, influxdb, database, unique)
        daemon.start(env=NO_MQTT)
        yield World((daemon,), database)
        daemon.stop()
        return
    (tmp_path / "cluster").mkdir()
    yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, request.getfixturevalue("postgres"),
                               rules=RULES, extra=pushing_to(alertmanager))


def test_alerts_reach_a_real_alertmanager_and_end_there(world: World, alertmanager: Server, receiver: Receiver,
                                                         unique: str) -> None:
    """On two nodes the events are posted to the follower; the leader pushes, the follower posts nothing."""
    daemon = world.reader
    post_aqi(world.writer, f"{unique}-1", 180)
    [alert] = wait_until("the alert firing", lambda: daemon_alert(daemon, "firing"), 30)
    [listed] = wait_until("the alert in Alertmanager", lambda: ours(alertmanager), 30)
    assert listed["labels"] == {"alertname": "aqi-bad", "severity": "critical", "province": "60",
                                **alert["labels"]}  # the group labels: `area`
    assert listed["annotations"]["summary"] == alert["summary"]
    assert listed["annotations"]["ioc_alert_id"] == alert["id"]
    assert listed["annotations"]["value"] == "180"
    assert listed["generatorURL"] == f"http://ioc.test:8080/api/v1/alerts/{alert['id']}"
    assert listed["status"]["state"] == "active"
    ends = datetime.fromisoformat(listed["endsAt"])
    assert ends > datetime.now(UTC)  # firing: valid for a few resend intervals ahead
    assert wait_until("the firing notification", lambda: "firing" in receiver.statuses(), 30)

    # Re-sent while firing: Alertmanager's endsAt moves ahead.
    wait_until("a re-send", lambda: [a for a in ours(alertmanager)
                                     if datetime.fromisoformat(a["endsAt"]) > ends], 30)

    post_aqi(world.writer, f"{unique}-2", 100)
    wait_until("the alert resolved", lambda: daemon_alert(daemon, "resolved"), 30)
    wait_until("the alert gone from Alertmanager's active alerts", lambda: not ours(alertmanager), 30)
    resolved = wait_until("the resolved notification", lambda: [
        n for n in list(receiver.notifications) if n["status"] == "resolved"], 30)
    assert resolved[0]["alerts"][0]["labels"]["area"] == alert["labels"]["area"]

    assert daemon.metric_sum("ioc_alertmanager_posts_total", outcome="ok") >= 3
    assert daemon.metric_sum("ioc_alertmanager_posts_total", outcome="error") == 0
    assert daemon.metric_sum("ioc_alertmanager_alerts_sent_total") >= 3
    assert daemon.metric_sum("ioc_alertmanager_last_success_timestamp_seconds") > 0
    assert daemon.metric_sum("ioc_alert_notifications_total", notifier=f"alertmanager:127.0.0.1:"
                             f"{alertmanager.port}", outcome="sent") >= 2
    for follower in world.nodes[1:]:  # only the leader notifies (CONTRACT §8)
        assert follower.metric_sum("ioc_alertmanager_posts_total") == 0
        assert follower.metric_sum("ioc_alertmanager_alerts_sent_total") == 0


# One daemon only: it counts on a stopped daemon leaving the alert to expire in Alertmanager; with two
# nodes the other one leads and goes on pushing.
def test_an_alertmanager_away_gets_the_alert_when_back_and_a_restart_keeps_it_active(
        tmp_path: Path, alertmanager: Server, mosquitto: Server, influxdb: Server, database: str,
        unique: str) -> None:
    daemon = daemon_for(tmp_path, alertmanager, mosquitto, influxdb, database, unique, resend="1s")
    daemon.start(env=NO_MQTT)
    try:
        alertmanager.stop()
        post_aqi(daemon, f"{unique}-1", 200)
        wait_until("the alert firing", lambda: daemon_alert(daemon, "firing"), 30)
        wait_until("failed posts",
                   lambda: daemon.metric_sum("ioc_alertmanager_posts_total", outcome="error") >= 2, 30)
        assert daemon.metric_sum("ioc_alertmanager_queue_length") == 1
        alertmanager.start()
        wait_until("the alert in Alertmanager once it is back", lambda: ours(alertmanager), 30)
        assert daemon.metric_sum("ioc_alertmanager_queue_length") == 0

        # A stopped daemon sends nothing: Alertmanager lets the alert end at its endsAt (4 x 1s ahead).
        assert daemon.terminate() == 0
        wait_until("the alert expired in Alertmanager", lambda: not ours(alertmanager), 30)
        # Restarted, nothing is re-notified, yet Alertmanager hears at once of what still fires.
        daemon.start(env=NO_MQTT)
        [listed] = wait_until("the alert active again", lambda: ours(alertmanager), 30)
        assert listed["annotations"]["ioc_alert_id"] == daemon_alert(daemon, "firing")[0]["id"]
    finally:
        daemon.stop()
