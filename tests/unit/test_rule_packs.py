"""The shipped rule packs load, and every unit test under rules/tests passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from ioc.rules.loader import load_rules
from ioc.rules.testing import run_test_file

ROOT = Path(__file__).resolve().parents[2]
PACKS = ROOT / "rules" / "packs"
TESTS = sorted((ROOT / "rules" / "tests").glob("*.yaml"))


def test_every_pack_loads_and_has_tests() -> None:
    rules = load_rules([PACKS])
    assert len(rules) >= 10
    packs = {path.stem for path in PACKS.glob("*.yaml")}
    assert packs == {"dossiers", "coverage", "environment", "services"}
    assert packs <= {path.stem for path in TESTS}


def test_every_rule_of_the_packs_is_exercised_by_a_test() -> None:
    tested = set()
    for path in TESTS:
        text = path.read_text(encoding="utf-8")
        tested |= {rule.id for rule in load_rules([PACKS]) if f"rule: {rule.id}," in text}
    assert tested == {rule.id for rule in load_rules([PACKS])}


@pytest.mark.parametrize("path", TESTS, ids=[path.stem for path in TESTS])
def test_pack_tests_pass(path: Path) -> None:
    result = run_test_file(path)
    assert result.tests >= 1 and result.checks >= 1
    assert result.failures == [], result.failures
