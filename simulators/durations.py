"""Durations as people write them in a scenario or on the command line: `30s`, `10m`, `1h30m`, `1d`, `250ms`.

The simulators' own reading (they import nothing of the daemon, issue 10); the same spellings as the
daemon's config (docs/configuration.md), so a scenario reads like the rest of the project.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX = 100 * 365 * 86400.0  # a century: longer is a typo, and datetime arithmetic overflows


def parse_duration(text: str | float) -> float:
    """`30s`, `10m`, `2h`, `1d`, `1h30m`, `250ms` (or a number of seconds) -> seconds; ValueError otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        position, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
        if position != len(text) or not text:
            raise ValueError(f"{text!r} is not a duration such as '30s', '10m' or '1h30m'")
    else:  # ValueError, not TypeError: pydantic reports it as the field's message
        raise ValueError("expected a duration such as '30s', '10m' or '1h30m'")  # noqa: TRY004
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > _MAX:
        raise ValueError("a duration must be at most 100 years")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
