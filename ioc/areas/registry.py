"""The area registry (CONTRACT §1 `[areas]`): administrative units, their levels and parents, over time.

Vietnam's administrative map changes by decree (since 2025-07-01 there is no district level), so every
row has an effective period `[valid_from, valid_to)` and every question takes a date. Level targets of
the KPIs (CONTRACT §5) are versioned the same way, in a second file.

Both files are CSV (UTF-8, a header, `#` comment lines skipped but counted) and are checked whole at
load: every problem is reported as `file:line: message` in one `ConfigError`. After load nothing reads a
file: the rule engine asks `is_within` and `level_of` for every event, so answers come from dicts, and
the chain of ancestors is built once per (code, period in which no row of the registry changes).
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeAlias, cast
from zoneinfo import ZoneInfo

from ioc.config import AreasSettings
from ioc.envelope import METRIC_PATTERN, AreaLevel
from ioc.errors import ConfigError

__all__ = ["Area", "AreaRegistry", "LEVELS", "LOCAL_ZONE", "local_date", "registry_from_settings"]

LOCAL_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
LEVELS: tuple[AreaLevel, ...] = ("province", "district", "commune")
_RANK: dict[str, int] = {level: rank for rank, level in enumerate(LEVELS)}

_AREA_REQUIRED = ("code", "name", "level", "parent")
_AREA_COLUMNS = (*_AREA_REQUIRED, "valid_from", "valid_to")
_TARGET_REQUIRED = ("kpi", "level", "target")
_TARGET_COLUMNS = (*_TARGET_REQUIRED, "valid_from", "valid_to")

# Asia/Ho_Chi_Minh has been UTC+7 without daylight saving since 1975-06-13; before that, ask zoneinfo.
_FIXED_OFFSET_SINCE = 171_738_000  # 1975-06-13T00:00:00+07:00
_LOCAL_OFFSET = 7 * 3600
_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def parse_day(text: str) -> date:
    """A calendar date written exactly `YYYY-MM-DD` (what the data files use); ValueError otherwise.
    Stricter than `date.fromisoformat`, which also takes `20250701` and week dates."""
    if len(text) != 10:
        raise ValueError(f"{text!r} is not YYYY-MM-DD")
    return date.fromisoformat(text)


def local_date(ts: float) -> date:
    """The calendar date in Asia/Ho_Chi_Minh of the Unix time `ts` (on hot paths: no tz arithmetic)."""
    if ts >= _FIXED_OFFSET_SINCE:
        return date.fromordinal(_UNIX_EPOCH_ORDINAL + int(ts + _LOCAL_OFFSET) // 86400)
    return datetime.fromtimestamp(ts, LOCAL_ZONE).date()


@dataclass(frozen=True, slots=True)
class Area:
    """One row of the registry: `code` is the national code (GSO), `parent` the code of the unit above
    (None at the top); valid over `[valid_from, valid_to)`, None meaning open on that side."""

    code: str
    name: str
    level: AreaLevel
    parent: str | None
    valid_from: date | None
    valid_to: date | None  # exclusive

    def valid_at(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_to is None or day < self.valid_to)


@dataclass(frozen=True, slots=True)
class _Target:
    kpi: str
    level: AreaLevel
    target: float
    valid_from: date | None
    valid_to: date | None


# An interval as ordinals: [start, end), with -inf/+inf for an open side.
_Span: TypeAlias = tuple[float, float]
# What one (code, period) resolves to: the area, its ancestors (parent first), their codes.
_Entry: TypeAlias = tuple[Area, tuple[Area, ...], frozenset[str]]


def _span(valid_from: date | None, valid_to: date | None) -> _Span:
    return (valid_from.toordinal() if valid_from else -math.inf,
            valid_to.toordinal() if valid_to else math.inf)


def _overlap(a: _Span, b: _Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _covered(span: _Span, by: Iterable[_Span]) -> bool:
    """Whether the union of `by` covers `span` entirely."""
    start = span[0]
    for piece in sorted(by):
        if piece[0] > start:
            break
        start = max(start, piece[1])
        if start >= span[1]:
            return True
    return start >= span[1]


def _describe_span(span: _Span) -> str:
    start = "the start" if span[0] == -math.inf else date.fromordinal(int(span[0])).isoformat()
    end = "open" if span[1] == math.inf else date.fromordinal(int(span[1])).isoformat()
    return f"{start} to {end}"


class _CsvRows:
    """Rows of a registry CSV as (line number, {column: value}), with problems collected, not raised."""

    def __init__(self, path: str | Path, required: tuple[str, ...], columns: tuple[str, ...]) -> None:
        self.label = str(path)
        self.problems: list[str] = []
        self.rows: list[tuple[int, dict[str, str]]] = []
        try:
            raw = Path(path).read_bytes()
        except OSError as error:
            self.problems.append(f"{self.label}: cannot read: {error.strerror}")
            return
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            bad_line = raw[: error.start].count(b"\n") + 1
            self.problems.append(f"{self.label}:{bad_line}: not UTF-8 (byte {error.start})")
            return
        header: list[str] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                fields = next(csv.reader(io.StringIO(line), strict=True))
            except (csv.Error, StopIteration) as error:
                self.problem(number, f"not a CSV line: {error}")
                continue
            fields = [field.strip() for field in fields]
            if header is None:
                header = fields
                missing = [name for name in required if name not in header]
                unknown = [name for name in header if name not in columns]
                for name in missing:
                    self.problem(number, f"missing column {name!r}")
                for name in unknown:
                    self.problem(number, f"unknown column {name!r} (expected {', '.join(columns)})")
                if len(set(header)) != len(header):
                    self.problem(number, "a column is named twice")
                if missing or unknown or len(set(header)) != len(header):
                    return
                continue
            if len(fields) != len(header):
                self.problem(number,
                             f"expected {len(header)} fields ({', '.join(header)}), got {len(fields)}")
                continue
            self.rows.append((number, dict(zip(header, fields, strict=True))))
        if header is None:
            self.problems.append(f"{self.label}: no header line ({', '.join(columns)})")

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.label}:{line}: {message}")

    def level(self, line: int, value: str) -> AreaLevel | None:
        if value not in _RANK:
            self.problem(line, f"level: {value!r} is not one of {', '.join(LEVELS)}")
            return None
        return cast(AreaLevel, value)

    def dates(self, line: int, row: dict[str, str]) -> tuple[bool, date | None, date | None]:
        """(ok, valid_from, valid_to) of a row; a problem is recorded when not ok."""
        parsed: list[date | None] = []
        ok = True
        for column in ("valid_from", "valid_to"):
            value = row.get(column, "")
            if not value:
                parsed.append(None)
                continue
            try:
                parsed.append(parse_day(value))
            except ValueError:
                self.problem(line, f"{column}: {value!r} is not a date (YYYY-MM-DD)")
                parsed.append(None)
                ok = False
        valid_from, valid_to = parsed
        if ok and valid_from and valid_to and valid_to <= valid_from:
            self.problem(line, f"valid_to {valid_to} must be after valid_from {valid_from}")
            ok = False
        return ok, valid_from, valid_to


class AreaRegistry:
    """Areas by code and date, their ancestors and children, and the KPI targets by level.

    Build it with `load` (or `default` for the shipped Bình Thuận sample); it is immutable after that
    and safe to share between threads (the caches only ever gain entries that are the same for all)."""

    def __init__(self, areas: list[Area], targets: list[_Target]) -> None:
        self._rows = areas
        self._versions: dict[str, tuple[Area, ...]] = {}
        for area in areas:
            self._versions[area.code] = (*self._versions.get(area.code, ()), area)
        self._targets: dict[tuple[str, str], tuple[_Target, ...]] = {}
        for target in targets:
            key = (target.kpi, target.level)
            self._targets[key] = (*self._targets.get(key, ()), target)
        # Dates at which some row starts or ends: between two of them, nothing in the registry changes.
        self._breaks: list[int] = sorted({day.toordinal() for area in areas
                                          for day in (area.valid_from, area.valid_to) if day})
        self._entries: list[dict[str, _Entry | None]] = [{} for _ in range(len(self._breaks) + 1)]
        self._children: list[dict[str, list[Area]] | None] = [None] * (len(self._breaks) + 1)

    # --- loading -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, targets_path: str | Path | None = None) -> AreaRegistry:
        """Read and check the registry (and the targets, if given); raise ConfigError with every problem."""
        areas, problems = _load_areas(path)
        targets: list[_Target] = []
        if targets_path is not None:
            targets, target_problems = _load_targets(targets_path)
            problems += target_problems
        if problems:
            raise ConfigError(problems)
        return cls(areas, targets)

    @classmethod
    def default(cls) -> AreaRegistry:
        """The shipped sample registry (Bình Thuận) with the shipped targets; loaded once."""
        return _default_registry()

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
        # Any day of the period will do: validity only changes at a break.
        day = date.fromordinal(self._breaks[period - 1]) if period else (
            date.fromordinal(self._breaks[0] - 1) if self._breaks else date.today())
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
        return [area for area in self._rows if code is None or area.code == code]

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


def _load_areas(path: str | Path) -> tuple[list[Area], list[str]]:
    reader = _CsvRows(path, _AREA_REQUIRED, _AREA_COLUMNS)
    areas: list[Area] = []
    lines: dict[int, int] = {}  # id(area) -> line, for messages about relations
    for line, row in reader.rows:
        code, name, parent = row["code"], unicodedata.normalize("NFC", row["name"]), row["parent"]
        ok = True
        if not code:
            reader.problem(line, "code: empty")
            ok = False
        elif any(char in code for char in " ,=\\\"'") or not code.isprintable():
            reader.problem(line, f"code: {code!r} has a character an area code cannot hold")
            ok = False
        if not name:
            reader.problem(line, "name: empty")
            ok = False
        level = reader.level(line, row["level"])
        dates_ok, valid_from, valid_to = reader.dates(line, row)
        if not (ok and level and dates_ok):
            continue
        area = Area(code, name, level, parent or None, valid_from, valid_to)
        lines[id(area)] = line
        areas.append(area)

    by_code: dict[str, list[Area]] = {}
    for area in areas:
        for other in by_code.get(area.code, ()):
            if _overlap(_span(area.valid_from, area.valid_to), _span(other.valid_from, other.valid_to)):
                reader.problem(lines[id(area)], f"code {area.code!r} is already defined at line "
                                                f"{lines[id(other)]} for overlapping dates")
                break
        by_code.setdefault(area.code, []).append(area)

    in_cycle = _cycles(areas, by_code, lines, reader)
    for area in areas:
        if area.parent is None or area.code in in_cycle:
            continue
        line, span = lines[id(area)], _span(area.valid_from, area.valid_to)
        parents = by_code.get(area.parent)
        if not parents:
            reader.problem(line, f"parent {area.parent!r} is not a known area")
            continue
        if not _covered(span, (_span(p.valid_from, p.valid_to) for p in parents)):
            reader.problem(line, f"parent {area.parent!r} is not valid over this row's dates "
                                 f"({_describe_span(span)})")
        for above in parents:
            if _overlap(span, _span(above.valid_from, above.valid_to)) and \
                    _RANK[area.level] <= _RANK[above.level]:
                reader.problem(line, f"level {area.level!r} is not below the level {above.level!r} of its "
                                     f"parent {area.parent!r} (line {lines[id(above)]})")
                break
    return areas, reader.problems


def _cycles(areas: list[Area], by_code: dict[str, list[Area]], lines: dict[int, int],
            reader: _CsvRows) -> set[str]:
    """Report each cycle of parents once (at its first row in the file); the codes in cycles."""
    parents: dict[str, set[str]] = {}
    for area in areas:
        if area.parent is not None:
            parents.setdefault(area.code, set()).add(area.parent)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    found: list[list[str]] = []

    for area in areas:  # depth-first, with an explicit stack: a long chain must not exhaust recursion
        if area.code in state:
            continue
        state[area.code] = 1
        path = [area.code]
        stack = [iter(sorted(parents.get(area.code, ())))]
        while stack:
            parent = next(stack[-1], None)
            if parent is None:
                stack.pop()
                state[path.pop()] = 2
            elif state.get(parent) == 1:
                found.append(path[path.index(parent):])
            elif parent not in state:
                state[parent] = 1
                path.append(parent)
                stack.append(iter(sorted(parents.get(parent, ()))))
    in_cycle: set[str] = set()
    for cycle in found:
        first = min(cycle, key=lambda code: min(lines[id(a)] for a in by_code[code]))
        start = cycle.index(first)
        ordered = cycle[start:] + cycle[:start]
        in_cycle.update(cycle)
        shown = [*ordered, first] if len(ordered) <= 8 else [*ordered[:4], "...", first]
        more = f" ({len(ordered)} areas)" if len(ordered) > 8 else ""
        reader.problem(min(lines[id(a)] for a in by_code[first]), f"parent cycle: {' -> '.join(shown)}{more}")
    return in_cycle


def _load_targets(path: str | Path) -> tuple[list[_Target], list[str]]:
    reader = _CsvRows(path, _TARGET_REQUIRED, _TARGET_COLUMNS)
    targets: list[_Target] = []
    seen: dict[tuple[str, str], list[tuple[_Span, int]]] = {}
    for line, row in reader.rows:
        kpi = row["kpi"]
        ok = True
        if not re.match(METRIC_PATTERN, kpi):
            reader.problem(line, f"kpi: {kpi!r} is not a metric name such as 'kpi.dossier.online_share'")
            ok = False
        level = reader.level(line, row["level"])
        try:
            value = float(row["target"])
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            reader.problem(line, f"target: {row['target']!r} is not a finite number")
            ok = False
        dates_ok, valid_from, valid_to = reader.dates(line, row)
        if not (ok and level and dates_ok):
            continue
        span = _span(valid_from, valid_to)
        clash = next((other for other_span, other in seen.get((kpi, level), ())
                      if _overlap(span, other_span)), None)
        if clash is not None:
            reader.problem(line, f"target of {kpi!r} for {level!r} is already set at line {clash} "
                                 f"for overlapping dates")
            continue
        seen.setdefault((kpi, level), []).append((span, line))
        targets.append(_Target(kpi, level, value, valid_from, valid_to))
    return targets, reader.problems


@cache
def _default_registry() -> AreaRegistry:
    data = resources.files("ioc.data")
    with resources.as_file(data / "areas" / "binh-thuan.csv") as areas, \
            resources.as_file(data / "targets.csv") as targets:
        return AreaRegistry.load(areas, targets)


def registry_from_settings(settings: AreasSettings) -> AreaRegistry:
    """The registry `[areas]` names: `path` (empty: the shipped sample) with `targets_path` (empty: the
    shipped targets). Raises ConfigError with `file:line: message` problems."""
    if not settings.path and not settings.targets_path:
        return AreaRegistry.default()
    return AreaRegistry.load(settings.path or default_areas_path(),
                             settings.targets_path or default_targets_path())


def default_areas_path() -> Path:
    """Where the shipped registry is (for `[areas] path` left empty and for docs)."""
    return Path(str(resources.files("ioc.data") / "areas" / "binh-thuan.csv"))


def default_targets_path() -> Path:
    return Path(str(resources.files("ioc.data") / "targets.csv"))
