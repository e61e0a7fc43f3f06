"""Rule files: what loads, and every problem reported as `file:line: message`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ioc.rules.loader import load_rules, parse_rules
from ioc.rules.testing import read_test_file

from ioc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    for: 10m
    keep_firing_for: 1h30m
    labels: {team: moi-truong}
    summary: "Chất lượng không khí xấu tại {{ area }}: VN_AQI {{ value }}"
"""


def problems_of(text: str, tmp_path: Path, name: str = "r.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rules([path])
    return caught.value.problems


def test_a_good_file_loads_with_its_values(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(GOOD, encoding="utf-8")
    rules = load_rules([tmp_path])
    rule = rules.get("aqi-bad")
    assert rule is not None and len(rules) == 1
    assert (rule.kind, rule.op, rule.threshold, rule.clear) == ("threshold", ">=", 151.0, 120.0)
    assert (rule.for_, rule.keep_firing_for) == (600.0, 5400.0)
    assert rule.summary == "Chất lượng không khí xấu tại {{ area }}: VN_AQI {{ value }}"
    assert rules.origins["aqi-bad"] == f"{tmp_path / 'r.yaml'}:2"


@pytest.mark.parametrize(("change", "line", "message"), [
    (("kind: threshold", "kind: thresold"), 3, "kind: unknown kind 'thresold'"),
    (('op: ">="', 'op: "=>"'), 7, "op: Input should be '>', '>='"),
    (("for: 10m", "for: 10 minutes"), 10, "for: '10 minutes' is not a duration"),
    (("severity: critical", "severity: urgent"), 4, "severity: Input should be 'info', 'warning' or 'critical'"),
    (("    clear: 120\n", "    clear: 120\n    colour: red\n"), 10, "colour: unknown key"),
    (("{{ value }}", "{{ valeu }}"), 13, "summary: unknown name 'valeu'"),
    (("metric: env.aqi}", "metric: {re: 'env.('}}"), 5, "match.metric.re: 'env.(' is not a valid regular"),
    (("threshold: 151", "threshold: {province: 5, village: 2}"), 8, "threshold.village"),
    (("clear: 120", "clear: 200"), 9, "clear: 200 must be at most the threshold 151"),
    (("group_by: [area]", "group_by: [area, area]"), 6, "group_by: a label is named twice"),
    (("labels: {team: moi-truong}", "labels: {area: x}"), 12, "labels: 'area' is also a group_by label"),
    (("    op: \">=\"\n", ""), 2, "op: missing"),
])
def test_each_problem_names_its_line(tmp_path: Path, change: tuple[str, str], line: int, message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    problems = problems_of(text, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'r.yaml'}:{line}: rule 'aqi-bad': "), problems
    assert message in problems[0]


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace('op: ">="', 'op: "~"').replace("for: 10m", "for: soon"))
    (tmp_path / "b.yaml").write_text("rules:\n  - id: x\n    kind: [\n")
    (tmp_path / "c.yaml").write_text(GOOD)  # the same id again
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path])
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{tmp_path / 'a.yaml'}:7", f"{tmp_path / 'a.yaml'}:10", f"{tmp_path / 'b.yaml'}:4",
        f"{tmp_path / 'c.yaml'}:2"]
    assert "YAML syntax error" in problems[2]
    assert "duplicate rule id (first defined at " in problems[3]


def test_a_duplicate_id_in_one_file_and_a_repeated_key(tmp_path: Path) -> None:
    two = GOOD + GOOD.split("rules:\n", 1)[1]
    assert any(":14: rule 'aqi-bad': duplicate rule id" in p for p in problems_of(two, tmp_path))
    repeated = GOOD.replace("    for: 10m\n", "    for: 10m\n    for: 5m\n")
    assert problems_of(repeated, tmp_path) == [f"{tmp_path / 'r.yaml'}:11: for: duplicate key (first at line 10)"]


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", ":1: expected a mapping `rules: [rule, ...]`"),
    ("rules: 3\n", ":1: rules: expected a list of rules"),
    ("rule: []\n", ":1: rule: unknown key (a rule file has only `rules`)"),
    ("rules:\n  - 3\n", ":2: rules[0]: expected a mapping (a rule)"),
    ("rules:\n  - {id: a, severity: info}\n", ":2: rule 'a': kind: missing (one of threshold, window, absence, status, share)"),
])
def test_file_shape_problems(tmp_path: Path, text: str, message: str) -> None:
    problems = problems_of(text, tmp_path)
    assert f"{tmp_path / 'r.yaml'}{message}" in problems, problems


def test_a_missing_path_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path / "nope"])
    assert caught.value.problems == [f"{tmp_path / 'nope'}: no such file or folder"]


@pytest.mark.parametrize(("rule", "message"), [
    ("kind: status\n    match: {type: telemetry}", "match.type: a status rule judges status events"),
    ("kind: threshold\n    op: '>'\n    threshold: target", "threshold: a threshold by level (or `target`) needs"),
    ("kind: threshold\n    group_by: [area]\n    op: '>'\n    threshold: target",
     "threshold: `target` needs one `match.metric`"),
    ("kind: threshold\n    op: '=='\n    threshold: 1\n    clear: 2", "clear: hysteresis needs an ordering op"),
    ("kind: absence\n    after: 0s", "after: Input should be greater than 0"),
    ("kind: window\n    aggregate: p99\n    window: 1h\n    op: '>'\n    threshold: 1", "aggregate: Input should be"),
    ("kind: absence\n    after: 5m\n    summary: '{{ area_name }}'", "area_name needs area in group_by"),
    ("kind: absence\n    after: 5m\n    summary: '{{ threshold }}'", "unknown name 'threshold'"),
    ("kind: absence\n    after: 5m\n    summary: 'a {{ b'", "summary: 'a {{ b': a placeholder is written"),
    ("kind: share\n    op: '>'\n    threshold: 5\n    states: [off]", "states.0: Input should be 'up'"),
    ("kind: status\n    match: {area: 22723}", "match.area: expected a string or a list"),
])
def test_kind_specific_problems(tmp_path: Path, rule: str, message: str) -> None:
    problems = problems_of(f"rules:\n  - id: r\n    severity: info\n    {rule}\n", tmp_path)
    assert any(message in problem for problem in problems), problems
    assert all(re.match(rf"{re.escape(str(tmp_path / 'r.yaml'))}:\d+: rule 'r': ", p) for p in problems)


def test_vietnamese_text_survives_untouched() -> None:
    rules = parse_rules(GOOD)
    assert rules.get("aqi-bad").summary.startswith("Chất lượng không khí xấu tại")  # type: ignore[union-attr]


def test_an_empty_file_holds_no_rules(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert len(load_rules([tmp_path])) == 0


def _readme_blocks() -> list[str]:
    text = (ROOT / "rules" / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)


def test_the_readme_has_examples_of_every_kind() -> None:
    kinds = {rule.kind for block in _readme_blocks() if block.startswith("rules:")
             for rule in parse_rules(block)}
    assert kinds == {"threshold", "window", "absence", "status", "share"}


@pytest.mark.parametrize("block", _readme_blocks())
def test_every_readme_yaml_example_parses(block: str, tmp_path: Path) -> None:
    if block.startswith("rule_files:"):
        path = tmp_path / "test.yaml"
        path.write_text(block, encoding="utf-8")
        spec, _ = read_test_file(path)
        assert spec.tests
    else:
        assert len(parse_rules(block, "README.md")) >= 1
