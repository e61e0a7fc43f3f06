"""Scenario files (simulators/README.md): a province, its subsystems, timed incidents and the alerts expected.

```yaml
description: One commune's air goes bad for 20 minutes.
province: {code: "68", areas: default}       # `areas`: a registry CSV (relative to this file) or default
duration: 40m                                 # one cycle; incidents repeat every cycle
seed: 1
subsystems:
  environment: {rate: 0.5, stations: ["22945", "22954"]}
incidents:
  - {kind: aqi-spike, area: "22945", at: 5m, for: 20m, peak: 185}
expect:                                       # exactly these alerts fire, by these offsets
  - {rule: aqi-bad, labels: {area: "22945"}, by: 20m, resolved_by: 30m}
allow:                                        # these may fire too (noise a realistic day makes)
  - {rule: aqi-hour-avg}
```

Loading is strict and checks everything before anything is sent: YAML syntax, unknown keys, unknown
subsystems, durations (`ioc.config.parse_duration`), incidents outside the registry or the province,
incidents of a subsystem the scenario does not play, expected alerts naming a rule that the rule packs
(`ioc.rules.loader.load_rules`) do not define or a label its group does not have. Every problem is
`file:line: message`, gathered in one `ScenarioError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from ioc.rules.loader import describe_error, load_rules
from ioc.rules.spec import RuleSet
from ioc.rules.yamlsrc import LineDict, LineList, line_of, read_yaml_file
from ioc.simulators.incidents import INCIDENT_ADAPTER, KINDS, AqiSpike, Backlog, Outage, ServiceDown, Silent
from ioc.simulators.subsystems import SUBSYSTEMS
from ioc.simulators.subsystems.base import Config
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from ioc.areas import AreaRegistry
from ioc.config import SHIPPED_RULE_PACKS, Duration, RulesSettings
from ioc.errors import ConfigError

__all__ = ["SCENARIO_DIR", "Allowed", "Expected", "Scenario", "ScenarioError", "load_scenario", "resolve",
           "shipped"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ConfigError):
    """A scenario cannot be played; `problems` are `file:line: message` lines."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Province(_Strict):
    code: str = "68"
    areas: str = "default"  # a registry CSV (relative to the scenario file), or the shipped sample


class Allowed(_Strict):
    """An alert that may fire without being an error (matched on `rule` and a subset of its labels)."""

    rule: str
    labels: dict[str, str] = {}

    def matches(self, rule: str, labels: dict[str, str]) -> bool:
        return rule == self.rule and all(labels.get(key) == value for key, value in self.labels.items())


class Expected(Allowed):
    """An alert that must fire by offset `by` (and resolve by `resolved_by`, when given). `count`
    demands that many distinct alerts (e.g. one `cell-down` per site); default at least one.
    `live_only`: only judged in a real-time play (`--speed 1`): absence rules count silence from the
    daemon's start-up, which a replay of the past comes before."""

    by: Duration
    resolved_by: Duration | None = None
    count: Annotated[int, Field(ge=1)] | None = None
    live_only: bool = False


class _Model(_Strict):
    name: str = ""
    description: str
    province: Province = Province()
    duration: Annotated[Duration, Field(gt=0)]
    seed: int = 1
    rules: list[str] = [SHIPPED_RULE_PACKS]  # rule files or folders (relative to the scenario file)
    subsystems: dict[str, Any]
    incidents: list[Any] = []
    expect: list[Expected] = []
    allow: list[Allowed] = []


@dataclass
class Scenario:
    """A loaded, checked scenario."""

    path: Path
    name: str
    description: str
    duration: float
    seed: int
    province: str
    areas: AreaRegistry
    rules: RuleSet
    subsystems: dict[str, Config]  # in file order
    incidents: list[Any]
    expect: list[Expected]
    allow: list[Allowed]
    lines: dict[tuple[str, int], int] = field(default_factory=dict)  # ("incidents", i) -> line

    def sources(self) -> list[str]:
        """Every event source the scenario publishes as."""
        return [source for name, config in self.subsystems.items()
                for source in SUBSYSTEMS[name].sources(config)]

    def rate(self) -> float:
        """The scenario's nominal total rate (events per simulated second)."""
        return sum(config.rate for config in self.subsystems.values())

    def check_on(self, day: date) -> None:
        """Raise ScenarioError if an incident's area is not in the province on `day` (the play's date)."""
        problems = []
        for index, incident in enumerate(self.incidents):
            area = getattr(incident, "area", None)
            if area is not None and not self.areas.is_within(area, self.province, day):
                problems.append(f"{self.path}:{self.lines[('incidents', index)]}: incidents[{index}].area: "
                                f"{area!r} is not an area of province {self.province!r} on {day}")
        if problems:
            raise ScenarioError(problems)


def shipped() -> list[tuple[str, str]]:
    """(name, description) of the scenarios under `simulators/scenarios/`."""
    found = []
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        try:
            description = load_scenario(path).description
        except ConfigError as error:
            description = f"(does not load: {error.problems[0]})"
        found.append((path.stem, description.strip().splitlines()[0] if description.strip() else ""))
    return found


def resolve(name_or_path: str) -> Path:
    """A shipped scenario's file by name, or the path given; ScenarioError when neither exists."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and candidate.is_file():
        return candidate
    names = ", ".join(p.stem for p in sorted(SCENARIO_DIR.glob("*.yaml")))
    raise ScenarioError([f"{name_or_path}: no such scenario file or shipped scenario (shipped: {names})"])


def _describe(error: ErrorDetails) -> str:
    loc = list(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = error.get("ctx", {}).get("tag")
        found = f"unknown kind {tag!r}" if tag else "missing"
        return f"kind: {found} (expected one of {', '.join(KINDS)})"
    if loc and loc[0] in KINDS:
        loc = loc[1:]
    if error["type"] == "string_type":
        where = ".".join(str(part) for part in loc)
        return f"{where}: expected a string (quote codes, e.g. \"22945\")"
    return describe_error({**error, "loc": tuple(loc)})


def _where(loc: list[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _errors(label: str, data: Any, error: ValidationError, prefix: list[str | int], default: int) -> list[str]:
    """A section's validation errors as `file:line: section.field: message` (lines found in `data`)."""
    problems = []
    for detail in error.errors(include_url=False):
        loc = [part for part in detail["loc"] if not (isinstance(part, str) and part in KINDS)]
        problems.append(f"{label}:{line_of(data, loc, default)}: {_where(prefix)}.{_describe(detail)}")
    return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file; raise ScenarioError with every problem as `file:line: message`."""
    path = Path(path)
    label = str(path)
    try:
        data = read_yaml_file(path)
    except ScenarioError:
        raise
    except ConfigError as error:
        raise ScenarioError(error.problems) from None
    if not isinstance(data, LineDict):
        raise ScenarioError([f"{label}:1: expected a mapping (description, duration, subsystems, ...)"])
    try:
        model = _Model.model_validate(data)
    except ValidationError as error:
        problems = []
        for detail in error.errors(include_url=False):
            line = line_of(data, detail["loc"], 1)
            problems.append(f"{label}:{line}: {_describe(detail)}")
        raise ScenarioError(problems) from None
    return _Checker(path, data, model).scenario()


class _Checker:
    """The checks across fields and files, collecting every problem."""

    def __init__(self, path: Path, data: LineDict, model: _Model) -> None:
        self.path, self.data, self.model = path, data, model
        self.label = str(path)
        self.problems: list[str] = []

    def at(self, loc: list[str | int]) -> int:
        return line_of(self.data, loc, 1)

    def problem(self, loc: list[str | int], message: str) -> None:
        self.problems.append(f"{self.label}:{self.at(loc)}: {_where(loc)}: {message}")

    def scenario(self) -> Scenario:
        model = self.model
        areas = self._areas()
        rules = self._rules()
        subsystems = self._subsystems()
        incidents = self._incidents(areas, subsystems)
        if rules is not None:
            self._expectations(rules)
        for index, expected in enumerate(model.expect):
            if expected.resolved_by is not None and expected.resolved_by < expected.by:
                self.problem(["expect", index, "resolved_by"], "must not be before `by`")
            if expected.by > model.duration:
                self.problem(["expect", index, "by"], "is after the scenario's duration")
        if self.problems or areas is None or rules is None:
            raise ScenarioError(self.problems)
        lines = {("incidents", index): self.at(["incidents", index]) for index in range(len(incidents))}
        return Scenario(self.path, model.name or self.path.stem, model.description, model.duration, model.seed,
                        model.province.code, areas, rules, subsystems, incidents, list(model.expect),
                        list(model.allow), lines)

    def _areas(self) -> AreaRegistry | None:
        province = self.model.province
        try:
            areas = AreaRegistry.default() if province.areas == "default" else \
                AreaRegistry.load(self.path.parent / province.areas)
        except ConfigError as error:
            self.problems += error.problems
            return None
        if not any(area.code == province.code for area in _all_versions(areas)):
            self.problem(["province", "code"], f"{province.code!r} is not in the area registry")
            return None
        return areas

    def _rules(self) -> RuleSet | None:
        paths = RulesSettings(paths=[p if p == SHIPPED_RULE_PACKS else str(self.path.parent / p)
                                     for p in self.model.rules]).resolved_paths()
        try:
            return load_rules(paths)
        except ConfigError as error:
            self.problems += error.problems
            return None

    def _subsystems(self) -> dict[str, Config]:
        configs: dict[str, Config] = {}
        raw = self.data["subsystems"]
        for name, section in self.model.subsystems.items():
            entry = SUBSYSTEMS.get(name)
            if entry is None:
                self.problem(["subsystems", name],
                             f"unknown subsystem (expected one of {', '.join(SUBSYSTEMS)})")
                continue
            try:
                configs[name] = entry.config.model_validate(section if section is not None else {})
            except ValidationError as error:
                self.problems += _errors(self.label, raw[name] if section is not None else raw,
                                         error, ["subsystems", name], self.at(["subsystems", name]))
        if not configs and not self.problems:
            self.problem(["subsystems"], "a scenario plays at least one subsystem")
        owners: dict[str, str] = {}
        for name, config in configs.items():
            for source in SUBSYSTEMS[name].sources(config):
                if source in owners:
                    self.problem(["subsystems", name], f"source {source!r} is also {owners[source]}'s")
                owners[source] = name
        return configs

    def _incidents(self, areas: AreaRegistry | None, subsystems: dict[str, Config]) -> list[Any]:
        incidents: list[Any] = []
        raw = self.data.get("incidents", LineList())
        for index, item in enumerate(self.model.incidents):
            try:
                incident = INCIDENT_ADAPTER.validate_python(item)
            except ValidationError as error:
                self.problems += _errors(self.label, raw[index], error, ["incidents", index],
                                         self.at(["incidents", index]))
                continue
            incidents.append(incident)
            self._incident(index, incident, areas, subsystems)
        return incidents

    def _incident(self, index: int, incident: Any, areas: AreaRegistry | None,
                  subsystems: dict[str, Config]) -> None:
        loc: list[str | int] = ["incidents", index]
        if incident.end > self.model.duration:
            self.problem([*loc, "for"], "the incident ends after the scenario's duration (at + for > duration)")
        if isinstance(incident, Silent):
            if incident.subsystem is not None and incident.subsystem not in subsystems:
                self.problem([*loc, "subsystem"], f"{incident.subsystem!r} is not a subsystem of this scenario "
                                                  f"({', '.join(subsystems) or 'none'})")
            if incident.source is not None and not any(
                    incident.source in SUBSYSTEMS[name].sources(config) for name, config in subsystems.items()):
                self.problem([*loc, "source"], f"{incident.source!r} is not a source of this scenario")
            return
        owner = next(name for name, entry in SUBSYSTEMS.items() if incident.kind in entry.incident_kinds)
        config: Any = subsystems.get(owner)
        if config is None:
            self.problem([*loc, "kind"], f"{incident.kind} incidents need the {owner} subsystem")
            return
        if isinstance(incident, ServiceDown):
            if incident.entity not in config.services:
                self.problem([*loc, "entity"], f"{incident.entity!r} is not one of probes.services")
            return
        if areas is not None:
            self._incident_area(loc, incident, areas)
        if isinstance(incident, Outage):
            unknown = [source for source in incident.sources or () if source not in config.operators]
            if unknown:
                self.problem([*loc, "sources"], f"{unknown[0]!r} is not one of cells.operators")
        elif isinstance(incident, Backlog):
            if config.agencies is not None and incident.area not in config.agencies:
                self.problem([*loc, "area"], f"{incident.area!r} is not one of dossiers.agencies")
            if incident.procedure is not None and incident.procedure not in {p.code for p in config.procedures}:
                self.problem([*loc, "procedure"], f"{incident.procedure!r} is not a procedure of dossiers")
        elif isinstance(incident, AqiSpike) and isinstance(config.stations, list) and \
                incident.area not in config.stations:
            self.problem([*loc, "area"], f"{incident.area!r} has no station (environment.stations)")

    def _incident_area(self, loc: list[str | int], incident: Any, areas: AreaRegistry) -> None:
        versions = [area for area in _all_versions(areas) if area.code == incident.area]
        province = self.model.province.code
        if not versions:
            self.problem([*loc, "area"], f"{incident.area!r} is not in the area registry")
        elif not any(_within_on(areas, incident.area, province, area.valid_from) for area in versions):
            self.problem([*loc, "area"], f"{incident.area!r} is not an area of province {province!r}")
        elif isinstance(incident, Outage) and not any(area.level == "commune" for area in versions):
            self.problem([*loc, "area"], f"{incident.area!r} is not a commune (cell sites are per commune)")

    def _expectations(self, rules: RuleSet) -> None:
        for key in ("expect", "allow"):
            for index, expected in enumerate(getattr(self.model, key)):
                rule = rules.get(expected.rule)
                if rule is None:
                    self.problem([key, index, "rule"], f"unknown rule {expected.rule!r} (not in the rule packs)")
                    continue
                known = set(rule.group_by) | set(rule.labels)
                for name in expected.labels:
                    if name not in known:
                        self.problem([key, index, "labels", name],
                                     f"rule {rule.id!r} has no label {name!r} (its labels: "
                                     f"{', '.join(sorted(known)) or 'none'})")


def _all_versions(areas: AreaRegistry) -> list[Any]:
    return areas.versions()


def _within_on(areas: AreaRegistry, code: str, province: str, day: date | None) -> bool:
    return areas.is_within(code, province, day or date(1900, 1, 1))
