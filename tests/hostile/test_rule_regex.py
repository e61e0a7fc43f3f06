"""Rule files' `{re: PATTERN}` meet vendors' values on every event: RE2, so no pattern can freeze the
daemon (docs/operations.md), and what RE2 cannot do is refused at load with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ioc.rules.loader import load_rules

from ioc.errors import ConfigError
from tests.unit.rules_support import Recorder, tel

EVIL = """\
rules:
  - id: evil
    kind: threshold
    severity: warning
    match: {type: telemetry, metric: m, tags: {station: {re: "(a+)+$"}}}
    op: ">="
    threshold: 1
    summary: "x"
"""


def test_a_catastrophic_pattern_meets_a_long_value_in_linear_time() -> None:
    recorder = Recorder(EVIL)
    started = time.perf_counter()
    # Python's `re` needs ~2^40 steps here (hours); RE2 a few microseconds.
    recorder.feed(tel(0, 5, tags={"station": "a" * 40 + "!"}))
    recorder.feed(tel(1, 5, tags={"station": "a" * 40}))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert [rule for rule, *_ in recorder.changes()] == ["evil"]  # only the value that matches whole


@pytest.mark.parametrize(("pattern", "reason"), [
    (r"(a)\\1", "no backreferences"),
    (r"a(?=b)", "no lookarounds"),
    ("x" * 1025, "longer than 1024"),
])
def test_what_re2_cannot_do_is_refused_at_load(tmp_path: Path, pattern: str, reason: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(EVIL.replace('"(a+)+$"', f'"{pattern}"'), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rules([path])
    assert any(reason in problem and "r.yaml:" in problem for problem in caught.value.problems), \
        caught.value.problems
