"""Working days and KPI periods in Asia/Ho_Chi_Minh (docs/rules.md: near-due and the rates' period).

A working day is Monday to Friday, less the dates of `[kpis] holidays_file` (by default the shipped
`ioc/data/holidays-vn.txt`). A dossier is near-due from 00:00 of the first day D after which at most
`near_due_days` working days remain up to and including its due date: with the default of 1, a dossier due
on Monday is near-due from Friday 00:00 (from Thursday 00:00 when that Friday is a holiday), and with 0 it
is near-due on its due day only.
"""

from __future__ import annotations

from datetime import date
from importlib import resources
from pathlib import Path

from ioc.areas import local_date, parse_day
from ioc.errors import ConfigError

_LOCAL_OFFSET = 7 * 3600  # Asia/Ho_Chi_Minh: UTC+7, no daylight saving (see ioc.areas.local_date)
_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def default_holidays_path() -> Path:
    return Path(str(resources.files("ioc.data") / "holidays-vn.txt"))


def load_holidays(path: str | Path) -> frozenset[date]:
    """The dates of a holidays file (YYYY-MM-DD a line, `#` comments); ConfigError with file:line."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{label}: cannot read: {error.strerror}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{label}: not UTF-8 (byte {error.start})"]) from None
    days: set[date] = set()
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            days.add(parse_day(line))
        except ValueError:
            problems.append(f"{label}:{number}: {line!r} is not a date (YYYY-MM-DD)")
    if problems:
        raise ConfigError(problems)
    return frozenset(days)


def local_midnight(day: date) -> float:
    """The Unix time of 00:00 of `day` in Asia/Ho_Chi_Minh."""
    return float((day.toordinal() - _UNIX_EPOCH_ORDINAL) * 86400 - _LOCAL_OFFSET)


def period_of(ts: float) -> int:
    """The calendar month of `ts` in Asia/Ho_Chi_Minh, as year * 12 + month - 1."""
    day = local_date(ts)
    return day.year * 12 + day.month - 1


def period_start(period: int) -> float:
    """The Unix time at which the month `period` (see `period_of`) starts."""
    return local_midnight(date(period // 12, period % 12 + 1, 1))


class WorkCalendar:
    """Working days (Monday-Friday less holidays) and the time a due date becomes near."""

    def __init__(self, holidays: frozenset[date], near_due_days: int) -> None:
        self.holidays = holidays
        self.near_due_days = near_due_days
        self._near: dict[int, float] = {}  # due date ordinal -> near-due start (Unix s)

    def is_working(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def near_start(self, due_at: float) -> float:
        """When a dossier due at `due_at` becomes near-due (Unix s); cached per due date."""
        due_day = local_date(due_at)
        ordinal = due_day.toordinal()
        start = self._near.get(ordinal)
        if start is None:
            day, remaining = due_day, 0  # remaining: working days in (day, due_day]
            while True:
                before = date.fromordinal(day.toordinal() - 1)
                remaining_before = remaining + (1 if self.is_working(day) else 0)
                if remaining_before > self.near_due_days or due_day.toordinal() - before.toordinal() > 366:
                    break
                day, remaining = before, remaining_before
            start = local_midnight(day)
            if len(self._near) > 100_000:
                self._near.clear()
            self._near[ordinal] = start
        return start
