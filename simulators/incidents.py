"""Timed incidents of a scenario: what goes wrong, where, from which offset and for how long.

Each kind is a strict model discriminated by `kind`; the subsystem it concerns reads it (see
`ioc.simulators.subsystems`), except `silent`, which the player applies to any subsystem's events. Incidents
repeat every `duration` of the scenario for as long as the play lasts, so an open-ended play
(`--speed 1` without `--duration`) loops, as the demo does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, TypeAlias

from ioc.simulators.durations import Duration
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "INCIDENT_ADAPTER",
    "AqiSpike",
    "Backlog",
    "Incident",
    "Outage",
    "ServiceDown",
    "Silent",
    "occurrences",
]

# An event source as docs/events.md spells it (lower case, digits, `.`, `_`, `-`).
SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class _Incident(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    at: Duration  # offset from the scenario's start
    for_: Annotated[Duration, Field(alias="for", gt=0)]

    @property
    def end(self) -> float:
        return self.at + self.for_


class Outage(_Incident):
    """Cell sites of a commune go `down` (or `degraded`): a power cut, a cut fibre."""

    kind: Literal["outage"]
    area: str
    sources: list[Annotated[str, Field(pattern=SOURCE_PATTERN)]] | None = None  # default: every operator
    share: Annotated[float, Field(gt=0, le=100)] = 100.0  # % of each operator's sites in the commune
    state: Literal["down", "degraded"] = "down"


class Backlog(_Incident):
    """A surge of dossiers at an agency that stalls: `count` dossiers arrive over the first tenth of the
    incident, all due `due_in` after it starts, and are only finished (late) when it ends."""

    kind: Literal["backlog"]
    area: str
    count: Annotated[int, Field(ge=1, le=100_000)] = 30
    due_in: Annotated[Duration, Field(gt=0)] = 1800.0
    procedure: str | None = None  # a TTHC code of the dossiers subsystem; default its first procedure


class AqiSpike(_Incident):
    """The air at a commune's station goes bad: VN_AQI ramps to `peak`, holds, and ramps back."""

    kind: Literal["aqi-spike"]
    area: str
    peak: Annotated[float, Field(gt=0, le=500)] = 180.0
    ramp: Annotated[Duration, Field(ge=0)] = 120.0  # within the incident, at each end


class ServiceDown(_Incident):
    """A probed service stops answering (`down`) or answers slowly (`degraded`)."""

    kind: Literal["service-down"]
    entity: str
    state: Literal["down", "degraded"] = "down"


class Silent(_Incident):
    """A subsystem (or one of its sources) sends nothing for a while: a vendor's gateway is down."""

    kind: Literal["silent"]
    subsystem: str | None = None
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Silent:
        if (self.subsystem is None) == (self.source is None):
            raise ValueError("subsystem: give either `subsystem` or `source`")
        return self


Incident: TypeAlias = Annotated[Outage | Backlog | AqiSpike | ServiceDown | Silent, Field(discriminator="kind")]
INCIDENT_ADAPTER: TypeAdapter[Outage | Backlog | AqiSpike | ServiceDown | Silent] = TypeAdapter(Incident)
KINDS = ("outage", "backlog", "aqi-spike", "service-down", "silent")


def occurrences(incident: _Incident, cycle: float, end: float | None) -> Iterator[tuple[float, float]]:
    """(begin, end) offsets of each occurrence: the incident repeats every `cycle` (the scenario's
    duration) for as long as the play lasts (`end`, None when open-ended)."""
    k = 0
    while end is None or incident.at + k * cycle < end:
        yield incident.at + k * cycle, incident.end + k * cycle
        k += 1
