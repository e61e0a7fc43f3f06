"""InfluxDB line protocol for the schema of docs/influxdb.md.

Rendering is on the hot path, so events are turned into lines by hand (influxdb-client's `Point` costs
~5 µs a point). Escaping follows what InfluxDB 1.x and the v2 API parse back exactly: in tag keys and
values `,` `=` and space are escaped and a backslash stays as it is; in string fields `\\` and `"` are.
Tag values that cannot round-trip (newline, trailing backslash, empty) are refused by the event models
before they get here. Numbers are always written as floats so a field never changes type.

`Points` holds rendered lines with the origin of each (the event's source and id, as `origin_key`), so a
sink can trace a point the database refuses to its event (`Origin.of`) without parsing the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ioc.envelope import AnyEvent, DossierEvent, StatusEvent, TelemetryEvent, event_time_ns

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_STRING_FIELD_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


# Tag keys and values as escaped. They are vocabularies (stations, devices, sites), so a lookup (~60 ns)
# replaces str.translate (~280 ns) for each; render_event went from 3.6 to 1.6 µs for a telemetry event
# with an area and three tags. Bounded: a vendor sending ever new values only empties it now and then.
_ESCAPED: dict[str, str] = {}
_ESCAPED_MAX = 100_000


def escape_tag(value: str) -> str:
    """Escape a tag key or value (the caller has checked it can be held at all)."""
    escaped = _ESCAPED.get(value)
    if escaped is None:
        if len(_ESCAPED) >= _ESCAPED_MAX:
            _ESCAPED.clear()
        escaped = _ESCAPED[value] = value.translate(_TAG_ESCAPES)
    return escaped


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def string_field(value: str) -> str:
    """A quoted string field value."""
    return '"' + value.translate(_STRING_FIELD_ESCAPES) + '"'


def float_field(value: float) -> str:
    # repr() is the shortest exact form; it always has a '.' or an exponent, so InfluxDB reads a float.
    return repr(float(value))


def render_point(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, float | str | bool],
    time_ns: int,
) -> str:
    """One line of line protocol. Tags with a None value are left out; tags are sorted by key."""
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value is not None:
            parts.append(f"{escape_tag(key)}={escape_tag(value)}")
    rendered_fields = []
    for key, field in fields.items():
        if isinstance(field, str):
            rendered = string_field(field)
        elif isinstance(field, bool):
            rendered = "true" if field else "false"
        else:
            rendered = float_field(field)
        rendered_fields.append(f"{escape_tag(key)}={rendered}")
    return f"{','.join(parts)} {','.join(rendered_fields)} {time_ns}"


def _seconds(ns: int) -> float:
    return ns / 1e9


def render_event(event: AnyEvent, time_ns: int | None = None) -> str:
    """The point an event is stored as (docs/influxdb.md); `time_ns` when the caller has it already."""
    if time_ns is None:
        time_ns = event_time_ns(event.time)
    if isinstance(event, TelemetryEvent):
        # Hand-inlined: this is the path nearly all traffic takes. `metric` and `source` are restricted
        # by their patterns to characters that need no escaping. Tags stay in the order sent: InfluxDB
        # sorts a series key itself, and sorting here would cost more than it does there.
        line = f"{event.metric},source={event.source}"
        known = _ESCAPED.get
        if event.area is not None:
            line += ",area=" + (known(event.area) or escape_tag(event.area))
        if event.tags:
            line += "".join([f",{known(key) or escape_tag(key)}={known(value) or escape_tag(value)}"
                             for key, value in event.tags.items()])
        return f"{line} value={float(event.value)!r} {time_ns}"
    if isinstance(event, StatusEvent):
        up = 1.0 if event.state == "up" else 0.0
        tags: dict[str, str | None] = {"source": event.source, "entity": event.entity, "area": event.area,
                                       "area_former": _area_former(event)}
        return render_point("status", tags, {"state": event.state, "up": up}, time_ns)
    return _render_dossier(event, time_ns)


def _area_former(event: AnyEvent) -> str | None:
    """The code a status or dossier event carried before the intake converted it (CONTRACT §10); their
    points hold no vendor tags, but this one is the intake's own."""
    return event.tags.get("area_former") if event.tags else None


def _render_dossier(event: DossierEvent, time_ns: int) -> str:
    # Not in the contract's table: an extension so a dossier's history can be charted before the KPIs
    # of the rule engine derive from it. Tags are bounded vocabularies; the id is a field.
    tags: dict[str, str | None] = {
        "source": event.source,
        "area": event.area,
        "procedure": event.procedure,
        "status": event.status,
        "channel": event.channel,
        "level": event.level,
        "area_former": _area_former(event),
    }
    fields: dict[str, float | str | bool] = {
        "dossier_id": event.dossier_id,
        "received_at": _seconds(event_time_ns(event.received_at)),
        "due_at": _seconds(event_time_ns(event.due_at)),
    }
    if event.finished_at is not None:
        fields["finished_at"] = _seconds(event_time_ns(event.finished_at))
    return render_point("dossier", tags, fields, time_ns)


def render_kpi(kpi: str, area: str, level: str, value: float, target: float | None, time_ns: int) -> str:
    """The `kpi` measurement (docs/influxdb.md): tags `kpi`, `area`, `level`; fields `value`, `target`."""
    fields: dict[str, float | str | bool] = {"value": value}
    if target is not None:
        fields["target"] = target
    return render_point("kpi", {"kpi": kpi, "area": area, "level": level}, fields, time_ns)


def render_alert(rule: str, severity: str, area: str | None, state: str, fingerprint: str,
                 value: float | None, time_ns: int, *, entity: str | None = None) -> str:
    """The `alert` measurement (docs/influxdb.md): tags `rule`, `severity`, `area`; fields `state`,
    `fingerprint`, `value` (left out when the alert has none, e.g. an absence).

    Extension: an `entity` tag for alerts grouped by entity, so two cell sites of one commune changing
    at the same instant are two series, not one point overwriting the other."""
    fields: dict[str, float | str | bool] = {"state": state, "fingerprint": fingerprint}
    if value is not None:
        fields["value"] = value
    tags = {"rule": rule, "severity": severity, "area": area, "entity": entity}
    return render_point("alert", tags, fields, time_ns)


# --- where a point came from -------------------------------------------------------------------


class Origin(NamedTuple):
    """Where a point came from: the accepted event's source and id."""

    source: str
    event_id: str

    @classmethod
    def of(cls, key: str | None) -> Origin | None:
        """The origin named by an origin key (None for a point without one)."""
        if key is None:
            return None
        source, _, event_id = key.partition(_SEPARATOR)
        return cls(source, event_id)


_SEPARATOR = "\x00"  # never in a source (its pattern): the first one ends the source, whatever the id holds


def origin_key(source: str, event_id: str) -> str:
    """The key a point's origin travels as: the same string as the intake's event key
    (`ioc.ingest.dedup.dedup_key`, held equal by a test), so the pipeline hands over the keys it has
    already built and no object is made per point on the hot path."""
    return f"{source}{_SEPARATOR}{event_id}"


class Points(list[str]):
    """Rendered points and, in `origins`, the origin key of each line (same length, same order), so a
    point the database refuses is traced to its event without reading the line back.

    A list subclass so every sink and every caller that knows only lists keeps working; the pipeline
    fills `origins` with the event keys it builds anyway."""

    __slots__ = ("origins",)

    def __init__(self, lines: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        super().__init__(lines)
        self.origins: list[str] = list(origins)
