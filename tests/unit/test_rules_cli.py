"""`ioc rules test FILE...`: exit codes and what a failure prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ioc.cli import app

ROOT = Path(__file__).resolve().parents[2]

RULES = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    for: 10m
"""

TEST = """\
rule_files: [r.yaml]
start: 2026-03-02T08:00:00+07:00
tests:
  - name: bad air fires after 10 minutes
    input:
      - {at: 0m, event: {id: a1, source: qtmt-aqi, type: telemetry, metric: env.aqi, value: 160, area: "22945"}}
    expect:
      - {at: 5m,  alerts: [{rule: aqi-bad, state: pending, labels: {area: "22945"}}]}
      - {at: 10m, alerts: [{rule: aqi-bad, state: firing, labels: {area: "22945"}}]}
"""


def write(tmp_path: Path, test: str, rules: str = RULES) -> Path:
    (tmp_path / "r.yaml").write_text(rules, encoding="utf-8")
    path = tmp_path / "t.yaml"
    path.write_text(test, encoding="utf-8")
    return path


def invoke(*paths: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["rules", "test", *map(str, paths)])
    return result.exit_code, result.stdout, result.stderr


def test_passing_tests_exit_0_with_one_summary_line(tmp_path: Path) -> None:
    code, out, err = invoke(write(tmp_path, TEST))
    assert (code, out, err) == (0, "ok: 1 tests, 2 checks in 1 files\n", "")


def test_a_failing_check_prints_the_test_the_offset_expected_and_got_and_exits_1(tmp_path: Path) -> None:
    path = write(tmp_path, TEST.replace("{at: 5m,  alerts: [{rule: aqi-bad, state: pending",
                                        "{at: 5m,  alerts: [{rule: aqi-bad, state: firing"))
    code, out, _ = invoke(path)
    assert code == 1
    assert out.splitlines() == [
        f"FAIL {path}:8: bad air fires after 10 minutes: at 5m",
        "  expected:",
        '    - {rule: aqi-bad, state: firing, labels: {area: "22945"}}',
        "  got:",
        '    - {rule: aqi-bad, state: pending, labels: {area: "22945"}}',
        "FAILED: 1 of 1 tests in 1 files",
    ]


def test_an_unexpected_alert_fails_too(tmp_path: Path) -> None:
    code, out, _ = invoke(write(tmp_path, TEST.replace("[{rule: aqi-bad, state: pending, labels: {area: \"22945\"}}]",
                                                       "[]")))
    assert code == 1
    assert "  expected: []" in out.splitlines()


def test_labels_must_match_exactly(tmp_path: Path) -> None:
    code, _, _ = invoke(write(tmp_path, TEST.replace('labels: {area: "22945"}}]}\n  ', 'labels: {}}]}\n  ')))
    assert code == 1


def test_a_bad_test_file_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    cases = {
        TEST.replace("start:", "begin:"): ":2: begin: unknown key",
        TEST.replace("state: pending", "state: sleeping"): ":8: tests.0.expect.0.alerts.0.state: Input should be",
        TEST.replace("at: 5m", "at: soon"): ":8: tests.0.expect.0.at: 'soon' is not a duration",
        TEST.replace("value: 160", "value: '160'"): ":6: bad air fires after 10 minutes: event: value: expected a number, got a string",
        TEST.replace("tests:\n", "tests: [\n"): ": YAML syntax error",
        TEST.replace("08:00:00+07:00", "08:00:00"): ":2: start: needs an offset",
    }
    for text, message in cases.items():
        code, out, err = invoke(write(tmp_path, text))
        assert code == 2, (text, out, err)
        assert err.startswith(str(tmp_path / "t.yaml")) and message in err, (message, err)


def test_a_bad_rule_file_exits_2_naming_the_rule_file(tmp_path: Path) -> None:
    code, _, err = invoke(write(tmp_path, TEST, RULES.replace('op: ">="', 'op: "=>"')))
    assert code == 2
    assert err.startswith(f"{tmp_path / 'r.yaml'}:7: rule 'aqi-bad': op: ")


def test_a_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, err = invoke(tmp_path / "nope.yaml")
    assert code == 2 and "cannot read" in err


def test_the_installed_command_runs_the_shipped_pack_tests() -> None:
    files = sorted(str(path) for path in (ROOT / "rules" / "tests").glob("*.yaml"))
    result = subprocess.run([sys.executable, "-m", "ioc.cli", "rules", "test", *files], capture_output=True,
                            text=True, timeout=120, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ") and result.stdout.count("\n") == 1
