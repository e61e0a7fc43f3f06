"""The registry's CSV files (`[areas] path`, `[areas] targets_path`): read and checked whole.

UTF-8, a header, `#` comment lines skipped but counted; every problem is reported as `file:line: message`
(collected, then raised together in one `ConfigError` by the caller).
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from datetime import date
from pathlib import Path
from typing import cast

from ioc.areas.dates import parse_day
from ioc.areas.units import LEVELS, RANK, Area, Span, Target, covered, describe_span, overlap, span
from ioc.envelope import METRIC_PATTERN, AreaLevel

__all__ = ["AREA_COLUMNS", "check_relations", "load_areas", "load_targets", "read_areas"]

_AREA_REQUIRED = ("code", "name", "level", "parent")
AREA_COLUMNS = (*_AREA_REQUIRED, "valid_from", "valid_to")
_TARGET_REQUIRED = ("kpi", "level", "target")
_TARGET_COLUMNS = (*_TARGET_REQUIRED, "valid_from", "valid_to")
_NO_LINE = 1 << 62  # the "line" of a unit from the national data, which has none


class CsvRows:
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
        if value not in RANK:
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




def read_areas(path: str | Path) -> tuple[list[Area], dict[int, int], CsvRows]:
    """The rows of an area CSV, each checked alone and against the file's other rows for the same code;
    `lines` maps id(area) to its line. Relations (parents, levels, cycles) are `check_relations`'."""
    reader = CsvRows(path, _AREA_REQUIRED, AREA_COLUMNS)
    areas: list[Area] = []
    lines: dict[int, int] = {}
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
            if overlap(span(area.valid_from, area.valid_to), span(other.valid_from, other.valid_to)):
                reader.problem(lines[id(area)], f"code {area.code!r} is already defined at line "
                                                f"{lines[id(other)]} for overlapping dates")
                break
        by_code.setdefault(area.code, []).append(area)
    return areas, lines, reader


def check_relations(areas: list[Area], lines: dict[int, int], reader: CsvRows) -> None:
    """Parents known and valid over each row's dates, levels below the parent's, no cycle: problems are
    reported at the rows that have a line (rows of the national data are right by construction)."""
    by_code: dict[str, list[Area]] = {}
    for area in areas:
        by_code.setdefault(area.code, []).append(area)
    in_cycle = _cycles(areas, by_code, lines, reader)
    for area in areas:
        line = lines.get(id(area))
        if line is None or area.parent is None or area.code in in_cycle:
            continue
        period = span(area.valid_from, area.valid_to)
        parents = by_code.get(area.parent)
        if not parents:
            reader.problem(line, f"parent {area.parent!r} is not a known area")
            continue
        if not covered(period, (span(p.valid_from, p.valid_to) for p in parents)):
            reader.problem(line, f"parent {area.parent!r} is not valid over this row's dates "
                                 f"({describe_span(period)})")
        for above in parents:
            if overlap(period, span(above.valid_from, above.valid_to)) and RANK[area.level] <= RANK[above.level]:
                where = f"line {lines[id(above)]}" if id(above) in lines else "the national registry"
                reader.problem(line, f"level {area.level!r} is not below the level {above.level!r} of its "
                                     f"parent {area.parent!r} ({where})")
                break


def load_areas(path: str | Path) -> tuple[list[Area], list[str]]:
    """An area CSV that stands alone (a test's registry): its rows and every problem."""
    areas, lines, reader = read_areas(path)
    check_relations(areas, lines, reader)
    return areas, reader.problems


def _cycles(areas: list[Area], by_code: dict[str, list[Area]], lines: dict[int, int],
            reader: CsvRows) -> set[str]:
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
        first = min(cycle, key=lambda code: min(lines.get(id(a), _NO_LINE) for a in by_code[code]))
        start = cycle.index(first)
        ordered = cycle[start:] + cycle[:start]
        in_cycle.update(cycle)
        shown = [*ordered, first] if len(ordered) <= 8 else [*ordered[:4], "...", first]
        more = f" ({len(ordered)} areas)" if len(ordered) > 8 else ""
        at = min(lines.get(id(a), _NO_LINE) for a in by_code[first])
        reader.problem(at, f"parent cycle: {' -> '.join(shown)}{more}")
    return in_cycle


def load_targets(path: str | Path) -> tuple[list[Target], list[str]]:
    reader = CsvRows(path, _TARGET_REQUIRED, _TARGET_COLUMNS)
    targets: list[Target] = []
    seen: dict[tuple[str, str], list[tuple[Span, int]]] = {}
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
        period = span(valid_from, valid_to)
        clash = next((other for other_span, other in seen.get((kpi, level), ())
                      if overlap(period, other_span)), None)
        if clash is not None:
            reader.problem(line, f"target of {kpi!r} for {level!r} is already set at line {clash} "
                                 f"for overlapping dates")
            continue
        seen.setdefault((kpi, level), []).append((period, line))
        targets.append(Target(kpi, level, value, valid_from, valid_to))
    return targets, reader.problems

