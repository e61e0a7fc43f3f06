"""deploy/prometheus/ with the real promtool (Debian `prometheus`, CONTRACT §9): the scrape config and the
rule file pass `promtool check`, the rule tests pass `promtool test rules`, the daemon's live /metrics
passes `promtool check metrics`, and every metric the rules use is one the daemon exports (on one daemon, and
on each of two nodes on one PostgreSQL)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.cluster_world import World, running_cluster
from tests.e2e.daemon import DaemonProcess, make_daemon
from tests.servers import Server, find_binary, free_port

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "ioc-rules.yml"
NOT_YET = {"ioc_cluster_leader"}  # HA (CONTRACT §8): the rule is written ahead of the metric


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_binary("promtool", "prometheus"), *args], input=stdin, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_scrape_config_and_its_rule_file_pass_promtool() -> None:
    checked = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


def test_the_rules_pass_promtool_check_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout
    for needed in ("IocBrokerDisconnected", "IocSpoolGrowing", "IocDeadLettersRising", "IocRuleErrors",
                   "IocRulesReloadFailed", "IocNoLeader"):
        assert needed in alerts


def test_the_rule_tests_pass_and_test_every_alert() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yaml"))
    assert tests
    tested = promtool("test", "rules", *map(str, tests))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {case["alertname"] for path in tests for test in yaml.safe_load(path.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts == fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


def test_a_broken_rule_file_is_refused(tmp_path: Path) -> None:
    """The checks above can fail: a bad expression is refused by the same command."""
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.read_text().replace("ioc_mqtt_connected{job=\"ioc\"} == 0", "ioc_mqtt_connected{ == 0"))
    assert promtool("check", "rules", str(bad)).returncode != 0


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
           ) -> Iterator[DaemonProcess]:
    # An Alertmanager nobody listens on: its push metrics are exported (and count errors) all the same.
    extra = f'\n[[alerts.alertmanagers]]\nurl = "http://127.0.0.1:{free_port()}"\n'
    process = make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                          client_id=f"ioc-{unique}", extra=extra)
    process.start()
    yield process
    process.stop()


@pytest.fixture(params=["one", "two"])
def world(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Server, influxdb: Server,
          database: str) -> Iterator[World]:
    """The daemon, or two nodes on one PostgreSQL configured alike (their cluster metrics too)."""
    if request.param == "one":
        yield World((request.getfixturevalue("daemon"),), database)
        return
    (tmp_path / "cluster").mkdir()
    yield from running_cluster(tmp_path / "cluster", mosquitto, influxdb, request.getfixturevalue("postgres"),
                               extra=f'\n[[alerts.alertmanagers]]\nurl = "http://127.0.0.1:{free_port()}"\n')


def test_live_metrics_pass_promtool_and_cover_the_rules(world: World) -> None:
    for daemon in world.nodes:  # the leader's and the follower's
        text = httpx.get(f"{daemon.api}/metrics", timeout=10).text
        checked = promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
        exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
        used = {name for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
                for name in re.findall(r"\b(ioc_[a-z_]+)\b", rule["expr"])}
        assert used - NOT_YET <= exported, (
            f"rules use metrics the daemon does not export: {sorted(used - exported)}")
