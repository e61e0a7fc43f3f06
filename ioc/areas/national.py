"""The national registry (CONTRACT §10): both eras of the whole country from the generated artefact
(`ioc/data/areas/vn-registry.json.gz`, made by `python -m ioc.areas.build`), narrowed to the provinces a
daemon serves, with the 2025 conversion of the former codes no longer in use and the CSV overrides."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ioc.areas.csvfile import check_relations, read_areas
from ioc.areas.dates import REFORM_DAY
from ioc.areas.units import Area, Span, overlap, span
from ioc.envelope import AreaLevel
from ioc.errors import ConfigError

__all__ = ["Former", "National", "Source", "artefact_path", "former_codes", "load_national", "with_overrides"]


def artefact_path() -> Path:
    return Path(str(resources.files("ioc.data") / "areas" / "vn-registry.json.gz"))


@dataclass(frozen=True, slots=True)
class Source:
    """Which open data the registry was built from (`ioc areas info`)."""

    package: str
    version: str
    license: str


@dataclass(frozen=True, slots=True)
class Former:
    """A code in use until 2025-06-30 and no longer from 2025-07-01: what an event dated from then that
    carries it means. `into`: the new code(s), with their names; several for a commune divided between
    new ones, which cannot be placed alone."""

    code: str
    name: str
    level: AreaLevel  # the former code's level (the metric's label)
    into: tuple[tuple[str, str], ...]  # (code, name) of each new unit

    @property
    def divided(self) -> bool:
        return len(self.into) > 1

    def reason(self) -> str:
        """Why an event dated from the reform with this code is refused (a divided commune)."""
        candidates = ", ".join(f"{code} ({name})" for code, name in self.into)
        return (f"area: {self.code} ({self.name}) is a former commune divided on {REFORM_DAY} between "
                f"{candidates}; send the new commune's code")


@dataclass(frozen=True)
class National:
    """The national data, possibly narrowed: every unit of both eras, the conversion of former codes by
    former code, and the former communes of each new commune."""

    source: Source
    areas: list[Area]
    conversion: dict[str, tuple[str, ...]]  # former code -> new code(s), every former unit
    served: tuple[str, ...] | None  # the new provinces served, None for the whole country


@cache
def _raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(gzip.decompress(artefact_path().read_bytes()))
    return data


def _rows_to_areas(raw: dict[str, Any], keep_old: set[str] | None, keep_new: set[str] | None) -> list[Area]:
    reform = REFORM_DAY
    former, current = raw["former"], raw["current"]
    areas: list[Area] = []
    for code, name, lat, lon in former["provinces"]:
        if keep_old is None or code in keep_old:
            areas.append(Area(code, name, "province", None, None, reform, lat, lon))
    district_kept: set[str] = set()
    for code, name, parent, lat, lon in former["districts"]:
        if keep_old is None or parent in keep_old:
            district_kept.add(code)
            areas.append(Area(code, name, "district", parent, None, reform, lat, lon))
    for code, name, parent, lat, lon in former["communes"]:
        if parent in district_kept:
            areas.append(Area(code, name, "commune", parent, None, reform, lat, lon))
    for code, name, lat, lon in current["provinces"]:
        if keep_new is None or code in keep_new:
            areas.append(Area(code, name, "province", None, reform, None, lat, lon))
    for code, name, parent, lat, lon in current["communes"]:
        if keep_new is None or parent in keep_new:
            areas.append(Area(code, name, "commune", parent, reform, None, lat, lon))
    return areas


@cache
def load_national(provinces: tuple[str, ...] | None = None) -> National:
    """The registry's units from the artefact: the whole country, or the new provinces `provinces` with,
    before 2025-07-01, the former provinces now inside them. ConfigError for an unknown province."""
    raw = _raw()
    province_to: dict[str, str] = raw["conversion"]["provinces"]
    new_provinces = {row[0]: row[1] for row in raw["current"]["provinces"]}
    keep_old = keep_new = None
    if provinces is not None:
        problems = []
        for code in provinces:
            if code in new_provinces:
                continue
            hint = ""
            if code in province_to:
                hint = f" ({code} is a former province, part of {province_to[code]} from {REFORM_DAY})"
            problems.append(f"areas.provinces: {code!r} is not one of the 34 provinces{hint}; one of "
                            f"{', '.join(sorted(new_provinces))}")
        if problems:
            raise ConfigError(problems)
        keep_new = set(provinces)
        keep_old = {old for old, new in province_to.items() if new in keep_new}
    areas = _rows_to_areas(raw, keep_old, keep_new)
    conversion: dict[str, tuple[str, ...]] = {}
    conv = raw["conversion"]
    district_parent = {row[0]: row[2] for row in raw["former"]["districts"]}
    for code, into in conv["communes"].items():
        conversion[code] = tuple(into)
    for code, province in district_parent.items():
        conversion[code] = (conv["districts"].get(code) or province_to[province],)
    for code, into in province_to.items():
        conversion[code] = (into,)
    source = raw["source"]
    return National(Source(source["package"], source["version"], source["license"]), areas, conversion,
                    tuple(provinces) if provinces is not None else None)


def former_codes(areas: Sequence[Area], conversion: dict[str, tuple[str, ...]]) -> dict[str, Former]:
    """The former codes of `areas` that no unit uses from 2025-07-01, each with what it became (only the
    new units `areas` holds: a narrowed registry converts into its own provinces only)."""
    reform = REFORM_DAY.toordinal()
    in_use: set[str] = set()
    latest: dict[str, Area] = {}  # code -> its version in force just before the reform
    new_names: dict[str, str] = {}
    for area in areas:
        if area.valid_to is None or area.valid_to.toordinal() > reform:
            in_use.add(area.code)
            if area.valid_at(REFORM_DAY):
                new_names[area.code] = area.name
        elif area.valid_at(date.fromordinal(reform - 1)):
            latest[area.code] = area
    found: dict[str, Former] = {}
    for code, area in latest.items():
        if code in in_use or code not in conversion:
            continue
        into = tuple((new, new_names[new]) for new in conversion[code] if new in new_names)
        if into:
            found[code] = Former(code, area.name, area.level, into)
    return found


def with_overrides(areas: list[Area], path: str | Path) -> list[Area]:
    """`areas` with the rows of the CSV at `path`: a row replaces the unit with that code for the dates
    its valid_from/valid_to cover (no dates: every date), parent included. ConfigError with every problem."""
    rows, lines, reader = read_areas(path)
    covered_by: dict[str, list[Span]] = {}
    for row in rows:
        covered_by.setdefault(row.code, []).append(span(row.valid_from, row.valid_to))
    merged: list[Area] = []
    for area in areas:
        cuts = covered_by.get(area.code)
        merged.extend(_cut(area, cuts) if cuts else (area,))
    merged.extend(rows)
    if not reader.problems:
        check_relations(merged, lines, reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    return merged


def _cut(area: Area, cuts: Iterable[Span]) -> list[Area]:
    """What is left of `area`'s period once the spans `cuts` are taken out (0, 1 or more pieces)."""
    pieces = [span(area.valid_from, area.valid_to)]
    for cut in cuts:
        left: list[Span] = []
        for piece in pieces:
            if not overlap(piece, cut):
                left.append(piece)
                continue
            if piece[0] < cut[0]:
                left.append((piece[0], cut[0]))
            if cut[1] < piece[1]:
                left.append((cut[1], piece[1]))
        pieces = left
    return [_with_span(area, piece) for piece in pieces]


def _with_span(area: Area, piece: Span) -> Area:
    start = None if piece[0] == float("-inf") else date.fromordinal(int(piece[0]))
    end = None if piece[1] == float("inf") else date.fromordinal(int(piece[1]))
    return Area(area.code, area.name, area.level, area.parent, start, end, area.lat, area.lon)
