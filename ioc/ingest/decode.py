"""Bytes from a transport -> validated events or specific rejections (CONTRACT §2).

One payload may hold one event, a JSON array of events, or (HTTP) NDJSON. Each item is judged alone:
a bad item becomes a `Rejection` naming the field and what was wrong, and never takes its neighbours down.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from ioc.models import (
    EVENT_ADAPTER,
    MAX_TAGS,
    SOURCE_PATTERN,
    TAG_KEY_PATTERN,
    TAG_VALUE_PATTERN,
    AnyEvent,
    tag_value_problem,
)

_SOURCE_RE = re.compile(SOURCE_PATTERN)
_WHITESPACE = b" \t\r\n"


# Not frozen: a frozen dataclass sets each field through object.__setattr__, ~1 µs an item here.
@dataclass(slots=True)
class Rejection:
    """Why an item was refused. `code` is a short, stable label for metrics; `message` is for people."""

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


def _field_message(error: Any) -> tuple[str, str]:
    """(code, 'field: what was wrong') for one pydantic error."""
    kind = error["type"]
    # The first element of loc is the union member ('telemetry'); the field path follows.
    loc = [str(part) for part in error["loc"][1:]] if error["loc"] else []
    if loc[-1:] == ["[key]"]:  # pydantic's path to a dict key: name the dict, the message names the key
        loc = loc[:-2]
    field = ".".join(loc) or "event"
    if kind == "union_tag_not_found":
        return "invalid_field", "type: required field missing (telemetry, status or dossier)"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", "?")
        return "invalid_field", f"type: must be telemetry, status or dossier, got {tag!r}"
    if kind == "too_long" and loc[:1] == ["tags"]:
        return "too_many_tags", f"tags: more than {MAX_TAGS} tags"
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return ("bad_tag" if loc[:1] == ["tags"] else "invalid_field"), f"{field}: {message}"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        value = error.get("input")
        if pattern == TAG_KEY_PATTERN and isinstance(value, str):
            problem = "names starting with '_' are reserved" if value.startswith("_") else tag_value_problem(value)
            return "bad_tag", f"{field}: tag name {value!r}: {problem}"
        if pattern == TAG_VALUE_PATTERN and isinstance(value, str):
            return "bad_tag", f"{field}: {tag_value_problem(value)}"
        return "invalid_field", f"{field}: does not match {pattern}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "?")
        return "invalid_field", f"{field}: must be one of {expected}, got {error.get('input')!r}"
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


def _claimed_source(raw: bytes) -> str | None:
    """The `source` an unparseable-as-event item claims, if it is a plausible topic segment."""
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    source = item.get("source") if isinstance(item, dict) else None
    return source if isinstance(source, str) and _SOURCE_RE.match(source) else None


def reject_invalid(raw: bytes, error: ValidationError) -> Rejection:
    """The rejection for an item pydantic refused, with the most specific reason it can name."""
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Rejection("bad_utf8", f"payload: not valid UTF-8 (byte {bad.start})", raw)
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        return Rejection("invalid_json", f"payload: invalid JSON: {detail}", raw)
    if first["type"] in ("dict_type", "model_type") and not first["loc"]:
        return Rejection("not_an_object", f"payload: expected a JSON object, got {_json_type(first.get('input'))}",
                         raw)
    messages, codes = [], []
    for item in errors[:5]:
        code, message = _field_message(item)
        codes.append(code)
        messages.append(message)
    if len(errors) > 5:
        messages.append(f"and {len(errors) - 5} more")
    # The most specific code wins so the metric label says what matters.
    code = next((c for c in ("bad_tag", "too_many_tags") if c in codes), codes[0])
    return Rejection(code, "; ".join(messages), raw, _claimed_source(raw))


def decode_object(raw: bytes) -> Decoded:
    """Validate one JSON object (the fast path: pydantic parses the bytes directly)."""
    try:
        return Accepted(EVENT_ADAPTER.validate_json(raw), raw)
    except ValidationError as error:
        return reject_invalid(raw, error)


def _first_byte(payload: bytes) -> int | None:
    stripped = payload.lstrip(_WHITESPACE)
    return stripped[0] if stripped else None


def decode_payload(payload: bytes, *, max_bytes: int, ndjson: bool = False) -> list[Decoded]:
    """All items of a payload, in order. Never raises on bad input."""
    if len(payload) > max_bytes:
        return [Rejection("oversized", f"payload: {len(payload)} bytes is over the limit of {max_bytes}",
                          payload[:1024])]
    if ndjson:
        return [decode_object(line) for line in payload.split(b"\n") if line and not line.isspace()]
    first = _first_byte(payload)
    if first == ord("{"):
        return [decode_object(payload)]
    if first != ord("["):
        if first is None:
            return [Rejection("invalid_json", "payload: empty", payload)]
        return [decode_object(payload)]  # pydantic names what it is (invalid JSON, bad UTF-8, not an object)
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as bad:
            return [Rejection("bad_utf8", f"payload: not valid UTF-8 (byte {bad.start})", payload)]
        return [Rejection("invalid_json", f"payload: invalid JSON: {error}", payload)]
    decoded: list[Decoded] = []
    for item in items:
        raw = orjson.dumps(item)
        if not isinstance(item, dict):
            decoded.append(Rejection("not_an_object", f"payload: expected a JSON object, got {_json_type(item)}",
                                     raw))
        else:
            decoded.append(decode_object(raw))
    return decoded
