"""Failover under a simulated province's load (issue 11, CONTRACT §8): two `ioc run` nodes on one PostgreSQL
(this test's own: it stops it), the session's Mosquitto and InfluxDB, the shipped rule packs, a webhook.

Load, for the whole run: `ioc sim run smoke` over MQTT and `ioc sim run` of failover_http.yaml over HTTP to
a node (both replaying the last 40 minutes at 25x from the same start, so they move the event clock
together), and the chaos suite's generators alongside (tests/chaos/generator.py: QoS 1 over MQTT and
`durable: true` batches over HTTP to each node), which record every acknowledgement.

The nemesis (seeded: the seed is printed, and `IOC_FAILOVER_SEED=S` replays its choices): SIGKILL the leader
at random moments, three times, restarting the killed node each time (the other must lead within
`lease + 5 s`); stop PostgreSQL for longer than the lease (nobody leads meanwhile) and bring it back; stop
a node gracefully and start it again. Before the kills an operator acknowledges an alert and adds a
silence on the follower.

Then, with the load played out and drained:
- every acknowledged event is in InfluxDB exactly once: each generator's acknowledged events, and every
  event of both plays (a play exits 0 only when all its events were acknowledged), with no other point in
  their series;
- every alert each scenario expects fired (and resolved where it says), judged as `ioc sim verify` does;
- each alert change was told once: on `ioc/v1/alerts/#` and at the webhook every (alert, change) carries one
  notification id (an outbox resent under its old ids counts once), and every change recorded was told;
- the acknowledgement and the silence made before the kills hold on both nodes;
- the counting rule of CONTRACT §3 held on each node at every scrape (the chaos checker's), and at the end.

Known bugs xfail the test (with the reason), only when the run met them and nothing else failed: a change
sent while PostgreSQL was away and sent again under a new notification id; a resolution made while nobody
led, recorded by the next leader at the wall-clock time of its promotion (past the play's last event time)
instead of its event time.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from ioc.simulators.verify import fetch_alerts, judge

from tests.chaos.generator import HttpGenerator, MqttGenerator, Stream, base_time
from tests.e2e.cluster_world import LEASE, Node
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, assert_counting_rule, make_daemon
from tests.e2e.failover_checks import (
    AlertTap,
    Scrapes,
    SimPlay,
    Told,
    WebhookTap,
    once_each,
    poll,
    sim_points_missing,
    stream_points,
)
from tests.postgres_server import Postgres, start_postgres
from tests.servers import Server

pytestmark = pytest.mark.slow

SPEED = 25.0  # the plays' 40 minutes in 96 s
KILLS = 3
HTTP_SCENARIO = Path(__file__).with_name("failover_http.yaml")
HTTP_AREAS = {"22918", "22960"}  # failover_http.yaml's stations: its alerts; smoke's are the others
ACK_AREA = "22924"  # neither play's: the alert an operator acknowledges before the kills
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VENDOR = {"Authorization": f"Bearer {VENDOR_TOKEN}"}


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    server = start_postgres()  # this test's own: it stops it
    yield server
    server.close()


@pytest.fixture
def webhook() -> Iterator[WebhookTap]:
    tap = WebhookTap()
    yield tap
    tap.close()


def failover_nodes(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str,
                   postgres: Postgres, webhook: str) -> dict[str, Node]:
    """`ioc-a` and `ioc-b` (not started) with the shipped rule packs, on a fresh database of `postgres`."""
    url = postgres.new_database("failover")
    found: dict[str, Node] = {}
    for node in ("ioc-a", "ioc-b"):
        folder = tmp_path / node
        folder.mkdir()
        daemon = make_daemon(folder, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                             client_id=f"{node}-{unique}",
                             extra=f'\n[cluster]\nlease = "{LEASE:g}s"\n\n[[alerts.webhooks]]\nurl = "{webhook}"\n'
                                   'backoff_min = "100ms"\nbackoff_max = "1s"\n')
        found[node] = (daemon, {"IOC_STORE__URL": url, "IOC_CLUSTER__NODE": node})
    return found


def role_of(daemon: DaemonProcess) -> str | None:
    """The role `/readyz` names, or None while the node does not answer."""
    if daemon.pid is None:
        return None
    try:
        return str(httpx.get(f"{daemon.api}/readyz", timeout=3).json().get("role"))
    except (httpx.HTTPError, ValueError):
        return None


def the_leader(daemons: dict[str, DaemonProcess]) -> str | None:
    leading = [name for name, daemon in daemons.items() if role_of(daemon) == "leader"]
    return leading[0] if len(leading) == 1 else None


class Nemesis:
    """The faults, each at a random moment of `rng`, each logged (the log goes with a failure)."""

    def __init__(self, nodes: dict[str, Node], postgres: Postgres, rng: random.Random) -> None:
        self.daemons = {name: daemon for name, (daemon, _) in nodes.items()}
        self.env = {name: env for name, (_, env) in nodes.items()}
        self.postgres = postgres
        self.rng = rng
        self.began = time.monotonic()
        self.log: list[str] = []
        self.failovers: list[float] = []
        self.store_away: tuple[float, float] | None = None  # (stopped, back), monotonic

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.began:6.1f}s {what}")

    def pause(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    def kill_the_leader(self) -> None:
        dead = poll("one leader", lambda: the_leader(self.daemons), timeout=LEASE + 15)
        other = next(name for name in self.daemons if name != dead)
        self.daemons[dead].kill()
        killed = time.monotonic()
        self.note(f"SIGKILL {dead} (leader)")
        poll(f"{other} leading after the SIGKILL of {dead}", lambda: role_of(self.daemons[other]) == "leader",
             timeout=LEASE + 15, every=0.05)
        self.failovers.append(time.monotonic() - killed)
        self.note(f"{other} leads after {self.failovers[-1]:.2f}s")
        self.daemons[dead].start(env=self.env[dead])
        self.note(f"{dead} back")

    def postgres_away(self) -> None:
        self.postgres.stop()
        stopped = time.monotonic()
        self.note("PostgreSQL stopped")
        poll("nobody leading without PostgreSQL", lambda: all(
            role_of(daemon) == "follower" for daemon in self.daemons.values()), timeout=LEASE + 30)
        self.note("nobody leads")
        time.sleep(max(0.0, stopped + LEASE + self.rng.uniform(1.0, 3.0) - time.monotonic()))
        self.postgres.start()
        self.store_away = (stopped, time.monotonic())
        self.note("PostgreSQL back")
        now_leading = poll("a leader again", lambda: the_leader(self.daemons), timeout=LEASE + 30)
        self.note(f"{now_leading} leads")

    def graceful_restart(self) -> None:
        name = self.rng.choice(sorted(self.daemons))
        code = self.daemons[name].terminate()
        assert code == 0, f"{name} stopped with {code}"
        self.note(f"{name} stopped (SIGTERM)")
        self.daemons[name].start(env=self.env[name])
        self.note(f"{name} back")

    def run(self) -> None:
        self.note("the load starts")
        self.pause(6.0, 12.0)
        for _ in range(KILLS):
            self.kill_the_leader()
            self.pause(1.0, 6.0)
        self.postgres_away()
        self.pause(1.0, 4.0)
        self.graceful_restart()


def play_alerts(alerts: dict[str, dict[str, Any]], http_play: bool) -> dict[str, dict[str, Any]]:
    """The alerts of one play: failover_http.yaml's (its areas) or smoke's (the rest, but the acked one's)."""
    def area(alert: dict[str, Any]) -> str | None:
        return (alert.get("labels") or {}).get("area")

    if http_play:
        return {key: alert for key, alert in alerts.items() if area(alert) in HTTP_AREAS}
    return {key: alert for key, alert in alerts.items() if area(alert) not in HTTP_AREAS | {ACK_AREA}}


def firing_at(daemon: DaemonProcess, area: str) -> list[dict[str, Any]]:
    with httpx.Client(timeout=5) as client:
        return [alert for alert in fetch_alerts(daemon.api, client).values()
                if alert["labels"].get("area") == area and alert["state"] == "firing"]


def missing_changes(alerts: dict[str, dict[str, Any]], told: Told) -> list[str]:
    """The changes the store recorded (fired, resolved after firing) that were never told."""
    missing = []
    for alert in alerts.values():
        if alert.get("fired_at") and (alert["id"], "firing") not in told:
            missing.append(f"{alert['rule']} {alert['labels']} {alert['id']}: firing")
        if alert.get("fired_at") and alert.get("resolved_at") and (alert["id"], "resolved") not in told:
            missing.append(f"{alert['rule']} {alert['labels']} {alert['id']}: resolved")
    return missing


def test_failover_under_a_provinces_load(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str,
                                         unique: str, own_postgres: Postgres, webhook: WebhookTap) -> None:
    seed = int(os.environ.get("IOC_FAILOVER_SEED") or random.randrange(1 << 32))
    print(f"failover seed: IOC_FAILOVER_SEED={seed}")
    nodes = failover_nodes(tmp_path, mosquitto, influxdb, database, unique, own_postgres, webhook.url)
    nemesis = Nemesis(nodes, own_postgres, random.Random(seed))  # its log's times: from here
    daemons = nemesis.daemons
    tap = AlertTap(mosquitto.port)
    scrapes: Scrapes | None = None
    plays: list[SimPlay] = []
    try:
        for daemon, env in nodes.values():
            daemon.start(env=env)
        assert the_leader(daemons) == "ioc-a"
        a, b = daemons["ioc-a"], daemons["ioc-b"]
        scrapes = Scrapes(daemons)
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=40)  # both plays end by now

        # Before the kills: an alert an operator acknowledges, and a silence, both made on the follower.
        answer = httpx.post(f"{a.api}/api/v1/events", timeout=10, headers=VENDOR, content=orjson.dumps({
            "id": f"ack-{unique}", "source": "qtmt-aqi", "type": "telemetry", "time": start.isoformat(),
            "metric": "env.aqi", "value": 300.0, "area": ACK_AREA}))
        assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text
        acked = poll("an alert at the ack's area firing on both nodes", lambda: all(
            firing_at(daemon, ACK_AREA) for daemon in (a, b)) and firing_at(b, ACK_AREA)[0], timeout=30)
        made = httpx.post(f"{b.api}/api/v1/alerts/{acked['id']}/ack", timeout=5, headers=OPERATOR)
        assert made.status_code == 200, made.text
        silence = httpx.post(f"{b.api}/api/v1/silences", timeout=5, headers=OPERATOR, json={
            "matchers": [{"name": "area", "value": ACK_AREA}], "duration": "2h", "comment": "bảo trì trạm"})
        assert silence.status_code in (200, 201), silence.text
        silence_id = silence.json()["id"]
        nemesis.note("acknowledged and silenced")

        # The load: both plays and the generators that record their acknowledgements.
        plays = [SimPlay("smoke", mosquitto.url, start=start, speed=SPEED, log=tmp_path / "sim-mqtt.log"),
                 SimPlay(HTTP_SCENARIO, b.api, start=start, speed=SPEED, token=VENDOR_TOKEN,
                         log=tmp_path / "sim-http.log")]
        streams = {name: Stream(f"failover-{unique}-{name}", "qtmt-aqi", f"failover.{name}", base_time())
                   for name in ("mqtt", "http_a", "http_b")}
        mqtt_generator = MqttGenerator(mosquitto.port, streams["mqtt"], rate=20, window=100,
                                       client_id=f"failover-generator-{unique}")
        http_generators = [HttpGenerator(daemon.api, VENDOR_TOKEN, streams[f"http_{name[-1]}"], rate=10, batch=10)
                           for name, daemon in daemons.items()]

        nemesis.run()
        nemesis.note("the nemesis is done")

        for play in plays:
            code = play.wait(timeout=150)
            assert code == 0, f"{play.scenario.name}: exit {code}\n{play.output()[-2000:]}"
        mqtt_generator.stop(drain=15)
        for generator in http_generators:
            generator.stop(drain=15)
            assert not generator.stats.anomalies, generator.stats.anomalies[:5]
        now_leading = daemons[poll("one leader", lambda: the_leader(daemons), timeout=LEASE + 15)]
        nemesis.note("the load played out")

        # Every acknowledged event in InfluxDB exactly once, and no other point in its series.
        for stream in streams.values():
            def lost(stream: Stream = stream) -> list[int]:
                points, _ = stream_points(influxdb.url, database, stream)
                return sorted(index for index in stream.acked if points[index] != 1)

            sent, acknowledged = stream.counts()
            assert acknowledged > 0.5 * sent, (stream.name, sent, acknowledged)
            poll(f"every acknowledged event of {stream.name} in InfluxDB", lambda lost=lost: not lost(),
                 timeout=30, every=1.0, explain=lambda lost=lost: lost()[:20])
            assert stream_points(influxdb.url, database, stream)[1] == [], stream.name
        for play in plays:
            poll(f"every event of {play.scenario.name} in InfluxDB", lambda play=play: sim_points_missing(
                play, influxdb.url, database) == ([], []), timeout=30, every=1.0, explain=lambda play=play: [
                found[:10] for found in sim_points_missing(play, influxdb.url, database)])

        # Every expected alert fired (and resolved where expected), as `ioc sim verify` judges.
        def verdicts() -> dict[str, list[str]]:
            with httpx.Client(timeout=5) as client:
                listed = fetch_alerts(now_leading.api, client)
            return {play.scenario.name: problems for play, of_http in zip(plays, (False, True), strict=True)
                    if (problems := judge(play.scenario, play.plan, play_alerts(listed, of_http), set()).problems)}

        known: list[str] = []  # product bugs this run met, reported elsewhere: the test xfails at the end
        try:
            poll("the scenarios' alerts", lambda: not verdicts(), timeout=20, every=1.0, explain=verdicts)
        except AssertionError:
            # A resolution past the play's end is at a time no event had: the known bug below, when the
            # store was away; anything else fails.
            left = {name: problems for name, problems in verdicts().items()
                    if not all(_resolved_after_the_play(problem, plays[0].plan.duration) for problem in problems)}
            if left or nemesis.store_away is None:
                raise
            known.append(f"{verdicts()}: a resolution made while nobody led (PostgreSQL away) is recorded by the "
                         "next leader at the wall-clock time of its promotion, not at its event time "
                         "(ioc/alerts/leadership.py, record_engine_view: at=time.time())")
        with httpx.Client(timeout=5) as client:
            alerts = fetch_alerts(now_leading.api, client)
            poll("the same alerts on both nodes", lambda: all(
                {key: alert["state"] for key, alert in fetch_alerts(daemon.api, client).items()}
                == {key: alert["state"] for key, alert in fetch_alerts(now_leading.api, client).items()}
                for daemon in daemons.values()), timeout=15)

        # Each recorded change told, once (a notification id per change; resends of one id count once). The
        # silenced area's alerts are told on neither (docs/transports.md), but the acknowledged one fired before.
        unmuted = {key: alert for key, alert in alerts.items() if alert["labels"].get("area") != ACK_AREA}
        assert (acked["id"], "firing") in tap.told()
        poll("every recorded change told on the broker", lambda: not missing_changes(unmuted, tap.told()),
             timeout=20, explain=lambda: missing_changes(unmuted, tap.told()))
        poll("every recorded change at the webhook", lambda: not missing_changes(unmuted, webhook.told()),
             timeout=20, explain=lambda: missing_changes(unmuted, webhook.told()))
        nemesis.note("stored and told")
        # The acknowledgement and the silence made before the kills hold on both nodes.
        for daemon in daemons.values():
            alert = httpx.get(f"{daemon.api}/api/v1/alerts/{acked['id']}", timeout=5).json()
            assert (alert.get("acknowledged") or {}).get("by") == "truc-ban-1", alert
            listed = {item["id"]: item for item in httpx.get(f"{daemon.api}/api/v1/silences", timeout=5).json()}
            assert silence_id in listed and listed[silence_id]["status"] == "active", listed

        # The counting rule at every scrape of each node, and now that intake is idle.
        scrapes.stop()
        assert not scrapes.problems, scrapes.problems[:10]
        assert all(scrapes.count[name] > 10 for name in daemons), scrapes.count
        for daemon in daemons.values():
            assert_counting_rule(daemon)
        assert all(took <= LEASE + 5 for took in nemesis.failovers), nemesis.failovers

        time.sleep(1.0)  # a grace in which a repeat (under a new notification id) would still arrive
        repeats = {"broker": once_each(tap.told()), "webhook": once_each(webhook.told())}
        if any(repeats.values()) and nemesis.store_away and all(
                _within_the_outage(told, keys, nemesis.store_away)
                for told, keys in ((tap.told(), repeats["broker"]), (webhook.told(), repeats["webhook"]))):
            pytest.xfail(f"known gap (cl-store closes it): a change sent while PostgreSQL was away is sent again "
                         f"under a new notification id: {repeats}")
        assert repeats == {"broker": {}, "webhook": {}}
        if known:
            pytest.xfail("; ".join(known))
    except AssertionError as error:
        raise AssertionError(f"{error}\nIOC_FAILOVER_SEED={seed}; the nemesis:\n" + "\n".join(nemesis.log)
                             + "".join(f"\n--- {name} log tail:\n{daemon.log()[-3000:]}"
                                       for name, daemon in daemons.items())) from error
    finally:
        if scrapes is not None:
            scrapes.stop()
        for play in plays:
            play.stop()
        tap.close()
        for daemon, _ in nodes.values():
            daemon.stop()


def _resolved_after_the_play(problem: str, duration: float | None) -> bool:
    """Whether `problem` is a "resolved late" at an offset past the play's end: a time no event had."""
    if not problem.startswith("resolved late: "):
        return False
    shown = problem.split(" at ", 1)[1].split(",", 1)[0]  # e.g. 41m02s or 1h02m03s
    hours, _, rest = shown.rpartition("h")
    minutes, _, seconds = rest.rstrip("s").partition("m")
    offset = int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
    return offset > (duration or 0)


def _within_the_outage(told: Told, keys: dict[tuple[str, str], list[str]], away: tuple[float, float]) -> bool:
    """Whether every repeated change was first told between PostgreSQL's stop and a lease after its return."""
    stopped, back = away
    return all(stopped <= min(min(arrivals) for arrivals in told[key].values()) <= back + LEASE + 5
               for key in keys)
