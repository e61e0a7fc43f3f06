"""What every subsystem shares: its config base, the play context, event times as text, work hours.

A subsystem is a module with a `Config` model and `stream(config, context)`, a generator of
`(offset, source, payload)` in offset order: `offset` in seconds from the scenario's start, `payload`
the event's JSON (pre-rendered with orjson, no pydantic on this path: tests validate the output).
Generation never reads the wall clock; its randomness is `context.rng`, seeded from the scenario's seed
and the subsystem's name, so the same scenario, seed and start give the same bytes.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeAlias

from ioc.simulators.areas import Area, AreaList, local_date
from pydantic import BaseModel, ConfigDict

__all__ = ["Config", "Context", "Emitted", "Stream", "TimeText", "Windows", "WorkHours", "derive_rng", "poisson"]

Emitted: TypeAlias = tuple[float, str, bytes]  # (offset from start in seconds, source, event JSON)
Stream: TypeAlias = Iterator[Emitted]

LOCAL_OFFSET = 7 * 3600  # Asia/Ho_Chi_Minh is UTC+7 all year
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class Config(BaseModel):
    """A subsystem's section of a scenario: strict, unknown keys are errors."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    rate: float = 1.0  # events per simulated second (overridden in proportion by `--rate`)


def derive_rng(seed: int, name: str) -> random.Random:
    """A generator of its own for `name`: adding a subsystem never changes another's events."""
    digest = hashlib.sha256(f"{seed}\x1f{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth for small means, a rounded normal for large ones)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


class TimeText:
    """Unix seconds -> RFC 3339 in Asia/Ho_Chi_Minh with milliseconds (`2026-03-02T08:00:00.125+07:00`).

    The date and time of day are formatted once per second: at thousands of events a second most
    calls only add the milliseconds."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        millis = round(ts * 1000)
        second, ms = divmod(millis, 1000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second + LOCAL_OFFSET, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{ms:03d}+07:00"


# Vietnam's public holidays on working days (a copy of the daemon's `ioc/data/holidays-vn.txt`, which a
# test keeps equal: the simulators read no file of the daemon's package).
HOLIDAYS_PATH = Path(__file__).resolve().parent.parent / "scenarios" / "holidays-vn.txt"


@cache
def default_holidays() -> frozenset[date]:
    """The dates of `HOLIDAYS_PATH` (YYYY-MM-DD a line, `#` comments)."""
    lines = HOLIDAYS_PATH.read_text(encoding="utf-8").splitlines()
    return frozenset(date.fromisoformat(text) for line in lines if (text := line.split("#", 1)[0].strip()))


def local_midnight(day: date) -> float:
    """The Unix time of 00:00 of `day` in Asia/Ho_Chi_Minh."""
    return float((day.toordinal() - _EPOCH_ORDINAL) * 86400 - LOCAL_OFFSET)


class WorkHours:
    """Office hours of a one-stop shop (Mon-Fri less holidays, 07:30-11:30 and 13:30-17:00 local)."""

    SHIFTS: tuple[tuple[int, int], ...] = ((7 * 3600 + 1800, 11 * 3600 + 1800), (13 * 3600 + 1800, 17 * 3600))
    DAY = sum(end - begin for begin, end in SHIFTS)  # working seconds in a working day (7.5 h)

    def __init__(self, holidays: frozenset[date] | None = None) -> None:
        self.holidays = default_holidays() if holidays is None else holidays
        self._working: dict[int, bool] = {}

    def working_day(self, ordinal: int) -> bool:
        known = self._working.get(ordinal)
        if known is None:
            day = date.fromordinal(ordinal)
            known = day.weekday() < 5 and day not in self.holidays
            self._working[ordinal] = known
        return known

    @staticmethod
    def local(ts: float) -> tuple[int, float]:
        """(local day ordinal, seconds since local midnight) of Unix time `ts`."""
        local = ts + LOCAL_OFFSET
        days = math.floor(local / 86400)
        return _EPOCH_ORDINAL + days, local - days * 86400

    def is_open(self, ts: float) -> bool:
        ordinal, second = self.local(ts)
        return self.working_day(ordinal) and any(begin <= second < end for begin, end in self.SHIFTS)

    def add(self, ts: float, seconds: float) -> float:
        """The time `seconds` of office hours after `ts` (from the next opening when `ts` is outside)."""
        ordinal, second = self.local(ts)
        while True:
            if self.working_day(ordinal):
                if second <= 0 and seconds > self.DAY:
                    seconds -= self.DAY
                else:
                    for begin, end in self.SHIFTS:
                        if second < end:
                            at = max(second, begin)
                            if seconds <= end - at:
                                return local_midnight(date.fromordinal(ordinal)) + at + seconds
                            seconds -= end - at
                            second = end
            ordinal += 1
            second = 0.0


@dataclass
class Context:
    """What a subsystem's stream needs to know about the play."""

    start: float  # Unix seconds of offset 0
    end: float | None  # the offset the play stops at (None: open-ended)
    cycle: float  # the scenario's duration: incidents repeat every cycle
    rate_factor: float  # `--rate` over the scenario's total rate (1.0 without it)
    rng: random.Random
    tag: str  # this play's mark in event ids (from seed and start), so two plays never share an id
    areas: AreaList
    province: str
    former: str | None = None  # play only the communes formed from this former province (the focus)
    incidents: Sequence[Any] = ()  # the scenario's incidents this subsystem acts on
    day: date = field(init=False)

    def __post_init__(self) -> None:
        self.day = local_date(self.start)

    def communes(self) -> list[Area]:
        """The communes played on the start's date (the focus, when the scenario names one), in order."""
        return self.areas.communes(self.province, self.day, self.former)

    def units(self) -> list[Area]:
        """The province, its districts (before 2025-07-01) and the communes played: the agencies."""
        above = [area for area in self.areas.areas(self.day)
                 if area.level != "commune" and self.areas.is_within(area.code, self.province, self.day)]
        return above + self.communes()

    def rate(self, config: Config) -> float:
        return config.rate * self.rate_factor


class Windows:
    """The incident occurrences covering an offset, for offsets asked in increasing order.

    Built from the incidents' occurrence generators (each in order of begin; open-ended plays make them
    endless), so only the occurrences begun and not yet over are held."""

    def __init__(self, incidents: Iterable[Any], cycle: float, end: float | None) -> None:
        from ioc.simulators.incidents import occurrences

        counter = itertools.count()
        streams = [((begin, next(counter), finish, incident) for begin, finish in
                    occurrences(incident, cycle, end)) for incident in incidents]
        self._next = heapq.merge(*streams)
        self._head = next(self._next, None)
        self._active: list[tuple[float, float, Any]] = []

    def at(self, offset: float) -> list[tuple[float, float, Any]]:
        """(begin, end, incident) of every occurrence with begin <= offset < end."""
        while self._head is not None and self._head[0] <= offset:
            begin, _, finish, incident = self._head
            self._active.append((begin, finish, incident))
            self._head = next(self._next, None)
        if self._active:
            self._active = [item for item in self._active if item[1] > offset]
        return self._active
