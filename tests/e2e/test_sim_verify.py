"""`ioc sim verify` against a real daemon (`ioc run` with the shipped rule packs): the smoke scenario's
AQI spike fires `aqi-bad` (`for: 10m`) and `aqi-hour-avg`, played at 200x so it takes seconds; and a
scenario expecting an alert that cannot fire fails with a readable diff. The smoke play also on two nodes on
one PostgreSQL (tests/e2e/cluster_world.py's World)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from ioc.simulators.areas import AreaList
from ioc.simulators.cli import sim_app
from ioc.simulators.scenario import SCENARIO_DIR
from ioc.simulators.verify import fetch_alerts
from typer.testing import CliRunner

from tests.e2e.cluster_world import World, running_cluster
from tests.e2e.daemon import DaemonProcess, make_daemon
from tests.servers import Server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
            ) -> Iterator[Callable[[], DaemonProcess]]:
    """Fresh daemons: a replay is judged on its own event time only by a daemon that saw nothing newer."""
    started: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        where = tmp_path / f"daemon{len(started)}"
        where.mkdir()
        process = make_daemon(where, mqtt_url=mosquitto.url, influx_url=influxdb.url,
                              database=f"{database}_{len(started)}", client_id=f"ioc-{unique}-{len(started)}")
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, daemons: Callable[[], DaemonProcess], tmp_path: Path,
          mosquitto: Server, influxdb: Server, database: str) -> Iterator[World]:
    """A fresh daemon, or two fresh nodes on one PostgreSQL with the shipped rule packs."""
    if request.param == "one":
        yield World((daemons(),), f"{database}_0")  # the first of `daemons`
        return
    (tmp_path / "cluster").mkdir()
    yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, request.getfixturevalue("postgres"),
                               rules=None)


def test_verify_smoke_against_a_daemon(world: World, mosquitto: Server) -> None:
    """On two nodes `ioc sim verify` judges the follower's API; the leader serves the same alerts."""
    daemon = world.writer
    result = CliRunner().invoke(sim_app, ["verify", "smoke", "--to", mosquitto.url, "--api", daemon.api,
                                          "--speed", "200", "--wait", "30s"])
    assert result.exit_code == 0, (result.stdout, result.stderr, daemon.log()[-3000:])
    assert "ok: aqi-bad {area=22945} fired at 16m" in result.stdout
    assert "verify smoke: ok (2 alerts as expected)" in result.stdout
    with httpx.Client(timeout=10) as client:
        def seen(node: DaemonProcess) -> dict[str, tuple[Any, ...]]:
            return {key: (alert["state"], alert["fired_at"], alert["resolved_at"])
                    for key, alert in fetch_alerts(node.api, client).items()}

        wait_until("the same alerts on every node", lambda: all(
            seen(node) == seen(daemon) for node in world.nodes), timeout=10)


def test_verify_reports_what_differs(daemons: Callable[[], DaemonProcess], mosquitto: Server,
                                     tmp_path: Path) -> None:
    """One daemon only: this judges `ioc sim verify`'s report, not the daemon (the smoke play on two nodes
    is the test above)."""
    # The smoke play, expecting an alert that cannot fire and not allowing one that will.
    wrong = tmp_path / "wrong.yaml"
    text = (SCENARIO_DIR / "smoke.yaml").read_text(encoding="utf-8")
    text = text.replace("  - {rule: aqi-hour-avg, labels: {area: \"22945\"}, by: 15m}\n",
                        "  - {rule: service-down, labels: {entity: mot-cua}, by: 30m}\n")
    text = text.replace("by: 18m, resolved_by: 27m", "by: 12m, resolved_by: 27m")
    wrong.write_text(text, encoding="utf-8")
    daemon = daemons()
    result = CliRunner().invoke(sim_app, ["verify", str(wrong), "--to", mosquitto.url, "--api", daemon.api,
                                          "--speed", "200", "--wait", "5s"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "missing: service-down {entity=mot-cua} by 30m00s" in lines
    assert any(line.startswith("late: aqi-bad {area=22945} fired at 16m") for line in lines)
    assert any(line.startswith("unexpected: aqi-hour-avg {area=22945} fired at") for line in lines)
    assert lines[-1] == "verify wrong: FAILED (3 differences)"


def test_the_demo_scenario_with_areas_from_the_daemons_api(daemons: Callable[[], DaemonProcess],
                                                           mosquitto: Server, tmp_path: Path) -> None:
    """What the demo shows, judged: every expected alert of its 20-minute cycle (played at 40x), with the
    areas read from the daemon's GET /api/v1/provinces/68/areas as a vendor would; and `ioc sim areas`
    writes the same units as the shipped areas file."""
    daemon = daemons()
    written = tmp_path / "areas.csv"
    result = CliRunner().invoke(sim_app, ["areas", "--api", daemon.api, "--province", "68", "--out", str(written)])
    assert result.exit_code == 0, result.output
    day = date.today()
    assert AreaList.from_csv(written).areas(day) == AreaList.from_csv(SCENARIO_DIR / "lam-dong.csv").areas(day)

    scenario = tmp_path / "demo-api.yaml"
    text = (SCENARIO_DIR / "demo.yaml").read_text(encoding="utf-8")
    scenario.write_text(text.replace('province: {code: "68", former: "60"}',
                                     'province: {code: "68", areas: api, former: "60"}'), encoding="utf-8")
    result = CliRunner().invoke(sim_app, ["verify", str(scenario), "--to", mosquitto.url, "--api", daemon.api,
                                          "--speed", "40", "--wait", "60s"])
    assert result.exit_code == 0, (result.stdout, result.stderr, daemon.log()[-3000:])
    assert "ok: dossier-overdue-backlog {area=22954}" in result.stdout
    assert "ok: coverage-outage {area=22960, source=mobifone-ran}" in result.stdout
