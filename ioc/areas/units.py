"""What the registry holds: areas (a unit over a period) and KPI targets by level, and their periods."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import TypeAlias

from ioc.envelope import AreaLevel

__all__ = ["LEVELS", "RANK", "Area", "Span", "Target", "covered", "describe_span", "overlap", "span"]

LEVELS: tuple[AreaLevel, ...] = ("province", "district", "commune")
RANK: dict[str, int] = {level: rank for rank, level in enumerate(LEVELS)}


@dataclass(frozen=True, slots=True)
class Area:
    """One row of the registry: `code` is the national code (GSO), `parent` the code of the unit above
    (None at the top); valid over `[valid_from, valid_to)`, None meaning open on that side. `lat`/`lon`:
    the unit's centre (WGS 84) where the data has it."""

    code: str
    name: str
    level: AreaLevel
    parent: str | None
    valid_from: date | None
    valid_to: date | None  # exclusive
    lat: float | None = None
    lon: float | None = None

    def valid_at(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_to is None or day < self.valid_to)


@dataclass(frozen=True, slots=True)
class Target:
    kpi: str
    level: AreaLevel
    target: float
    valid_from: date | None
    valid_to: date | None


# An interval as ordinals: [start, end), with -inf/+inf for an open side.
Span: TypeAlias = tuple[float, float]


def span(valid_from: date | None, valid_to: date | None) -> Span:
    return (valid_from.toordinal() if valid_from else -math.inf,
            valid_to.toordinal() if valid_to else math.inf)


def overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def covered(whole: Span, by: Iterable[Span]) -> bool:
    """Whether the union of `by` covers `whole` entirely."""
    start = whole[0]
    for piece in sorted(by):
        if piece[0] > start:
            break
        start = max(start, piece[1])
        if start >= whole[1]:
            return True
    return start >= whole[1]


def describe_span(period: Span) -> str:
    start = "the start" if period[0] == -math.inf else date.fromordinal(int(period[0])).isoformat()
    end = "open" if period[1] == math.inf else date.fromordinal(int(period[1])).isoformat()
    return f"{start} to {end}"
