"""Silences, as in Alertmanager: label matchers and a time span during which matching alerts are muted.

A silence never stops an alert from being recorded (CONTRACT §5): a silenced alert is stored, listed
(`silenced: true`), sent on the SSE stream and kept in its retained MQTT state; only webhooks and
`ioc/v1/alerts/{rule}` skip it. Its `status` follows the wall clock: `pending` before `starts_at`,
`active` until `ends_at`, then `expired`. Deleting a silence expires it (`ends_at` = now), so it stays
listed with the others for `[alerts] silence_retention` (5 days) and is then purged.

`Muter` is the one question silences and inhibition answer for the notifiers: is this alert muted?
"""

from __future__ import annotations

import builtins
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeAlias

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from ioc.alerts.alert import Alert, rfc3339
from ioc.alerts.audit import AuditEntry
from ioc.alerts.errors import InvalidSilence, SilenceNotFound
from ioc.alerts.matchers import Matcher, MatcherSpec, matches_all
from ioc.config import parse_duration_unbounded

if TYPE_CHECKING:
    from ioc.alerts.store import AlertStore

SilenceStatus: TypeAlias = Literal["pending", "active", "expired"]
STATUSES: tuple[SilenceStatus, ...] = ("pending", "active", "expired")
Clock = Callable[[], float]

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


class Muter(Protocol):
    """Whether an alert's notifications are muted now (by a silence, by an inhibition rule)."""

    def muted(self, alert: Alert) -> bool: ...


@dataclass(frozen=True, slots=True)
class Silence:
    """A silence; times are wall-clock Unix seconds."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    comment: str
    author: str
    created_at: float
    updated_at: float

    def status(self, now: float) -> SilenceStatus:
        if now < self.starts_at:
            return "pending"
        return "active" if now < self.ends_at else "expired"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches_all(self.matchers, labels)

    def as_json(self, now: float) -> dict[str, Any]:
        """The API shape: the POST body's fields plus `id`, `status`, `created_at`, `updated_at`."""
        return {
            "id": self.id,
            "matchers": [matcher.as_json() for matcher in self.matchers],
            "starts_at": rfc3339(self.starts_at),
            "ends_at": rfc3339(self.ends_at),
            "comment": self.comment,
            "author": self.author,
            "status": self.status(now),
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


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


def _seconds(value: datetime) -> float:
    return value.timestamp()


class Silences:
    """The silences, in memory and in the store. Not thread-safe on its own: the `AlertManager` calls it
    under its lock. `muted(alert)` is the `Muter` answer (an active silence matches the alert)."""

    def __init__(self, store: AlertStore | None, *, clock: Clock = time.time,
                 retention: float = 5 * 86400.0) -> None:
        self._store = store
        self._clock = clock
        self.retention = retention
        self._silences: dict[str, Silence] = {}
        if store is not None:
            self._silences = {silence.id: silence for silence in store.silences()}

    def create(self, request: SilenceRequest, *, actor: str) -> Silence:
        """A new silence from a validated request; InvalidSilence when its times or matchers make no
        sense (an end before the start, in the past or more than MAX_AHEAD ahead, matchers that would
        mute every alert)."""
        now = self._clock()
        starts_at = _seconds(request.starts_at) if request.starts_at is not None else now
        if request.ends_at is not None and request.duration is not None:
            raise InvalidSilence("ends_at: give ends_at or duration, not both")
        if request.ends_at is not None:
            ends_at = _seconds(request.ends_at)
        elif request.duration is not None:
            ends_at = starts_at + request.duration  # not after 9999 when it ends in the past or too soon
        else:
            raise InvalidSilence("ends_at: required (or a duration such as '2h')")
        if ends_at <= now:
            raise InvalidSilence(f"ends_at: {rfc3339(ends_at)} is in the past")
        if ends_at <= starts_at:
            raise InvalidSilence(f"ends_at: {rfc3339(ends_at)} is not after starts_at {rfc3339(starts_at)}")
        too_far = f"more than {MAX_AHEAD_DAYS} days from now"
        if starts_at > now + MAX_AHEAD:
            raise InvalidSilence(f"starts_at: {too_far}")
        if ends_at > now + MAX_AHEAD:
            field = "ends_at" if request.ends_at is not None else "duration"
            raise InvalidSilence(f"{field}: the silence would end {too_far}")
        matchers = tuple(spec.build() for spec in request.matchers)
        if all(matcher.matches({}) for matcher in matchers):
            raise InvalidSilence("matchers: at least one matcher must not match an empty label, "
                                 "or the silence would mute every alert")
        silence = Silence(id=uuid.uuid4().hex, matchers=matchers, starts_at=starts_at, ends_at=ends_at,
                          comment=request.comment, author=request.author or actor, created_at=now,
                          updated_at=now)
        self._save(silence, AuditEntry(now, actor, "silence.create", silence.id, _detail(silence)))
        return silence

    def expire(self, silence_id: str, *, actor: str) -> tuple[Silence, bool]:
        """Expire a silence now (what DELETE does); (the silence, whether it changed). An expired one is
        left as it is; a pending one ends before it began (`starts_at` = `ends_at` = now)."""
        silence = self.get(silence_id)
        now = self._clock()
        if silence.status(now) == "expired":
            return silence, False
        expired = replace(silence, starts_at=min(silence.starts_at, now), ends_at=now, updated_at=now)
        self._save(expired, AuditEntry(now, actor, "silence.expire", silence_id, _detail(expired)))
        return expired, True

    def _save(self, silence: Silence, audit: AuditEntry) -> None:
        if self._store is not None:
            self._store.save_silence(silence, audit)
        self._silences[silence.id] = silence

    def get(self, silence_id: str) -> Silence:
        silence = self._silences.get(silence_id)
        if silence is None:
            raise SilenceNotFound(f"no silence with id {silence_id!r}")
        return silence

    def list(self, status: SilenceStatus | None = None) -> list[Silence]:
        """Every silence still listed (of one status), active first, then pending, then expired; the
        newest first within each."""
        now = self._clock()
        order = {"active": 0, "pending": 1, "expired": 2}
        found = [s for s in self._silences.values() if status is None or s.status(now) == status]
        return sorted(found, key=lambda s: (order[s.status(now)], -s.created_at))

    def matching(self, labels: Mapping[str, str], now: float | None = None) -> tuple[str, ...]:
        """The ids of the active silences that match the label set."""
        now = self._clock() if now is None else now
        return tuple(sorted(silence.id for silence in self._silences.values()
                            if silence.starts_at <= now < silence.ends_at and silence.matches(labels)))

    def muted(self, alert: Alert) -> bool:
        return bool(self.matching(alert.match_labels()))

    def next_transition(self, now: float) -> float | None:
        """The next time a silence starts or ends after `now` (when muting must be looked at again)."""
        times = [t for silence in self._silences.values() for t in (silence.starts_at, silence.ends_at)
                 if t > now]
        return min(times, default=None)

    def purge(self) -> builtins.list[str]:
        """Forget silences expired for longer than the retention; their ids."""
        limit = self._clock() - self.retention
        gone = [sid for sid, silence in self._silences.items() if silence.ends_at < limit]
        for sid in gone:
            del self._silences[sid]
        if gone and self._store is not None:
            self._store.delete_silences(gone)
        return gone

    def counts(self) -> dict[SilenceStatus, int]:
        """How many silences are in each status now (every status present)."""
        now = self._clock()
        found: dict[SilenceStatus, int] = dict.fromkeys(STATUSES, 0)
        for silence in self._silences.values():
            found[silence.status(now)] += 1
        return found


def _detail(silence: Silence) -> dict[str, Any]:
    return {"matchers": [str(matcher) for matcher in silence.matchers],
            "starts_at": rfc3339(silence.starts_at), "ends_at": rfc3339(silence.ends_at),
            "comment": silence.comment, "author": silence.author}
