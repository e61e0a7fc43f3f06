"""The chaos suite's short profile (docs/operations.md, issue 9): every fault kind of the nemesis once, in an
order drawn from a seed, against `ioc run` with a real Mosquitto and InfluxDB, under MQTT QoS 1 and HTTP
load; then every check of `tests/chaos/checker.py` must hold. About three minutes on a 2-core machine.

The seed is random unless `IOC_CHAOS_SEED` is set; a failure prints it with the table and the command that
replays the same schedule. The long profile: `python -m tests.chaos --minutes 30 [--seed N]`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.runner import SHORT, run


@pytest.mark.chaos
def test_no_fault_loses_an_acknowledged_event_or_breaks_a_rule(tmp_path: Path) -> None:
    seed = int(os.environ.get("IOC_CHAOS_SEED") or random.randrange(1 << 31))
    report = run(SHORT, seed, workdir=tmp_path)
    failures = report.failures()
    assert not failures, (
        f"chaos short profile, seed {seed} (replay: IOC_CHAOS_SEED={seed} python -m pytest -q "
        f"tests/chaos/test_chaos_short.py, or python -m tests.chaos --short --seed {seed}); files in "
        f"{report.workdir}\n{report.table()}\n" + "\n".join(f"- {failure}" for failure in failures))
    # The run was a test of something: every kind was injected and the streams flowed through it.
    total = report.total()
    assert total.injected == len(report.injections) >= 24
    assert total.acked > 10_000 and total.found_once + total.refused == total.acked
    assert report.scrapes > 60
