"""Bytes from a transport -> validated events or specific rejections (docs/events.md, docs/operations.md).

One payload may hold one event, a JSON array of events, or (HTTP) NDJSON. Each item is judged alone:
a bad item becomes a `Rejection` naming the field and what was wrong, and never takes its neighbours down.

Hostile payloads cost memory in proportion to their size, never per item (see `ioc.ingest.items`):
- more than `max_items` items: one `too_many_items` rejection for the whole payload, counted before parsing;
- an item over `MAX_ITEM_BYTES` is refused unparsed (`item_too_large`): no valid event comes near it,
  and a big item is what could make pydantic build an error per key or a Python object per nested value;
- an array is split into zero-copy views of the payload, never parsed into Python objects first;
- a rejection lists at most `MAX_LISTED_ERRORS` errors and echoes at most `_ECHO` characters of a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import ValidationError

from ioc.envelope import (
    EVENT_ADAPTER,
    MAX_TAGS,
    SOURCE_PATTERN,
    TAG_KEY_PATTERN,
    TAG_VALUE_PATTERN,
    TIME_FIELDS,
    TIME_RANGE_TEXT,
    AnyEvent,
    tag_value_problem,
)
from ioc.ingest.items import ItemsError, TooManyItems, ndjson_lines, split_array, utf8_error

# The largest valid event is ~55 KB of plain UTF-8 (32 tags of 128 + 256 four-byte characters, a 1 KiB
# detail): 64 KiB holds every event a vendor writes without `\u` escapes for non-ASCII characters.
MAX_ITEM_BYTES = 64 * 1024
DEFAULT_MAX_ITEMS = 10_000  # `[intake] max_items`
MAX_LISTED_ERRORS = 5  # errors named in one rejection's message; the rest are counted ("and 7 more")
TOO_MANY_ITEMS = "too_many_items"  # the code of a payload refused whole for its number of items
_ECHO = 64  # characters of a vendor's value (or key) quoted back in a message

_SOURCE_RE = re.compile(SOURCE_PATTERN)
_WHITESPACE = b" \t\r\n"


# Not frozen: a frozen dataclass sets each field through object.__setattr__, ~1 µs an item here.
@dataclass(slots=True)
class Rejection:
    """Why an item was refused. `code` is a short, stable label for metrics; `message` is for people;
    `raw` is the item's bytes (or the whole payload's) for the dead letter."""

    code: str
    message: str
    raw: bytes
    source: str | None = None  # the item's own `source`, when it named a plausible one


@dataclass(slots=True)
class Accepted:
    event: AnyEvent
    raw: bytes


Decoded = Accepted | Rejection

_TYPE_WORDS = {
    "float_type": "expected a number",
    "int_type": "expected an integer",
    "string_type": "expected a string",
    "dict_type": "expected an object",
    "bool_type": "expected true or false",
    "list_type": "expected an array",
    "finite_number": "not a finite number",
    "missing": "required field missing",
    "extra_forbidden": "unknown field",
    "timezone_aware": "must be an RFC 3339 time with an offset (e.g. +07:00 or Z)",
    "datetime_type": "must be an RFC 3339 time string",
    "datetime_parsing": "not an RFC 3339 time",
    "datetime_from_date_parsing": "not an RFC 3339 time",
    "string_too_short": "must not be empty",
}
_FIRST_BYTE_TYPES = {ord("["): "an array", ord('"'): "a string", ord("t"): "a boolean", ord("f"): "a boolean",
                     ord("n"): "null"}


def _short(value: object) -> str:
    """`repr` of a vendor's value, cut to `_ECHO` characters: a message never grows with the input."""
    text = repr(value)
    return text if len(text) <= _ECHO else f"{text[:_ECHO]}...({len(text)} chars)"


def _field_message(error: Any) -> tuple[str, str]:
    """(code, 'field: what was wrong') for one pydantic error."""
    kind = error["type"]
    # The first element of loc is the union member ('telemetry'); the field path follows.
    loc = [str(part) for part in error["loc"][1:]] if error["loc"] else []
    if loc[-1:] == ["[key]"]:  # pydantic's path to a dict key: name the dict, the message names the key
        loc = loc[:-2]
    field = ".".join(part if len(part) <= _ECHO else _short(part) for part in loc) or "event"
    if kind == "union_tag_not_found":
        return "invalid_field", "type: required field missing (telemetry, status or dossier)"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "?")
        return "invalid_field", f"type: must be telemetry, status or dossier, got {_short(tag)}"
    if kind == "too_long" and loc[:1] == ["tags"]:
        return "too_many_tags", f"tags: more than {MAX_TAGS} tags"
    if kind in ("greater_than_equal", "less_than") and loc[-1:] and loc[-1] in TIME_FIELDS:
        value = error.get("input")
        shown = value if isinstance(value, str) and len(value) <= _ECHO else _short(value)
        return "time_out_of_range", f"{field}: {shown} is outside the range a store can hold ({TIME_RANGE_TEXT})"
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return ("bad_tag" if loc[:1] == ["tags"] else "invalid_field"), f"{field}: {message}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        value = error.get("input")
        if pattern == TAG_KEY_PATTERN and isinstance(value, str):
            problem = "names starting with '_' are reserved" if value.startswith("_") else tag_value_problem(value)
            return "bad_tag", f"{field}: tag name {_short(value)}: {problem}"
        if pattern == TAG_VALUE_PATTERN and isinstance(value, str):
            return "bad_tag", f"{field}: {tag_value_problem(value)}"
        return "invalid_field", f"{field}: does not match {pattern}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "?")
        return "invalid_field", f"{field}: must be one of {expected}, got {_short(error.get('input'))}"
    words = _TYPE_WORDS.get(kind)
    if words is None:
        words = str(error["msg"])[:1].lower() + str(error["msg"])[1:]
    if kind in ("float_type", "string_type", "bool_type", "dict_type") and "input" in error:
        words += f", got {_json_type(error['input'])}"
    return "invalid_field", f"{field}: {words}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class _Claim(msgspec.Struct):
    """The `source` of an item, read without building anything else (other keys are skipped)."""

    source: Any = None


_CLAIM = msgspec.json.Decoder(_Claim)


def _claimed_source(raw: bytes) -> str | None:
    """The `source` an unparseable-as-event item claims, if it is a plausible topic segment."""
    try:
        source = _CLAIM.decode(raw).source
    except (msgspec.MsgspecError, RecursionError):
        return None
    return source if isinstance(source, str) and _SOURCE_RE.match(source) else None


def reject_invalid(raw: bytes, error: ValidationError) -> Rejection:
    """The rejection for an item pydantic refused, with the most specific reason it can name."""
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        bad = utf8_error(raw)
        if bad is not None:
            return Rejection("bad_utf8", f"payload: not valid UTF-8 (byte {bad})", raw)
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        return Rejection("invalid_json", f"payload: invalid JSON: {detail}", raw)
    if first["type"] in ("dict_type", "model_type") and not first["loc"]:
        return Rejection("not_an_object", f"payload: expected a JSON object, got {_json_type(first.get('input'))}",
                         raw)
    messages, codes = [], []
    for item in errors[:MAX_LISTED_ERRORS]:
        code, message = _field_message(item)
        codes.append(code)
        messages.append(message)
    if len(errors) > MAX_LISTED_ERRORS:
        messages.append(f"and {len(errors) - MAX_LISTED_ERRORS} more")
    # The most specific code wins so the metric label says what matters.
    code = next((c for c in ("bad_tag", "too_many_tags", "time_out_of_range") if c in codes), codes[0])
    return Rejection(code, "; ".join(messages), raw, _claimed_source(raw))


def too_large(raw: bytes) -> Rejection:
    return Rejection("item_too_large", f"event: {len(raw)} bytes is over the limit of {MAX_ITEM_BYTES} for one "
                                       "event", raw)


def decode_object(raw: bytes) -> Decoded:
    """Validate one JSON item (the fast path: pydantic parses the bytes directly)."""
    if len(raw) > MAX_ITEM_BYTES:
        return too_large(raw)
    try:
        return Accepted(EVENT_ADAPTER.validate_json(raw), raw)
    except ValidationError as error:
        return reject_invalid(raw, error)


def _decode_item(raw: bytes) -> Decoded:
    """One item of an array (already known to be one JSON value)."""
    if raw[:1] != b"{":
        kind = _FIRST_BYTE_TYPES.get(raw[0], "a number") if raw else "nothing"
        return Rejection("not_an_object", f"payload: expected a JSON object, got {kind}", raw)
    return decode_object(raw)


def _first_byte(payload: bytes) -> int | None:
    stripped = payload.lstrip(_WHITESPACE)
    return stripped[0] if stripped else None


def too_many(count: int, max_items: int, payload: bytes) -> Rejection:
    """The rejection of a whole payload of more than `max_items` items (HTTP answers it with 413)."""
    return Rejection(TOO_MANY_ITEMS, f"too many items: {count} > {max_items}", payload)


def _empty(payload: bytes) -> Rejection:
    return Rejection("empty_batch", "payload: a batch with no events", payload)


def decode_payload(payload: bytes, *, max_bytes: int, max_items: int = DEFAULT_MAX_ITEMS,
                   ndjson: bool = False) -> list[Decoded]:
    """All items of a payload, in order. Never raises on bad input; a payload refused whole (too big,
    too many items, not JSON, empty) is one rejection whose `raw` is the payload itself."""
    if len(payload) > max_bytes:
        return [Rejection("oversized", f"payload: {len(payload)} bytes is over the limit of {max_bytes}",
                          payload)]
    if ndjson:
        return _decode_ndjson(payload, max_items)
    first = _first_byte(payload)
    if first == ord("["):
        return _decode_array(payload, max_items)
    if first is None:
        return [Rejection("invalid_json", "payload: empty", payload)]
    return [decode_object(payload)]  # pydantic names what it is (invalid JSON, bad UTF-8, not an object)


def _decode_ndjson(payload: bytes, max_items: int) -> list[Decoded]:
    try:
        found = ndjson_lines(payload, max_items)
    except TooManyItems as many:
        return [too_many(many.count, max_items, payload)]
    if not found:
        return [_empty(payload)]
    return [decode_object(line) for line in found]


def _decode_array(payload: bytes, max_items: int) -> list[Decoded]:
    try:
        items = split_array(payload, max_items)
    except TooManyItems as many:
        return [too_many(many.count, max_items, payload)]
    except ItemsError as error:
        bad = utf8_error(payload)
        if bad is not None:
            return [Rejection("bad_utf8", f"payload: not valid UTF-8 (byte {bad})", payload)]
        return [Rejection("invalid_json", f"payload: {error}", payload)]
    if not items:
        return [_empty(payload)]
    decoded = [_decode_item(bytes(item)) for item in items]
    # A JSON text is UTF-8 as a whole: bad UTF-8 inside an item (the splitter does not look into strings)
    # refuses the whole payload. Only a payload that is not ASCII and had an item refused can hold it, so
    # a good batch never pays for the check.
    if not payload.isascii() and any(type(item) is Rejection for item in decoded):
        bad = utf8_error(payload)
        if bad is not None:
            return [Rejection("bad_utf8", f"payload: not valid UTF-8 (byte {bad})", payload)]
    return decoded
