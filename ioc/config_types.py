"""The building blocks of the configuration: durations and sizes as operators write them, the strict
section base, secret files (docs/configuration.md).

Every settings module builds on these: `ioc.config` (the daemon's sections and the loader) and the
components' own sections it gathers (`ioc.alerts.config`, `ioc.cap.config`). They sit at the bottom of the
layers so that no section has to import the loader that gathers it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3}


def parse_duration(text: str | float) -> float:
    """`30s`, `10m`, `2h`, `1d`, `1h30m`, `250ms` (or a number of seconds) -> seconds, at most a century."""
    return _bounded(parse_duration_unbounded(text))


def parse_duration_unbounded(text: str | float) -> float:
    """As `parse_duration`, with no upper bound: may be inf or NaN (callers with their own bound)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    if not isinstance(text, str):
        # ValueError, not TypeError: pydantic turns only ValueError into a validation error naming the key
        raise ValueError("expected a duration such as '30s', '10m' or '1h30m'")  # noqa: TRY004
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration such as '30s', '10m' or '1h30m'")
    return total


MAX_DURATION = 100 * 365 * 86400.0  # a century: longer is a typo, and datetime arithmetic overflows


def _bounded(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError("a duration must be at most 100 years")
    return seconds


def parse_size(text: str | int) -> int:
    """`8MiB`, `512KiB`, `1000000` -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size such as '8MiB' or '512KiB'")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


# Durations and sizes are written the way operators write them ("10m", "8MiB"); numbers also work.
Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]


class _Section(BaseModel):
    # hide_input_in_errors: a ValidationError's text never holds a value (a password, a URL with one).
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)


def _read_secret(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None


def _readable(path: str) -> str:
    """A `*_file` key's check: the file can be read. Also read by the model's validator, which sets the
    secret; checked here first so that a problem names the key (and the line or variable that set it)."""
    if path:
        _read_secret(path)
    return path
