"""Structure-aware hypothesis strategies for hostile input (docs/events.md, docs/operations.md).

The generators start from what the daemon expects, so most cases get past the first check and reach
deep code: valid events built from the models of `ioc.envelope` (docs/events.md), then mutated one way or
several (a field dropped, a wrong type, numbers no double holds, times no store holds, odd Unicode,
long strings, unknown or repeated keys, deep nesting, arrays of mixed junk), then serialised by our own
writer, which can say what a Python object cannot (`1e400`, bare `NaN`, an escaped lone surrogate, a
key given twice), and finally, for some cases, broken as bytes (bad UTF-8, truncated JSON, a BOM).

Everything here is pure: no I/O, no clock reads at import (times are drawn relative to the moment a
case is built, so "now" stays now during a long run). Strategy factories are cached: building a
strategy (a `recursive` above all) costs far more than drawing from it, and composites draw from them
at every case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

from hypothesis import strategies as st

from ioc.envelope import RESERVED_TAG_KEYS

# --- a JSON writer that can say what Python objects cannot -----------------------------------------------


class Raw(str):
    """A JSON text fragment written verbatim: `1e400`, `NaN`, `-0`, a 5,000-digit integer, deep nesting."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Pairs:
    """A JSON object written from its pairs in order, so a key may appear twice."""

    items: tuple[tuple[str, Any], ...]


def dumps(value: Any) -> bytes:
    """JSON text of `value` as UTF-8. Strings with a lone surrogate are written with `\\uXXXX` escapes
    (valid JSON text that no UTF-8 string holds); others are written raw, 4-byte characters included."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts).encode("utf-8", "surrogatepass")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _string(text: str) -> str:
    return json.dumps(text, ensure_ascii=_has_surrogate(text))


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, Raw):
        parts.append(str(value))
    elif isinstance(value, str):
        parts.append(_string(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(str(value))  # any size: 10**30 is not an int64
    elif isinstance(value, float):
        parts.append(json.dumps(value))  # NaN / Infinity come out bare, as some encoders write them
    elif isinstance(value, dict | Pairs):
        pairs = value.items if isinstance(value, Pairs) else tuple(value.items())
        parts.append("{")
        for index, (key, item) in enumerate(pairs):
            if index:
                parts.append(",")
            _write(key if isinstance(key, str) else str(key), parts)
            parts.append(":")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"cannot write {type(value).__name__}")


# --- leaves: odd text, numbers, times, durations ---------------------------------------------------------

LONG_LENGTHS = (63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4096, 4097, 65_537)
SPECIAL_STRINGS: tuple[str, ...] = (
    "", " ", "\t", "\n", "\r\n", "\x00", "a\x00b", "\x1b[31m", "\x7f",
    "\u202e", "\u200f\u200e", "\u2066x\u2069", "\ufeff", "\ufffe", "\uffff", "\u2028\u2029",
    "\ud800", "\udfff", "a\udc80b", "\U0001f600", "\U0001f469\u200d\U0001f4bb", "\U0010ffff", "\U0001d518",
    "e\u0301", "a" + "\u0301" * 200, "Phường Mũi Né", "Phu\u031bo\u031b\u0300ng", "İ", "ß", "ǅ", "٣", "１２３",
    "\\", "a\\", "\"", "'", "a,b c=d\\e", "%00", "%ff%fe", "../../etc/passwd", "..\\..", "{{ area }}", "{0}",
    "<script>alert(1)</script>", "${jndi:ldap://x}", "' OR 1=1 --", "null", "true", "NaN", "-0", "1e400",
    "(a+)+$", "(?P<x>", "[", "*", ".*", "\\d{99999}", "a{1000}{1000}",
)
NUMBER_TOKENS: tuple[str, ...] = (
    "0", "-0", "0.0", "-0.0", "1e308", "1.7976931348623157e308", "1e309", "1e400", "-1e400", "1e-400",
    "4.9e-324", "2.5e-324", str(10**30), "-" + str(10**30), str(2**63), str(2**63 - 1), str(-(2**63) - 1),
    str(2**64), "9" * 400, "9" * 5000, "1" + "0" * 4300, "0." + "0" * 400 + "1", "1E+2", "1e+99999999999",
    "123456789012345678901234567890.5",
    # not JSON at all, as sloppy encoders write them
    "NaN", "-NaN", "Infinity", "-Infinity", "inf", "nan", "1.", ".5", "01", "+1", "0x10", "1_000", "--1",
)
ODD_TIMES: tuple[str, ...] = (
    "0001-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "1600-01-01T00:00:00Z", "1677-09-21T00:12:43Z",
    "1677-09-21T00:12:43.145224192Z", "1677-09-21T00:12:43.145224191Z", "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00Z", "2262-04-11T23:47:16.854775807Z", "2262-04-11T23:47:16.854775808Z",
    "2262-04-12T00:00:00Z", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59+23:59",
    "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59.999999+00:00", "10000-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z", "2026-01-01T24:00:00Z",
    "2026-01-01T23:59:60Z", "2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00+99:99", "2026-01-01T00:00:00",
    "2026-01-01", "2026-01-01T00:00:00.1234567890123456789Z", "2026-01-01t00:00:00z", "2026-01-01 00:00:00Z",
    "2026-W01-1", "20260101T000000Z", "1e10", "", " ", "now", "-1", "+002026-01-01T00:00:00Z",
    "2026-01-01T00:00:00Z\x00", "２０２６-01-01T00:00:00Z",
)
ODD_DURATIONS: tuple[str, ...] = (
    "99999999999d", "999999999999999999999h", "1h30m", "0s", "0", "-1h", "-0s", "1e9h", "1e400s", "", " ",
    "P1D", "PT1H", "10", "1.5h", "1h1h", "1d" * 500, "9" * 400 + "s", "1w", "1y", "1ms", "1us", "1ns", "NaN",
    "h", "1H", "1 h", "１h", "1h\x00",
)
AREA_CODES = ("60", "593", "22723", "68", "22915", "00000", "60 ", "০", "99999")
SAFE_ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))


@cache
def odd_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Text a careless parser chokes on: control characters, bidi marks, lone surrogates, combining
    runs, 4-byte characters, long runs at and past every length limit of the models."""
    special = st.sampled_from(SPECIAL_STRINGS)
    text = st.text(st.characters(exclude_categories=()), max_size=max_size)  # surrogates included
    return st.one_of(
        special, special, text, text,
        st.builds(lambda char, length: char * length,
                  st.sampled_from(("a", "é", "\U0001f600", "\x00", "\u0301", "\\")),
                  st.sampled_from(LONG_LENGTHS)),
    )


@cache
def numbers() -> st.SearchStrategy[Any]:
    """Numbers: ordinary, at the edges of a double, past them, and tokens that are not JSON."""
    return st.one_of(
        st.integers(),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(NUMBER_TOKENS).map(Raw),
    )


def _offset(minutes: int) -> timezone:
    return timezone(timedelta(minutes=minutes))


def rfc3339(moment: datetime) -> str:
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") and moment.microsecond % 2 else text


@cache
def times_near_now(*, back: timedelta = timedelta(days=7)) -> st.SearchStrategy[str]:
    """A valid RFC 3339 time in the last `back`, in a random whole-minute offset, drawn when built."""
    seconds = back.total_seconds()
    return st.builds(
        lambda ago, minutes, micros: rfc3339(
            (datetime.now(UTC) - timedelta(seconds=ago)).replace(microsecond=micros).astimezone(_offset(minutes))),
        st.floats(min_value=1.0, max_value=seconds),
        st.integers(-23 * 60 - 59, 23 * 60 + 59),
        st.integers(0, 999_999),
    )


@cache
def odd_times() -> st.SearchStrategy[Any]:
    """Times at and past what a datetime, a nanosecond timestamp or a store holds, malformed ones,
    future ones, and numbers where a time string belongs."""
    any_moment = st.builds(
        lambda moment, minutes: moment.replace(tzinfo=UTC).astimezone(_offset(minutes)).isoformat()
        if datetime.min.replace(tzinfo=UTC) + timedelta(days=1) < moment.replace(tzinfo=UTC)
        < datetime.max.replace(tzinfo=UTC) - timedelta(days=1) else moment.isoformat() + "Z",
        st.datetimes(), st.integers(-1439, 1439))
    future = st.builds(lambda ahead: rfc3339(datetime.now(UTC) + timedelta(seconds=ahead)),
                       st.sampled_from((290.0, 299.0, 301.0, 310.0, 3600.0, 86400.0 * 365 * 100)))
    return st.one_of(st.sampled_from(ODD_TIMES), any_moment, future, numbers(), st.none())


@cache
def durations() -> st.SearchStrategy[Any]:
    big = st.one_of(st.integers(-(10**20), 10**20),
                    st.sampled_from((10**5, 10**6, 10**9, 10**11, 10**12, 10**15, 10**20, 2**63, -(2**63))))
    return st.one_of(
        st.sampled_from(ODD_DURATIONS), st.sampled_from(ODD_DURATIONS),
        st.builds(lambda n, unit: f"{n}{unit}", big, st.sampled_from("smhdw")),
        numbers(),
    )


@cache
def deep_nesting() -> st.SearchStrategy[Raw]:
    """Arrays and objects nested past every parser's and encoder's depth limit (orjson stops at 1024)."""
    depth = st.sampled_from((2, 64, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 5000,
                             100_000))
    return st.one_of(
        depth.map(lambda n: Raw("[" * n + "]" * n)),
        depth.map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
        depth.map(lambda n: Raw("[" * n)),  # never closed
    )


@cache
def junk() -> st.SearchStrategy[Any]:
    """Any JSON value, odd at every level: mixed arrays, objects with odd and repeated keys, deep nests."""
    leaves = st.one_of(st.none(), st.booleans(), numbers(), odd_text(), odd_times())
    nested = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(odd_text(12), children, max_size=6),
            st.lists(st.tuples(st.sampled_from(("id", "source", "type", "time", "value", "x")), children),
                     max_size=4).map(lambda items: Pairs(tuple(items))),
        ),
        max_leaves=24,
    )
    # Nesting past the parsers' limits makes the whole document invalid: one value in ten, at the top, so
    # the rest of the junk still reaches the validators.
    return st.integers(0, 9).flatmap(lambda n: deep_nesting() if n == 9 else nested)


# --- valid events (docs/events.md), then mutated ------------------------------------------------------------

METRICS = ("env.aqi", "env.pm25", "net.latency_ms", "svc.up", "kpi.dossier.open", "a", "z9._")
_metric = st.one_of(st.sampled_from(METRICS), st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True))
_safe_tag_text = st.text(SAFE_ALPHABET, min_size=1, max_size=24).filter(
    lambda text: not text.endswith("\\") and "\n" not in text and "\r" not in text)
_tag_key = _safe_tag_text.filter(lambda key: not key.startswith("_") and key not in RESERVED_TAG_KEYS)
_id = st.one_of(st.text(SAFE_ALPHABET, min_size=1, max_size=48), st.uuids().map(str))


@cache
def valid_events(source: str = "qtmt-aqi") -> st.SearchStrategy[dict[str, Any]]:
    """An event the daemon must accept (or count as a duplicate), of any of the three types."""
    common = {
        "id": _id,
        "source": st.just(source),
        "time": times_near_now(),
    }
    optional = {
        "area": st.one_of(st.sampled_from(AREA_CODES[:5]), _safe_tag_text.filter(lambda t: len(t) <= 64)),
        "tags": st.dictionaries(_tag_key, _safe_tag_text, max_size=4),
    }
    telemetry = st.fixed_dictionaries(
        {**common, "type": st.just("telemetry"), "metric": _metric,
         "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                            st.integers(-(2**53), 2**53), st.integers(0, 300))},
        optional={**optional, "unit": st.sampled_from(("%", "ug/m3", "VN_AQI", "", "µg/m³"))})
    status = st.fixed_dictionaries(
        {**common, "type": st.just("status"), "entity": _safe_tag_text,
         "state": st.sampled_from(("up", "degraded", "down"))},
        optional={**optional, "detail": st.text(SAFE_ALPHABET, max_size=80)})
    dossier = st.fixed_dictionaries(
        {**common, "type": st.just("dossier"), "dossier_id": _id, "procedure": _safe_tag_text,
         "status": st.sampled_from(("received", "processing", "supplement", "interoperating", "paying",
                                    "releasing", "done", "denied", "unresolved", "cancelled")),
         "received_at": times_near_now(back=timedelta(days=60)),
         "due_at": st.one_of(times_near_now(back=timedelta(days=30)),
                             st.builds(lambda days: rfc3339(datetime.now(UTC) + timedelta(days=days)),
                                       st.floats(0, 400))),
         "channel": st.sampled_from(("online", "counter", "post")),
         "level": st.sampled_from(("province", "district", "commune"))},
        optional={**optional, "finished_at": times_near_now(back=timedelta(days=30))})
    return st.one_of(telemetry, status, dossier)


_TIME_FIELDS = ("time", "received_at", "due_at", "finished_at")
_FIELDS = ("id", "source", "type", "time", "area", "tags", "metric", "value", "unit", "entity", "state",
           "detail", "dossier_id", "procedure", "status", "received_at", "due_at", "finished_at", "channel",
           "level")


@cache
def _field_junk(name: str) -> st.SearchStrategy[Any]:
    """Junk shaped for the field: times for time fields, numbers for `value`, and anything else too."""
    if name in _TIME_FIELDS:
        return st.one_of(odd_times(), junk())
    if name == "value":
        return st.one_of(numbers(), odd_text(), junk())
    if name == "tags":
        return st.one_of(
            st.dictionaries(odd_text(20), st.one_of(odd_text(), junk()), max_size=40),
            st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from((32, 33, 1000))),
            st.sampled_from(sorted(RESERVED_TAG_KEYS) + ["_x", "a\\", "a\nb"]).map(lambda key: {key: "v"}),
            junk())
    return st.one_of(odd_text(), junk())


@cache
def mutated_events(source: str = "qtmt-aqi") -> st.SearchStrategy[Any]:
    return _mutated_events(source)


@st.composite
def _mutated_events(draw: st.DrawFn, source: str) -> Any:
    """A valid event with 1-3 mutations: a field dropped, replaced by junk, an unknown key, a key twice,
    the whole event nested or replaced."""
    event: dict[str, Any] = draw(valid_events(source))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(("drop", "replace", "replace", "replace", "unknown", "twice", "type",
                                     "wrap")))
        if kind == "drop" and event:
            event.pop(draw(st.sampled_from(sorted(event))))
        elif kind == "replace":
            name = draw(st.sampled_from(_FIELDS))
            event[name] = draw(_field_junk(name))
        elif kind == "unknown":
            event[draw(odd_text(20))] = draw(junk())
        elif kind == "type":
            event["type"] = draw(st.sampled_from(("telemetry", "status", "dossier", "Telemetry", "", "alert")))
        elif kind == "twice" and event:
            name = draw(st.sampled_from(sorted(event)))
            return Pairs((*event.items(), (name, draw(_field_junk(name)))))
        elif kind == "wrap":
            return draw(st.sampled_from(([event], {"event": event}, [[event]])))
    return event


@cache
def items(source: str = "qtmt-aqi") -> st.SearchStrategy[Any]:
    """One item of a payload: mostly events (valid or mutated), sometimes any JSON value."""
    return st.one_of(valid_events(source), mutated_events(source), mutated_events(source), junk())


# --- payloads as bytes -------------------------------------------------------------------------------------

BAD_UTF8: tuple[bytes, ...] = (
    b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98",
)
PREFIXES: tuple[bytes, ...] = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00", b" \t\r\n", b"\x0c", b")]}',\n")


def _break_bytes(text: bytes, how: str, position: int, insert: bytes) -> bytes:
    cut = position % (len(text) + 1)
    if how == "truncate":
        return text[:cut]
    if how == "insert":
        return text[:cut] + insert + text[cut:]
    if how == "replace":
        return text[:cut] + insert + text[cut + len(insert):]
    if how == "prefix":
        return insert + text
    if how == "suffix":
        return text + insert
    if how == "utf16":
        return text.decode("utf-8", "replace").encode("utf-16")
    if how == "latin1":
        return text.decode("utf-8", "replace").encode("latin-1", "replace")
    if how == "double":
        return text + text
    return text


def broken(payload: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """`payload` broken as bytes: truncated, bad UTF-8 inserted, a BOM, re-encoded, doubled."""
    return st.builds(
        _break_bytes, payload,
        st.sampled_from(("truncate", "insert", "insert", "replace", "prefix", "suffix", "utf16", "latin1",
                         "double")),
        st.integers(min_value=0, max_value=10**6),
        st.one_of(st.sampled_from(BAD_UTF8), st.sampled_from(PREFIXES), st.sampled_from((b"}", b"]", b",",
                  b'"', b"\\", b"\x00", b"{}", b"\n"))),
    )


def too_many(n: int) -> bytes:
    return b"[" + b",".join([b"{}"] * n) + b"]"


@cache
def payloads(source: str = "qtmt-aqi", *, ndjson: bool = False, max_items: int = 10_000
             ) -> st.SearchStrategy[bytes]:
    """A message or body: one item, a batch, NDJSON lines (when `ndjson`), broken bytes, raw noise,
    and, rarely, batches at and past `max_items`."""
    one = items(source).map(dumps)
    batch = st.lists(items(source), max_size=12).map(dumps)
    common: list[st.SearchStrategy[bytes]] = [
        valid_events(source).map(dumps),
        one, one, batch, batch,
        broken(st.one_of(one, batch)), broken(st.one_of(one, batch)),
        st.binary(max_size=64),
        st.sampled_from((b"", b" ", b"null", b"1", b'"x"', b"[]", b"{}", b"[{}]", b"{}{}", b"[]]", b"[,]",
                         b"[1,]", b'{"a":1,}', b"\n", b"[" * 3, b"\xef\xbb\xbf{}")),
        deep_nesting().map(lambda raw: str(raw).encode()),
    ]
    if ndjson:
        lines = st.lists(st.one_of(one, broken(one)), max_size=8).map(b"\n".join)
        common += [lines, lines]
    # Batches at and past `max_items`: one case in 200 (each costs the daemon real work). Shrinking moves
    # toward 0, so toward the ordinary cases.
    many = st.sampled_from((max_items, max_items + 1, max_items * 2)).map(too_many)
    ordinary = st.one_of(*common)
    return st.integers(0, 199).flatmap(lambda n: many if n == 199 else ordinary)


# --- helpers for the oracle --------------------------------------------------------------------------------

def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def outcomes_allowed(payload: bytes, *, max_items: int = 10_000) -> range | tuple[int, ...]:
    """How many outcomes (accepted, duplicate or dead letter) a message over MQTT may produce.

    A JSON array of n items (1 <= n <= max_items), by the JSON grammar (RFC 8259: UTF-8, no BOM; `1e400`,
    10**30 and an escaped lone surrogate are grammatical), yields n, one per item, or 1 when the daemon
    refuses the message whole (say, nested deeper than its parser goes); anything else exactly 1 (one
    event, or one dead letter for bad JSON, bad UTF-8, an empty or an oversized batch: docs/operations.md
    "none vanishes"). An array too deep for Python's parser to count: anywhere from 1 to its commas + 1."""
    if payload.lstrip(b" \t\r\n")[:1] != b"[":
        return (1,)
    try:
        text = payload.decode("utf-8")
        parsed = json.loads(text, parse_constant=_refuse_constant, parse_int=lambda _: 0,
                            parse_float=lambda _: 0.0)
    except RecursionError:
        return range(1, payload.count(b",") + 2)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return (1,)
    count = len(parsed) if isinstance(parsed, list) else 1
    return (1, count) if 1 < count <= max_items else (1,)


# --- MQTT messages -----------------------------------------------------------------------------------------

EVENTS_TOPIC = "ioc/v1/events/"
# Topic sources: mostly the vendor's own, and levels a vendor's ACL (`ioc/v1/events/{source}/#`) allows.
_TOPIC_SOURCES = ("qtmt-aqi",) * 6 + ("qtmt-aqi2", "viettel-ran", "QTMT-AQI", "", "ünï", "a" * 65, "x y")
_TOPIC_TAILS = ("", "", "", "", "", "", "/x", "/x/y", "/", "/ünï")


@cache
def mqtt_messages() -> st.SearchStrategy[tuple[str, bytes]]:
    """(topic, payload): payloads for the topic's own source, and now and then another source's."""

    return st.tuples(st.sampled_from(_TOPIC_SOURCES), st.sampled_from(_TOPIC_TAILS), st.integers(0, 9)).flatmap(
        lambda parts: payloads(parts[0] if parts[2] else "qtmt-aqi").map(
            lambda payload: (EVENTS_TOPIC + parts[0] + parts[1], payload)))
