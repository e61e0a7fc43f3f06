"""The area registry (CONTRACT §1 `[areas]`, §10): administrative units, their levels and parents, over time.

Vietnam's administrative map changes by decree (since 2025-07-01 there is no district level), so every
row has an effective period `[valid_from, valid_to)` and every question takes a date. Level targets of
the KPIs (docs/rules.md) are versioned the same way, in a second file.

After load nothing reads a file: the rule engine asks `is_within` and `level_of` for every event, so
answers come from dicts, and the chain of ancestors is built once per (code, period in which no row of
the registry changes).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeAlias

from ioc.areas.csvfile import load_areas, load_targets
from ioc.areas.dates import REFORM_DAY, local_date
from ioc.areas.national import Former, Source, former_codes, load_national, with_overrides
from ioc.areas.units import LEVELS, Area, Target
from ioc.config import AreasSettings
from ioc.envelope import AreaLevel
from ioc.errors import ConfigError

__all__ = ["AreaRegistry", "default_targets_path", "registry_from_settings"]

# What one (code, period) resolves to: the area, its ancestors (parent first), their codes.
_Entry: TypeAlias = tuple[Area, tuple[Area, ...], frozenset[str]]


class AreaRegistry:
    """Areas by code and date, their ancestors and children, and the KPI targets by level.

    Build it with `national` (the whole country or some provinces, `default` for the whole country with
    the shipped targets) or `load` (a CSV that stands alone, for tests); it is immutable after that and
    safe to share between threads (the caches only ever gain entries that are the same for all).
    `former`: the former codes no longer in use from 2025-07-01 and what they became (the intake converts
    them); `source`: the open data the registry was built from."""

    def __init__(self, areas: list[Area], targets: list[Target], *, former: dict[str, Former] | None = None,
                 conversion: dict[str, tuple[str, ...]] | None = None, source: Source | None = None,
                 served: tuple[str, ...] | None = None) -> None:
        self._rows = areas
        self.former: dict[str, Former] = former or {}
        self._conversion = conversion or {}
        self._former_of: dict[str, list[str]] | None = None
        self.source = source
        self.served = served
        self._versions: dict[str, tuple[Area, ...]] = {}
        for area in areas:
            self._versions[area.code] = (*self._versions.get(area.code, ()), area)
        self._targets: dict[tuple[str, str], tuple[Target, ...]] = {}
        for target in targets:
            key = (target.kpi, target.level)
            self._targets[key] = (*self._targets.get(key, ()), target)
        # Dates at which some row starts or ends: between two of them, nothing in the registry changes.
        self._breaks: list[int] = sorted({day.toordinal() for area in areas
                                          for day in (area.valid_from, area.valid_to) if day})
        self._entries: list[dict[str, _Entry | None]] = [{} for _ in range(len(self._breaks) + 1)]
        self._children: list[dict[str, list[Area]] | None] = [None] * (len(self._breaks) + 1)
        # A day inside each period (any will do: validity only changes at a break).
        self._days = [date.fromordinal(self._breaks[0] - 1) if self._breaks else date.today()] + [
            date.fromordinal(day) for day in self._breaks]

    # --- loading -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, targets_path: str | Path | None = None) -> AreaRegistry:
        """Read and check the registry (and the targets, if given); raise ConfigError with every problem."""
        areas, problems = load_areas(path)
        targets: list[Target] = []
        if targets_path is not None:
            targets, target_problems = load_targets(targets_path)
            problems += target_problems
        if problems:
            raise ConfigError(problems)
        return cls(areas, targets)

    @classmethod
    def national(cls, provinces: Sequence[str] | None = None, overrides: str | Path | None = None,
                 targets_path: str | Path | None = None) -> AreaRegistry:
        """The national registry of both eras (CONTRACT §10): the whole country, or the new provinces
        `provinces` (with, before 2025-07-01, the former provinces inside them), with the units of the CSV
        `overrides`, and the targets (default: the shipped ones). ConfigError with every problem."""
        data = load_national(tuple(provinces) if provinces is not None else None)
        areas = data.areas
        problems: list[str] = []
        if overrides:
            try:
                areas = with_overrides(areas, overrides)
            except ConfigError as error:
                problems += error.problems
        targets, target_problems = load_targets(targets_path or default_targets_path())
        problems += target_problems
        if problems:
            raise ConfigError(problems)
        return cls(areas, targets, former=former_codes(areas, data.conversion), conversion=data.conversion,
                   source=data.source, served=data.served)

    @classmethod
    def default(cls) -> AreaRegistry:
        """The whole country with the shipped targets; loaded once."""
        return _default_registry()

    # --- the 2025 conversion -------------------------------------------------------------------------

    def convert(self, code: str, at: date | None = None) -> Former | None:
        """What a former code no longer in use means on `at` (None: the code needs no conversion then,
        being in use, unknown, or `at` before 2025-07-01)."""
        day = at if at is not None else local_date(time.time())
        return self.former.get(code) if day >= REFORM_DAY else None

    def former_units(self, code: str) -> list[Area]:
        """The units of before 2025-07-01 that went (whole or in part) into the new unit `code`."""
        if self._former_of is None:
            index: dict[str, list[str]] = {}
            for old, into in self._conversion.items():
                for new in into:
                    index.setdefault(new, []).append(old)
            self._former_of = index
        before = date.fromordinal(REFORM_DAY.toordinal() - 1)
        # A new province: the former provinces it holds (their districts went into it too: not listed);
        # a new commune: the former communes (or the island district without communes) it was made of.
        new = self.get(code, REFORM_DAY)
        wanted = {"province"} if new is not None and new.level == "province" else {"commune", "district"}
        found = (self.get(old, before) for old in sorted(self._former_of.get(code, ())))
        return [area for area in found if area is not None and area.level in wanted]

    # --- lookups (the rule engine's hot path) --------------------------------------------------------

    def _period(self, at: date | None) -> int:
        if at is None:
            at = local_date(time.time())
        return bisect.bisect_right(self._breaks, at.toordinal())

    def _entry(self, code: str, period: int) -> _Entry | None:
        entries = self._entries[period]
        try:
            return entries[code]
        except KeyError:
            pass
        if code not in self._versions:  # not cached: a flood of made-up codes must not grow the cache
            return None
        entry = self._resolve(code, period)
        entries[code] = entry
        return entry

    def _resolve(self, code: str, period: int) -> _Entry | None:
        area = self._version(code, period)
        if area is None:
            return None
        chain: list[Area] = []
        parent = area.parent
        while parent is not None:
            above = self._version(parent, period)
            if above is None or len(chain) > len(LEVELS):  # neither happens in a registry `load` accepted
                break
            chain.append(above)
            parent = above.parent
        return area, tuple(chain), frozenset(a.code for a in chain)

    def _version(self, code: str, period: int) -> Area | None:
        versions = self._versions.get(code)
        if not versions:
            return None
        day = self._days[period]
        for area in versions:
            if area.valid_at(day):
                return area
        return None

    def get(self, code: str, at: date | None = None) -> Area | None:
        """The area `code` as it was on `at` (default: today in Asia/Ho_Chi_Minh), None if not valid then."""
        entry = self._entry(code, self._period(at))
        return entry[0] if entry else None

    def level_of(self, code: str, at: date | None = None) -> AreaLevel | None:
        entry = self._entry(code, self._period(at))
        return entry[0].level if entry else None

    def ancestors(self, code: str, at: date | None = None) -> list[Area]:
        """The units above `code` on `at`, its parent first, up to the top ([] when unknown)."""
        entry = self._entry(code, self._period(at))
        return list(entry[1]) if entry else []

    def is_within(self, code: str, ancestor: str, at: date | None = None) -> bool:
        """Whether `code` is `ancestor` itself or lies below it on `at`."""
        if code == ancestor:
            return True
        entry = self._entry(code, self._period(at))
        return entry is not None and ancestor in entry[2]

    def children(self, code: str, at: date | None = None) -> list[Area]:
        """The units directly below `code` on `at`, in file order."""
        period = self._period(at)
        index = self._children[period]
        if index is None:
            index = {}
            for area in self.areas(at):
                if area.parent is not None:
                    index.setdefault(area.parent, []).append(area)
            self._children[period] = index
        return list(index.get(code, ()))

    def versions(self, code: str | None = None) -> list[Area]:
        """Every version of `code` over time (of every code when None), in file order: for checks that
        hold on some date, before the date that matters is known."""
        if code is not None:
            return list(self._versions.get(code, ()))
        return list(self._rows)

    def areas(self, at: date | None = None) -> list[Area]:
        """Every area valid on `at`, in file order."""
        period = self._period(at)
        return [area for area in self._rows if (entry := self._entry(area.code, period)) and entry[0] is area]

    def target(self, kpi: str, level: AreaLevel, at: date | None = None) -> float | None:
        """The target of `kpi` for areas of `level` on `at`, or None where none is set."""
        day = at if at is not None else local_date(time.time())
        for target in self._targets.get((kpi, level), ()):
            if (target.valid_from is None or target.valid_from <= day) and (
                    target.valid_to is None or day < target.valid_to):
                return target.target
        return None


@cache
def _default_registry() -> AreaRegistry:
    return AreaRegistry.national()


def registry_from_settings(settings: AreasSettings) -> AreaRegistry:
    """The registry `[areas]` names: the national one (the whole country, or `provinces`), with the units
    of the CSV `path` over it and the targets `targets_path` (empty: the shipped ones). Raises ConfigError
    with `file:line: message` problems."""
    if not settings.path and not settings.targets_path and settings.provinces is None:
        return AreaRegistry.default()
    return AreaRegistry.national(settings.provinces, settings.path or None, settings.targets_path or None)


def default_targets_path() -> Path:
    return Path(str(resources.files("ioc.data") / "targets.csv"))
