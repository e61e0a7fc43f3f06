"""Dates of the registry: strict `YYYY-MM-DD`, the calendar day in Vietnam, the day of the 2025 reform."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

__all__ = ["LOCAL_ZONE", "REFORM_DAY", "REFORM_NS", "local_date", "parse_day"]

LOCAL_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
# Resolution 202/2025/QH15: from this day there is no district level, 34 provinces and 3,321 communes.
REFORM_DAY = date(2025, 7, 1)

# Asia/Ho_Chi_Minh has been UTC+7 without daylight saving since 1975-06-13; before that, ask zoneinfo.
_FIXED_OFFSET_SINCE = 171_738_000  # 1975-06-13T00:00:00+07:00
_LOCAL_OFFSET = 7 * 3600
_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# The reform's first instant, 2025-07-01T00:00+07:00, in Unix nanoseconds: the intake compares an event's
# time with it (an integer comparison, no date arithmetic per event).
REFORM_NS = ((REFORM_DAY.toordinal() - _UNIX_EPOCH_ORDINAL) * 86400 - _LOCAL_OFFSET) * 1_000_000_000


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
