"""What an operator asks for when making a silence: `SilenceRequest`, validated strictly (docs/http-api.md).

Both APIs build one: `POST /api/v1/silences` parses its body into it directly; Alertmanager's
`POST /api/v2/silences` (`ioc.api.alertmanager_v2`) translates its `PostableSilence` into it. What
cannot be checked without the clock (an end in the past, too far ahead) is `ioc.alerts.silence`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from ioc.alerts.errors import InvalidSilence
from ioc.config import parse_duration_unbounded
from ioc.matchers import MatcherSpec

# A silence starts and ends within [1970-01-01, now + MAX_AHEAD]: every time then fits a datetime, the
# store and the API's RFC 3339 (an `ends_at` of year 9999 at -23:59, or `"duration": "99999999999d"`,
# used to fail only when the silence was written out: a 500). Ten years is longer than any maintenance.
MAX_AHEAD_DAYS = 3650
MAX_AHEAD = MAX_AHEAD_DAYS * 86400.0
_LAST_SECOND = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last time RFC 3339 (and a datetime) can show


def _silence_duration(value: object) -> float:
    """A duration (`"2h"`, or seconds) that is finite, positive and at most MAX_AHEAD."""
    try:
        seconds = parse_duration_unbounded(value)  # type: ignore[arg-type]  # it refuses what is not a duration
    except OverflowError:  # an integer past what a float holds
        seconds = math.inf
    if math.isnan(seconds):  # JSON's NaN, which pydantic's parser takes
        raise ValueError("not a number")
    if seconds > MAX_AHEAD:
        raise ValueError(f"longer than {MAX_AHEAD_DAYS}d, the longest a silence may last")
    if seconds <= 0:
        raise ValueError("must be more than 0s")
    return seconds


def _showable(value: datetime) -> datetime:
    """A time the store and the API can hold and show: from 1970 to the end of year 9999 in UTC (year
    9999 at -23:59 is year 10000 in UTC). How far ahead of now is checked against the clock, later."""
    try:
        seconds = value.timestamp()
    except (OverflowError, ValueError):  # year 1 at +14:00 is before year 1 in UTC
        seconds = -1.0
    if seconds < 0:
        raise ValueError("before 1970-01-01T00:00:00Z")
    if seconds > _LAST_SECOND:
        raise ValueError("after 9999-12-31T23:59:59Z")
    return value


SilenceDuration = Annotated[float, BeforeValidator(_silence_duration)]
SilenceTime = Annotated[AwareDatetime, AfterValidator(_showable)]


class SilenceRequest(BaseModel):
    """`POST /api/v1/silences`: `matchers`, `starts_at` (default now), `ends_at` (or, an extension,
    `duration` such as `"2h"`), `comment`, `author` (default: the operator who asks)."""

    model_config = ConfigDict(extra="forbid")

    matchers: Annotated[list[MatcherSpec], Field(min_length=1, max_length=64)]
    starts_at: SilenceTime | None = None
    ends_at: SilenceTime | None = None
    duration: SilenceDuration | None = None
    comment: Annotated[str, Field(max_length=4096, strict=True)] = ""
    author: Annotated[str, Field(min_length=1, max_length=256, strict=True)] | None = None

    @classmethod
    def parse(cls, body: bytes | str | Mapping[str, Any]) -> SilenceRequest:
        """The request from a JSON body (or a mapping), or InvalidSilence naming the field."""
        try:
            if isinstance(body, bytes | str):
                return cls.model_validate_json(body)
            return cls.model_validate(body)
        except ValidationError as error:
            raise InvalidSilence(describe(error)) from None


def describe(error: ValidationError) -> str:
    """A pydantic error as `field.path: what was wrong` (the first few, joined by `; `)."""
    problems = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "json_invalid":
            message = f"not valid JSON ({item.get('ctx', {}).get('error', 'invalid')})"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
