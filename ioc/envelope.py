"""The event envelope of docs/events.md: the single source of truth for what a valid event is.

Every transport decodes into these models; nothing downstream re-checks what they guarantee.
Validation is strict (no coercion, no unknown keys) so a vendor's mistake is named, not guessed at.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from typing import Annotated, Literal, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
)
from pydantic_core import PydanticCustomError

SOURCE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
METRIC_PATTERN = r"^[a-z][a-z0-9_.]*$"
MAX_TAGS = 32

# Tag keys the schema itself uses (docs/influxdb.md); an event tag of the same name would overwrite them.
# `area_former`: the code an event carried before the intake converted it (CONTRACT §10, ioc.areas).
RESERVED_TAG_KEYS = frozenset({"source", "area", "area_former", "entity", "time", "kpi", "level", "rule",
                               "severity"})
# Keys starting with "_" are reserved by InfluxDB itself (TAG_KEY_PATTERN refuses them).

DossierStatus: TypeAlias = Literal[
    "received",
    "processing",
    "supplement",
    "interoperating",
    "paying",
    "releasing",
    "done",
    "denied",
    "unresolved",
    "cancelled",
]
FINISHED_DOSSIER_STATUSES: frozenset[str] = frozenset({"done", "denied", "cancelled"})
StatusState: TypeAlias = Literal["up", "degraded", "down"]
Channel: TypeAlias = Literal["online", "counter", "post"]
AreaLevel: TypeAlias = Literal["province", "district", "commune"]


def tag_value_problem(value: str) -> str | None:
    """Why line protocol cannot hold `value` as a tag key or value exactly, or None when it can."""
    if value == "":
        return "empty value cannot be stored as a tag"
    if "\n" in value or "\r" in value:
        return "a newline cannot be stored in a tag value"
    if value.endswith("\\"):
        return "a trailing backslash cannot be stored in a tag value"
    return None


# What line protocol can hold in a tag exactly (see `tag_value_problem`), checked in pydantic-core rather
# than in a Python validator because this runs for every event.
TAG_VALUE_PATTERN = r"^[^\r\n]*[^\r\n\\]$"
TAG_KEY_PATTERN = r"^[^_\r\n\\]([^\r\n]*[^\r\n\\])?$"
TagValue = Annotated[str, Field(pattern=TAG_VALUE_PATTERN, max_length=256)]
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN, max_length=128)]

# Every time of an event must be one the whole path can hold, or the vendor would be told "stored" for a
# point that InfluxDB refuses later (nanoseconds in a signed 64-bit integer: 1677-09-21 .. 2262-04-11),
# or a tracker would fail on it (dates in UTC+7, a near-due date a year before a due date). 1970: neither
# VictoriaMetrics nor our trackers' sentinels take negative timestamps; 2200: decades short of 2262, so
# any offset arithmetic stays inside. Checked in pydantic-core (a comparison, no Python call per event).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)  # excluded
TIME_RANGE_TEXT = "1970-01-01 .. 2199-12-31"
TIME_FIELDS = frozenset({"time", "received_at", "due_at", "finished_at"})


def _rfc3339_text(value: object) -> object:
    """Only text in RFC 3339 (or a datetime, from code). pydantic reads a string of digits ("1700000000")
    as Unix seconds even in strict mode: a vendor's mistake it would guess at. An RFC 3339 time starts with
    a four-digit year and a dash. (The field is then parsed in lax mode, as strict mode does not take the
    string this validator hands on; numbers never get that far.)"""
    if type(value) is str:
        if len(value) < 10 or value[4] != "-":
            raise PydanticCustomError("datetime_parsing", "not an RFC 3339 time")
        return value
    if isinstance(value, datetime):
        return value
    raise PydanticCustomError("datetime_type", "must be an RFC 3339 time string")


# The bounds before the BeforeValidator: so they are the datetime schema's own (compared in pydantic-core).
# After it, pydantic wraps each in a Python function: 3.5 µs a time field against 1.5 µs, measured.
EventTime = Annotated[AwareDatetime, Field(strict=False, ge=TIME_MIN, lt=TIME_MAX, description=(
    f"RFC 3339 with an offset, from {TIME_MIN:%Y-%m-%d} to {TIME_MAX.year - 1}-12-31 (UTC)")),
    BeforeValidator(_rfc3339_text)]


class _Envelope(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=128)]
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    time: EventTime
    area: Annotated[str, Field(pattern=TAG_VALUE_PATTERN, max_length=64)] | None = None
    tags: Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS)] | None = None

    @field_validator("tags")
    @classmethod
    def _tags_not_reserved(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        if tags and not RESERVED_TAG_KEYS.isdisjoint(tags):
            reserved = sorted(RESERVED_TAG_KEYS.intersection(tags))
            raise ValueError(f"tag {reserved[0]!r}: the name is reserved by the schema")
        return tags


class TelemetryEvent(_Envelope):
    """A measurement: `metric` = `value` (e.g. `env.aqi` = 160)."""

    type: Literal["telemetry"]
    metric: Annotated[str, Field(pattern=METRIC_PATTERN, max_length=128)]
    value: Annotated[float, Field(allow_inf_nan=False)]
    unit: Annotated[str, Field(max_length=32)] | None = None


class StatusEvent(_Envelope):
    """The state of an entity (a cell site, a service)."""

    type: Literal["status"]
    entity: Annotated[str, Field(pattern=TAG_VALUE_PATTERN, max_length=128)]
    state: StatusState
    detail: Annotated[str, Field(max_length=1024)] | None = None


class DossierEvent(_Envelope):
    """A change of a one-stop-shop dossier (hồ sơ TTHC)."""

    type: Literal["dossier"]
    dossier_id: Annotated[str, Field(min_length=1, max_length=128)]
    procedure: Annotated[str, Field(pattern=TAG_VALUE_PATTERN, max_length=64)]
    status: DossierStatus
    received_at: EventTime
    due_at: EventTime
    finished_at: EventTime | None = None
    channel: Channel
    level: AreaLevel


Event: TypeAlias = Annotated[TelemetryEvent | StatusEvent | DossierEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[TelemetryEvent | StatusEvent | DossierEvent] = TypeAdapter(Event)
AnyEvent: TypeAlias = TelemetryEvent | StatusEvent | DossierEvent


_MICROSECOND = timedelta(microseconds=1)
_UNIX_EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
_OFFSETS: dict[tzinfo, int] = {}  # utcoffset in microseconds by tzinfo: calling into it is the slow part


def event_time_ns(time: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond (a float timestamp would round).

    On the hot path: datetime arithmetic with pydantic's TzInfo costs ~1.5 µs; integer fields plus a
    cached offset ~0.6 µs. Offsets are few (RFC 3339 offsets are whole minutes within a day)."""
    zone = time.tzinfo
    assert zone is not None, "event times are timezone-aware"
    try:
        offset = _OFFSETS[zone]
    except KeyError:
        delta = zone.utcoffset(time)
        assert delta is not None
        offset = delta // _MICROSECOND
        if len(_OFFSETS) < 4096:
            _OFFSETS[zone] = offset
    micros = (((time.toordinal() - _UNIX_EPOCH_ORDINAL) * 86400 + time.hour * 3600 + time.minute * 60
               + time.second) * 1_000_000 + time.microsecond - offset)
    return micros * 1000
