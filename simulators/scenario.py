"""Scenario files (simulators/README.md): a province, its subsystems, timed incidents and the alerts expected.

```yaml
description: One commune's air goes bad for 20 minutes.
province: {code: "68", areas: lam-dong.csv}   # `areas`: a file written by `ioc sim areas`, or `api`
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
subsystems, durations, incidents outside the province's areas, incidents of a subsystem the scenario does
not play. Every problem is `file:line: message`, gathered in one `ScenarioError`.

The simulators are a vendor's worked example (issue 10): they know the daemon only by its public contract.
The areas come from the scenario's areas file or the daemon's `GET /api/v1/provinces/{code}/areas`; the
rules an expectation names are not read here: `ioc sim verify` judges the alerts the daemon's API lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from ioc.simulators.areas import AreaList, AreasError, today
from ioc.simulators.durations import Duration
from ioc.simulators.incidents import INCIDENT_ADAPTER, KINDS, AqiSpike, Backlog, Outage, ServiceDown, Silent
from ioc.simulators.subsystems import SUBSYSTEMS
from ioc.simulators.subsystems.base import Config
from ioc.simulators.yamlsrc import LineDict, LineList, line_of, read_yaml_file
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

__all__ = ["SCENARIO_DIR", "Allowed", "Expected", "Scenario", "ScenarioError", "load_scenario", "resolve",
           "shipped"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
AREAS_FROM_API = "api"


class ScenarioError(Exception):
    """A scenario cannot be played; `problems` are `file:line: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Province(_Strict):
    code: str = "68"
    # The areas file (`ioc sim areas` writes one): relative to the scenario, else one shipped beside the
    # shipped scenarios; or `api`: the daemon's GET /api/v1/provinces/{code}/areas (needs --api).
    areas: str = "lam-dong.csv"
    former: str | None = None  # play only the communes formed from this former province (e.g. "60")


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
    areas: AreaList
    former: str | None
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
        except ScenarioError as error:
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
    """A pydantic error as `field.path: message`, in the words of the scenario file."""
    loc = [part for part in error["loc"] if not (isinstance(part, str) and part in KINDS)]
    where = ".".join(str(part) for part in loc).replace("for_", "for")
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        tag = error.get("ctx", {}).get("tag")
        found = f"unknown kind {tag!r}" if tag else "missing"
        return f"kind: {found} (expected one of {', '.join(KINDS)})"
    if error["type"] == "string_type":
        return f"{where}: expected a string (quote codes, e.g. \"22945\")"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "missing":
        return f"{where}: missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _where(loc: list[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _errors(label: str, data: Any, error: ValidationError, prefix: list[str | int], default: int) -> list[str]:
    """A section's validation errors as `file:line: section.field: message` (lines found in `data`)."""
    problems = []
    for detail in error.errors(include_url=False):
        loc = [part for part in detail["loc"] if not (isinstance(part, str) and part in KINDS)]
        problems.append(f"{label}:{line_of(data, loc, default)}: {_where(prefix)}.{_describe(detail)}")
    return problems


def load_scenario(path: str | Path, *, api: str | None = None) -> Scenario:
    """Read and check a scenario file; raise ScenarioError with every problem as `file:line: message`.
    `api` (http://HOST:PORT): the daemon to read the areas from when the scenario says `areas: api`."""
    path = Path(path)
    label = str(path)
    data, problems = read_yaml_file(path)
    if problems:
        raise ScenarioError(problems)
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
    return _Checker(path, data, model, api).scenario()


class _Checker:
    """The checks across fields and files, collecting every problem."""

    def __init__(self, path: Path, data: LineDict, model: _Model, api: str | None) -> None:
        self.path, self.data, self.model, self.api = path, data, model, api
        self.label = str(path)
        self.problems: list[str] = []

    def at(self, loc: list[str | int]) -> int:
        return line_of(self.data, loc, 1)

    def problem(self, loc: list[str | int], message: str) -> None:
        self.problems.append(f"{self.label}:{self.at(loc)}: {_where(loc)}: {message}")

    def scenario(self) -> Scenario:
        model = self.model
        areas = self._areas()
        subsystems = self._subsystems()
        incidents = self._incidents(areas, subsystems)
        for index, expected in enumerate(model.expect):
            if expected.resolved_by is not None and expected.resolved_by < expected.by:
                self.problem(["expect", index, "resolved_by"], "must not be before `by`")
            if expected.by > model.duration:
                self.problem(["expect", index, "by"], "is after the scenario's duration")
        if self.problems or areas is None:
            raise ScenarioError(self.problems)
        lines = {("incidents", index): self.at(["incidents", index]) for index in range(len(incidents))}
        return Scenario(self.path, model.name or self.path.stem, model.description, model.duration, model.seed,
                        model.province.code, areas, model.province.former, subsystems, incidents,
                        list(model.expect), list(model.allow), lines)

    def _areas(self) -> AreaList | None:
        province = self.model.province
        try:
            if province.areas == AREAS_FROM_API:
                if self.api is None:
                    self.problem(["province", "areas"], "`api` reads the areas from the daemon: give --api")
                    return None
                areas = AreaList.from_api(self.api, province.code, today())
            else:
                beside = self.path.parent / province.areas
                areas = AreaList.from_csv(beside if beside.is_file() or "/" in province.areas
                                          else SCENARIO_DIR / province.areas)
        except AreasError as error:
            self.problems += error.problems
            return None
        if not areas.versions(province.code):
            self.problem(["province", "code"], f"{province.code!r} is not in the areas ({areas.origin})")
            return None
        return areas

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

    def _incidents(self, areas: AreaList | None, subsystems: dict[str, Config]) -> list[Any]:
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

    def _incident(self, index: int, incident: Any, areas: AreaList | None,
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

    def _incident_area(self, loc: list[str | int], incident: Any, areas: AreaList) -> None:
        versions = areas.versions(incident.area)
        province = self.model.province.code
        if not versions:
            self.problem([*loc, "area"], f"{incident.area!r} is not in the areas ({areas.origin})")
        elif not any(areas.is_within(incident.area, province, area.valid_from or date(1900, 1, 1))
                     for area in versions):
            self.problem([*loc, "area"], f"{incident.area!r} is not an area of province {province!r}")
        elif isinstance(incident, Outage) and not any(area.level == "commune" for area in versions):
            self.problem([*loc, "area"], f"{incident.area!r} is not a commune (cell sites are per commune)")
        elif (former := self.model.province.former) is not None and all(area.former_provinces for area in versions) \
                and not any(former in area.former_provinces for area in versions):
            self.problem([*loc, "area"], f"{incident.area!r} is not formed from the former province {former!r} "
                                         "(province.former): nothing is played there")
