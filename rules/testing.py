"""Rule unit tests (docs/rules.md, `ioc rules test FILE...`), in the manner of `promtool test rules`.

A test file names rule files (relative to itself), optionally an area registry, a `start` time and
tests: timed input events and, at given offsets, exactly the alerts expected in each state. Each test
runs on a fresh engine and a simulated clock: inputs and checks are taken in order of their offset (at
the same offset, inputs first); the clock is advanced to each offset. An input's `time` is `start + at`
unless it has its own.

The aggregators run too (when `ioc.aggregators` is importable), so dossier and status inputs produce the
`kpi.*` telemetry of `source: ioc` that KPI rules judge, as in the daemon.

`Harness` is the same machinery as a small API, so other code (scenario checks, tests) can drive the
engine on a simulated clock and read the alerts back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import orjson
from ioc.rules.engine import RuleEngine
from ioc.rules.loader import describe_error, load_rules
from ioc.rules.spec import RuleSet
from ioc.rules.template import format_number
from ioc.rules.updates import AlertUpdate
from ioc.rules.yamlsrc import LineDict, line_of, read_yaml_file
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ioc.areas import AreaRegistry, default_targets_path, local_date
from ioc.config import Duration, parse_duration
from ioc.envelope import AnyEvent
from ioc.errors import ConfigError
from ioc.ingest.decode import Rejection, decode_object

__all__ = ["AlertKey", "Harness", "InvalidEvent", "TestFileError", "read_test_file", "run_files", "run_test_file"]

# An alert as a test sees it: (rule, state, labels as sorted pairs).
AlertKey = tuple[str, str, tuple[tuple[str, str], ...]]


class InvalidEvent(ValueError):
    """An input event the daemon would reject; the message is the daemon's reason (`value: ...`)."""


class TestFileError(Exception):
    """A test file (or what it names) cannot be used; `problems` are `file:line: message` lines."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _offset(at: float | str) -> float:
    return parse_duration(at) if isinstance(at, str) else float(at)


def _aggregator_factory() -> Callable[..., list[Any]] | None:
    try:
        from ioc.aggregators import build_aggregators
    except ImportError:
        return None
    return build_aggregators


class Harness:
    """A rule engine (and the KPI aggregators) on a simulated clock starting at `start`.

    `feed(event, at)` advances the clock to offset `at` and observes the event (a dict gets `time` =
    start + at unless it has one; it is validated like any incoming event); `advance(at)` moves the clock;
    `alerts()` answers the active alerts; `updates` holds every state change reported so far."""

    def __init__(self, rule_files: Sequence[str | Path] | RuleSet, areas: AreaRegistry | str | Path | None = None,
                 start: datetime | float = 0.0, *, targets: str | Path | None = None,
                 aggregators: bool = True) -> None:
        self.rules = rule_files if isinstance(rule_files, RuleSet) else load_rules(rule_files)
        if areas is None:
            self.areas = AreaRegistry.default()
        elif isinstance(areas, AreaRegistry):
            self.areas = areas
        else:
            targets_path = targets if targets is not None else default_targets_path()
            self.areas = AreaRegistry.load(areas, targets_path if Path(targets_path).exists() else None)
        self.start_time = start if isinstance(start, datetime) else datetime.fromtimestamp(start).astimezone()
        self.start = self.start_time.timestamp()
        self.updates: list[AlertUpdate] = []
        self.engine = RuleEngine(self.rules, areas=self.areas, on_change=self.updates.append,
                                 started_at=self.start)
        self.aggregators: list[Any] = []
        factory = _aggregator_factory() if aggregators else None
        if factory is not None:
            from ioc.config import KpisSettings

            self.aggregators = factory(self.areas, KpisSettings(), ":memory:", self._on_kpi)

    def _on_kpi(self, kpi: Any) -> None:
        self.engine.observe(kpi.as_event())

    def event(self, event: dict[str, Any] | AnyEvent, at: float | str = 0.0) -> AnyEvent:
        """`event` as a validated model, its `time` filled from `at` when it is a dict without one."""
        if not isinstance(event, dict):
            return event
        if "time" not in event:
            event = {**event, "time": (self.start_time + timedelta(seconds=_offset(at))).isoformat()}
        decoded = decode_object(orjson.dumps(event))
        if isinstance(decoded, Rejection):
            raise InvalidEvent(decoded.message)
        return self._placed(decoded.event)

    def _placed(self, event: AnyEvent) -> AnyEvent:
        """The event as the daemon's intake hands it on (CONTRACT §10): a former area code no longer in use
        on the event's date becomes the unit it went into (kept as the tag `area_former`); a divided
        commune is refused as the intake refuses it."""
        moved = self.areas.convert(event.area, local_date(event.time.timestamp())) if event.area else None
        if moved is None:
            return event
        if moved.divided:
            raise InvalidEvent(moved.reason())
        return event.model_copy(update={"area": moved.into[0][0],
                                        "tags": {**(event.tags or {}), "area_former": event.area}})

    def feed(self, event: dict[str, Any] | AnyEvent, at: float | str | None = None) -> None:
        """Advance to offset `at` (if given) and observe `event`, through the aggregators as in the daemon."""
        if at is not None:
            self.advance(at)
        model = self.event(event, at if at is not None else self._offset_now())
        for aggregator in self.aggregators:  # in the daemon's order: aggregators, then the rules
            aggregator.observe(model)
        self.engine.observe(model)

    def advance(self, at: float | str) -> None:
        """Move the simulated clock to offset `at` from start (seconds or a duration such as `10m`)."""
        now = self.start + _offset(at)
        for aggregator in self.aggregators:
            aggregator.advance(now)
        self.engine.advance(now)

    def alerts(self) -> list[AlertUpdate]:
        """The active (pending and firing) alerts, sorted by rule, state and labels."""
        return sorted(self.engine.active(), key=lambda a: (a.rule, a.state, sorted(a.labels.items())))

    def keys(self) -> set[AlertKey]:
        return {(a.rule, a.state, tuple(sorted(a.labels.items()))) for a in self.engine.active()}

    def close(self) -> None:
        for aggregator in self.aggregators:
            aggregator.close()

    def _offset_now(self) -> float:
        return max(self.engine.now - self.start, 0.0) if self.engine.now > float("-inf") else 0.0


# --- the test file format ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Input(_Strict):
    at: Duration
    event: dict[str, Any]


class _ExpectedAlert(_Strict):
    rule: str
    state: Literal["pending", "firing"]
    labels: dict[str, str] = {}


class _Expect(_Strict):
    at: Duration
    alerts: list[_ExpectedAlert]


class _Test(_Strict):
    name: Annotated[str, Field(min_length=1)]
    input: list[_Input] = []
    expect: Annotated[list[_Expect], Field(min_length=1)]


class _TestFile(_Strict):
    rule_files: Annotated[list[str], Field(min_length=1)]
    areas: str | None = None
    targets: str | None = None  # an extension: the KPI targets file that goes with `areas`
    start: datetime | str
    tests: Annotated[list[_Test], Field(min_length=1)]

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | str) -> datetime:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an RFC 3339 time") from None
        if value.tzinfo is None:
            raise ValueError("needs an offset, e.g. 2026-03-02T08:00:00+07:00")
        return value


@dataclass
class Failure:
    test: str
    at: float
    expected: list[AlertKey]
    got: list[AlertKey]
    line: int


@dataclass
class FileResult:
    path: Path
    tests: int = 0
    checks: int = 0
    failures: list[Failure] = field(default_factory=list)


def read_test_file(path: Path) -> tuple[_TestFile, Any]:
    """A test file validated (and its raw data, for line numbers); TestFileError naming file:line."""
    label = str(path)
    try:
        data = read_yaml_file(path)
    except ConfigError as error:
        raise TestFileError(error.problems) from None
    if not isinstance(data, LineDict):
        raise TestFileError([f"{label}:1: expected a mapping with rule_files, start and tests"])
    try:
        return _TestFile.model_validate(data), data
    except ValidationError as error:
        problems = [f"{label}:{line_of(data, item['loc'])}: {describe_error(item)}"
                    for item in error.errors(include_url=False)]
        raise TestFileError(problems) from None


def _harness(path: Path, spec: _TestFile) -> Harness:
    folder = path.parent
    try:
        areas = str(folder / spec.areas) if spec.areas else None
        targets = str(folder / spec.targets) if spec.targets else None
        start = spec.start if isinstance(spec.start, datetime) else datetime.fromisoformat(spec.start)
        return Harness([folder / name for name in spec.rule_files], areas, start, targets=targets)
    except ConfigError as error:
        raise TestFileError(error.problems) from None  # they name the rule or registry file and line


def run_test_file(path: str | Path) -> FileResult:
    """Run every test of one file; raise TestFileError when the file (or a rule file) is unusable."""
    path = Path(path)
    spec, data = read_test_file(path)
    result = FileResult(path)
    for test_index, test in enumerate(spec.tests):
        harness = _harness(path, spec)
        steps: list[tuple[float, int, int, Any]] = [(item.at, 0, i, item) for i, item in enumerate(test.input)]
        steps += [(item.at, 1, i, item) for i, item in enumerate(test.expect)]
        result.tests += 1
        try:
            for at, is_check, index, item in sorted(steps, key=lambda step: step[:3]):
                if not is_check:
                    try:
                        event = harness.event(item.event, at)
                    except InvalidEvent as error:
                        line = line_of(data, ["tests", test_index, "input", index, "event"])
                        raise TestFileError([f"{path}:{line}: {test.name}: event: {error}"]) from None
                    harness.feed(event, at)
                    continue
                harness.advance(at)
                result.checks += 1
                expected = sorted({(a.rule, a.state, tuple(sorted(a.labels.items()))) for a in item.alerts})
                got = sorted(harness.keys())
                if expected != got:
                    line = line_of(data, ["tests", test_index, "expect", index])
                    result.failures.append(Failure(test.name, at, expected, got, line))
        finally:
            harness.close()
    return result


def _offset_text(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{format_number(seconds / 3600)}h"
    if seconds and seconds % 60 == 0:
        return f"{format_number(seconds / 60)}m"
    return f"{format_number(seconds)}s"


def _alert_text(key: AlertKey) -> str:
    labels = ", ".join(f"{name}: {orjson.dumps(value).decode()}" for name, value in key[2])
    return f"{{rule: {key[0]}, state: {key[1]}, labels: {{{labels}}}}}"


def _report_failure(path: Path, failure: Failure, out: IO[str]) -> None:
    out.write(f"FAIL {path}:{failure.line}: {failure.test}: at {_offset_text(failure.at)}\n")
    for title, keys in (("expected", failure.expected), ("got", failure.got)):
        out.write(f"  {title}:{' []' if not keys else ''}\n")
        for key in keys:
            out.write(f"    - {_alert_text(key)}\n")


def run_files(paths: Sequence[str | Path], out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run test files as `ioc rules test` does: 0 all passed, 1 a test failed, 2 a file is unusable."""
    out = out or sys.stdout
    err = err or sys.stderr
    tests = checks = failed = 0
    unusable = False
    for raw in paths:
        path = Path(raw)
        try:
            result = run_test_file(path)
        except TestFileError as error:
            for problem in error.problems:
                err.write(problem + "\n")
            unusable = True
            continue
        tests += result.tests
        checks += result.checks
        for failure in result.failures:
            _report_failure(path, failure, out)
        failed += len({failure.test for failure in result.failures})
    if unusable:
        return 2
    if failed:
        out.write(f"FAILED: {failed} of {tests} tests in {len(paths)} files\n")
        return 1
    out.write(f"ok: {tests} tests, {checks} checks in {len(paths)} files\n")
    return 0
