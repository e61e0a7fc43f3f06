"""The province a scenario plays: its units, as a vendor knows them (issue 10: nothing of the daemon).

A vendor learns the codes from the daemon's public API, `GET /api/v1/provinces/{code}/areas`
(docs/http-api.md), or keeps a copy of that answer: the areas file beside a scenario, written by
`ioc sim areas`. Either way the rows are the same: `code`, `name`, `level`, `parent`, the unit's period
(`valid_from`, `valid_to` exclusive, empty: open) and, for units of the 2025 reform, the former
provinces they were formed from (`former_provinces`), which lets a scenario play the communes of a former
province only (the demo's focus: the former Bình Thuận, 60, inside Lâm Đồng, 68).

The areas file is CSV (UTF-8, `#` comment lines) with those columns, `former_provinces` separated by
spaces; every problem is reported as `file:line: message`.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = ["COLUMNS", "Area", "AreaList", "AreasError", "Level", "local_date"]

Level = Literal["province", "district", "commune"]
LEVELS: tuple[Level, ...] = ("province", "district", "commune")
COLUMNS = ("code", "name", "level", "parent", "valid_from", "valid_to", "former_provinces")
_LOCAL = timedelta(hours=7)  # Asia/Ho_Chi_Minh is UTC+7 all year


def local_date(ts: float) -> date:
    """The calendar day in Vietnam of Unix time `ts`."""
    return (datetime.fromtimestamp(ts, UTC) + _LOCAL).date()


class AreasError(Exception):
    """The areas cannot be read; `problems` are `file:line: message` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Area:
    code: str
    name: str
    level: Level
    parent: str | None
    valid_from: date | None = None
    valid_to: date | None = None  # exclusive
    former_provinces: tuple[str, ...] = ()

    def valid_at(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (self.valid_to is None or day < self.valid_to)


class AreaList:
    """The units of one province (over the periods its source covers), with the lookups a play needs."""

    def __init__(self, areas: list[Area], origin: str) -> None:
        self.origin = origin  # where they came from: a file or an API URL (for messages)
        self._rows = areas
        self._versions: dict[str, list[Area]] = {}
        for area in areas:
            self._versions.setdefault(area.code, []).append(area)

    # --- reading ----------------------------------------------------------------------------------

    @classmethod
    def from_csv(cls, path: Path) -> AreaList:
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise AreasError([f"{label}: cannot read: {error.strerror}"]) from None
        except UnicodeDecodeError as error:
            raise AreasError([f"{label}: not UTF-8 (byte {error.start})"]) from None
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
        if not lines or next(csv.reader([lines[0][1]])) != list(COLUMNS):
            raise AreasError([f"{label}:{lines[0][0] if lines else 1}: the header must be {','.join(COLUMNS)}"])
        areas, problems = [], []
        for (number, _), row in zip(lines[1:], csv.reader(line for _, line in lines[1:]), strict=True):
            try:
                areas.append(_row(dict(zip(COLUMNS, row, strict=True))))
            except (ValueError, KeyError) as error:
                problems.append(f"{label}:{number}: {error}")
        if problems:
            raise AreasError(problems)
        return cls(areas, label)

    @classmethod
    def from_api(cls, api: str, province: str, at: date, client: httpx.Client | None = None) -> AreaList:
        """The daemon's `GET /api/v1/provinces/{province}/areas?at=...` (no token: a public read)."""
        url = f"{api.rstrip('/')}/api/v1/provinces/{province}/areas"
        http = client or httpx.Client(timeout=10.0)
        try:
            response = http.get(url, params={"at": at.isoformat()})
        except httpx.HTTPError as error:
            raise AreasError([f"{url}: cannot read: {error}"]) from None
        finally:
            if client is None:
                http.close()
        if response.status_code != 200:
            raise AreasError([f"{url}: HTTP {response.status_code}: {response.text[:200]}"])
        try:
            areas = [_row({**item, "former_provinces": " ".join(item.get("former_provinces") or ())})
                     for item in response.json()]
        except (ValueError, KeyError, TypeError) as error:
            raise AreasError([f"{url}: unexpected answer: {error}"]) from None
        return cls(areas, url)

    def to_csv(self, comment: str = "") -> str:
        out = io.StringIO()
        for line in comment.splitlines():
            out.write(f"# {line}\n" if line else "#\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for a in self._rows:
            writer.writerow([a.code, a.name, a.level, a.parent or "", _text(a.valid_from), _text(a.valid_to),
                             " ".join(a.former_provinces)])
        return out.getvalue()

    # --- lookups ----------------------------------------------------------------------------------

    def versions(self, code: str) -> list[Area]:
        return list(self._versions.get(code, ()))

    def get(self, code: str, day: date) -> Area | None:
        return next((area for area in self._versions.get(code, ()) if area.valid_at(day)), None)

    def areas(self, day: date) -> list[Area]:
        """Every unit valid on `day`, in the source's order."""
        return [area for area in self._rows if area.valid_at(day)]

    def is_within(self, code: str, ancestor: str, day: date) -> bool:
        """`code` is `ancestor` or lies below it on `day`."""
        area, steps = self.get(code, day), 0
        while area is not None and steps <= len(LEVELS):
            if area.code == ancestor:
                return True
            area = self.get(area.parent, day) if area.parent else None
            steps += 1
        return False

    def communes(self, province: str, day: date, former: str | None = None) -> list[Area]:
        """The communes of `province` on `day`, in order; with `former`, only those formed from that former
        province (all of them when no unit records where it came from, e.g. a play before 2025-07-01)."""
        found = [area for area in self.areas(day) if area.level == "commune" and self.is_within(area.code, province, day)]
        if former is None or not any(area.former_provinces for area in found):
            return found
        return [area for area in found if former in area.former_provinces]


def _text(day: date | None) -> str:
    return day.isoformat() if day is not None else ""


def _day(value: Any, key: str) -> date | None:
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not a date (YYYY-MM-DD)") from None


def _row(item: dict[str, Any]) -> Area:
    code, name, level = str(item["code"]).strip(), str(item["name"]).strip(), str(item["level"]).strip()
    if not code or not name:
        raise ValueError("code and name must not be empty")
    if level not in LEVELS:
        raise ValueError(f"level: {level!r} is not one of {', '.join(LEVELS)}")
    parent = str(item.get("parent") or "").strip() or None
    former = tuple(str(item.get("former_provinces") or "").split())
    return Area(code, name, level, parent, _day(item.get("valid_from"), "valid_from"),  # type: ignore[arg-type]
                _day(item.get("valid_to"), "valid_to"), former)


def today() -> date:
    return local_date(time.time())
