"""The chaos suite's short profiles (docs/operations.md, issues 9 and 11), each against real servers under
MQTT QoS 1 and HTTP load; every check of `tests/chaos/checker.py` must hold afterwards.

- One node: every fault kind of the nemesis once, in an order drawn from a seed, against `ioc run` with a
  real Mosquitto and InfluxDB behind fault proxies. About three minutes on a 2-core machine.
- Two nodes on one PostgreSQL (`cluster.py`): the leader SIGKILLed twice, PostgreSQL stopped and
  restarted, a node restarted; HTTP to either node. Under three minutes on a 2-core machine.

The seed is random unless `IOC_CHAOS_SEED` is set; a failure prints it with the table and the command that
replays the same schedule. The long profile: `python -m tests.chaos --minutes 30 [--seed N] [--two-nodes]`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.runner import SHORT, TWO_NODES, Profile, Report, run


def play(profile: Profile, tmp_path: Path, replay: str) -> Report:
    seed = int(os.environ.get("IOC_CHAOS_SEED") or random.randrange(1 << 31))
    report = run(profile, seed, workdir=tmp_path)
    failures = report.failures()
    assert not failures, (
        f"chaos {profile.name} profile, seed {seed} (replay: IOC_CHAOS_SEED={seed} python -m pytest -q "
        f"tests/chaos/test_chaos_short.py, or python -m tests.chaos {replay} --seed {seed}); files in "
        f"{report.workdir}\n{report.table()}\n" + "\n".join(f"- {failure}" for failure in failures))
    return report


@pytest.mark.chaos
def test_no_fault_loses_an_acknowledged_event_or_breaks_a_rule(tmp_path: Path) -> None:
    report = play(SHORT, tmp_path, "--short")
    # The run was a test of something: every kind was injected and the streams flowed through it.
    total = report.total()
    assert total.injected == len(report.injections) >= 24
    assert total.acked > 10_000 and total.found_once + total.refused == total.acked
    assert report.scrapes > 60


@pytest.mark.chaos
def test_two_nodes_lose_nothing_through_failovers_and_a_store_outage(tmp_path: Path) -> None:
    report = play(TWO_NODES, tmp_path, "--short --two-nodes")
    total = report.total()
    kinds = sorted(injection.kind for injection in report.injections)
    assert kinds == ["kill-leader", "kill-leader", "node-restart", "postgres-restart"]
    assert all("led after" in injection.detail for injection in report.injections
               if injection.kind == "kill-leader")
    assert total.acked > 5_000 and total.found_once == total.acked
    assert report.scrapes >= report.seconds / 2  # both nodes', about one a second each while up
    assert report.alert_changes >= 10  # the alarm fired and resolved through the faults
