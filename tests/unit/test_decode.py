"""Validation of the envelope (docs/events.md): every bad input gets a specific reason naming the field."""

from __future__ import annotations

import base64
import json
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioc.envelope import StatusEvent, TelemetryEvent
from ioc.ingest.deadletter import DEAD_LETTER_MAX_BYTES, dead_letter_body
from ioc.ingest.decode import MAX_ITEM_BYTES, Accepted, Rejection, decode_payload
from ioc.ingest.items import TooManyItems, array_count, ndjson_count, ndjson_lines, split_array, utf8_error

GOOD = {
    "id": "a1",
    "source": "qtmt-aqi",
    "type": "telemetry",
    "time": "2026-03-02T08:00:00.123456+07:00",
    "metric": "env.aqi",
    "value": 160,
    "area": "22723",
    "tags": {"station": "PT-01"},
}


def decode_one(event: object) -> Accepted | Rejection:
    [item] = decode_payload(orjson.dumps(event), max_bytes=1 << 20)
    return item


def rejection(event: object) -> Rejection:
    item = decode_one(event)
    assert isinstance(item, Rejection), item
    return item


def test_good_telemetry_keeps_microseconds_and_offset() -> None:
    item = decode_one(GOOD)
    assert isinstance(item, Accepted)
    event = item.event
    assert isinstance(event, TelemetryEvent)
    assert event.value == 160.0 and event.time.microsecond == 123456
    assert event.time.utcoffset() is not None and event.time.utcoffset().total_seconds() == 7 * 3600


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"value": "12"}, "invalid_field", "value: expected a number, got a string"),
        ({"value": True}, "invalid_field", "value: expected a number"),
        ({"time": "2026-03-02T08:00:00"}, "invalid_field", "time: must be an RFC 3339 time with an offset"),
        ({"time": 1772413200}, "invalid_field", "time: must be an RFC 3339 time string"),
        ({"time": "1772413200"}, "invalid_field", "time: not an RFC 3339 time"),  # not Unix seconds in a string
        ({"source": "Bad Source"}, "invalid_field", "source: does not match"),
        ({"metric": "Env AQI"}, "invalid_field", "metric: does not match"),
        ({"id": ""}, "invalid_field", "id: must not be empty"),
        ({"extra": 1}, "invalid_field", "extra: unknown field"),
        ({"type": "bogus"}, "invalid_field", "type: must be telemetry, status or dossier, got 'bogus'"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "too_many_tags", "tags: more than 32 tags"),
        ({"tags": {"station": "a\nb"}}, "bad_tag", "tags.station: a newline cannot be stored"),
        ({"tags": {"station": "trailing\\"}}, "bad_tag", "tags.station: a trailing backslash"),
        ({"tags": {"_internal": "x"}}, "bad_tag", "tag name '_internal': names starting with '_' are reserved"),
        ({"tags": {"source": "x"}}, "bad_tag", "tag 'source': the name is reserved"),
        ({"area": ""}, "bad_tag", "area: empty value cannot be stored"),
    ],
)
def test_rejections_name_the_field(change: dict[str, object], code: str, message: str) -> None:
    item = rejection({**GOOD, **change})
    assert item.code == code
    assert message in item.message
    assert item.source == GOOD["source"] or change.get("source")


def test_missing_field_is_named() -> None:
    event = dict(GOOD)
    del event["value"]
    assert rejection(event).message == "value: required field missing"


def test_missing_type_is_named() -> None:
    event = dict(GOOD)
    del event["type"]
    assert rejection(event).message.startswith("type: required field missing")


def test_non_finite_value_is_rejected() -> None:
    payload = orjson.dumps(GOOD).replace(b'"value":160', b'"value":1e999')
    [item] = decode_payload(payload, max_bytes=1 << 20)
    assert isinstance(item, Rejection) and item.message == "value: not a finite number"
    payload = orjson.dumps(GOOD).replace(b'"value":160', b'"value":NaN')
    [item] = decode_payload(payload, max_bytes=1 << 20)
    assert isinstance(item, Rejection) and item.message == "value: not a finite number"


def test_invalid_json_bad_utf8_oversized_and_not_an_object() -> None:
    [bad_json] = decode_payload(b'{"id": ', max_bytes=100)
    assert isinstance(bad_json, Rejection) and bad_json.code == "invalid_json"
    assert bad_json.message.startswith("payload: invalid JSON")
    [bad_utf8] = decode_payload(b'{"id": "\xff\xfe"}', max_bytes=100)
    assert isinstance(bad_utf8, Rejection) and bad_utf8.code == "bad_utf8"
    [oversized] = decode_payload(b"x" * 101, max_bytes=100)
    assert isinstance(oversized, Rejection) and oversized.code == "oversized"
    assert "101 bytes is over the limit of 100" in oversized.message
    [scalar] = decode_payload(b"42", max_bytes=100)
    assert isinstance(scalar, Rejection) and scalar.code == "not_an_object"
    [empty] = decode_payload(b"  ", max_bytes=100)
    assert isinstance(empty, Rejection) and empty.code == "invalid_json"


def test_a_batch_rejects_bad_items_one_by_one() -> None:
    status = {"id": "s1", "source": "viettel-ran", "type": "status", "time": "2026-03-02T08:00:00Z",
              "entity": "BTS-PT-001", "state": "down"}
    payload = orjson.dumps([GOOD, {**GOOD, "value": "x"}, 7, status])
    items = decode_payload(payload, max_bytes=1 << 20)
    assert [type(item).__name__ for item in items] == ["Accepted", "Rejection", "Rejection", "Accepted"]
    assert isinstance(items[3], Accepted) and isinstance(items[3].event, StatusEvent)
    assert isinstance(items[1], Rejection) and orjson.loads(items[1].raw)["value"] == "x"


def test_ndjson_lines_are_judged_alone() -> None:
    payload = orjson.dumps(GOOD) + b"\n\n{broken\n" + orjson.dumps({**GOOD, "id": "a2"}) + b"\n"
    items = decode_payload(payload, max_bytes=1 << 20, ndjson=True)
    assert [type(item).__name__ for item in items] == ["Accepted", "Rejection", "Accepted"]


def test_dossier_event() -> None:
    dossier = {
        "id": "d1", "source": "dvc-binhthuan", "type": "dossier", "time": "2026-03-02T08:00:00+07:00",
        "area": "22723", "dossier_id": "000.00.20.H10-260302-0001", "procedure": "1.001612",
        "status": "received", "received_at": "2026-03-02T08:00:00+07:00", "due_at": "2026-03-05T17:00:00+07:00",
        "channel": "online", "level": "commune",
    }
    assert isinstance(decode_one(dossier), Accepted)
    message = rejection({**dossier, "status": "lost"}).message
    assert message.startswith("status: must be one of 'received', 'processing'") and message.endswith("got 'lost'")


# --- times no store can hold (docs/operations.md) -----------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", "0001-01-01T00:00:00Z"),
        ("time", "1600-01-01T00:00:00+07:00"),
        ("time", "1970-01-01T06:59:59+07:00"),  # 1969-12-31 in UTC
        ("due_at", "0001-01-01T00:00:00Z"),
        ("due_at", "2200-01-01T00:00:00Z"),
        ("due_at", "2199-12-31T20:00:00-05:00"),  # 2200-01-01 in UTC
        ("received_at", "9999-12-31T23:59:59Z"),
        ("finished_at", "1677-09-21T00:12:43Z"),
    ],
)
def test_times_outside_what_a_store_holds_are_refused_naming_the_field(field: str, value: str) -> None:
    dossier = {
        "id": "d1", "source": "dvc-binhthuan", "type": "dossier", "time": "2026-03-02T08:00:00+07:00",
        "area": "22723", "dossier_id": "x", "procedure": "1.001612", "status": "done",
        "received_at": "2026-03-02T08:00:00+07:00", "due_at": "2026-03-05T17:00:00+07:00",
        "finished_at": "2026-03-04T17:00:00+07:00", "channel": "online", "level": "commune",
    }
    item = rejection({**dossier, field: value})
    assert item.code == "time_out_of_range"
    assert item.message == f"{field}: {value} is outside the range a store can hold (1970-01-01 .. 2199-12-31)"
    assert item.source == "dvc-binhthuan"


def test_the_ends_of_the_time_range_are_valid() -> None:
    for value in ("1970-01-01T00:00:00Z", "1970-01-01T07:00:00+07:00", "2199-12-31T23:59:59.999999Z"):
        event = {**GOOD, "time": value}
        assert isinstance(decode_one(event), Accepted), value


# --- size and shape (docs/operations.md) --------------------------------------------------------------------

def test_more_items_than_allowed_is_one_rejection_of_the_whole_payload() -> None:
    for payload in (orjson.dumps([{}] * 11), orjson.dumps([GOOD] * 11), b"[" + b"1," * 10 + b"1]"):
        [item] = decode_payload(payload, max_bytes=1 << 20, max_items=10)
        assert isinstance(item, Rejection) and item.code == "too_many_items"
        assert item.message == "too many items: 11 > 10" and item.raw is payload
    ndjson = b"\n".join([orjson.dumps(GOOD)] * 11) + b"\n\n \n"
    [item] = decode_payload(ndjson, max_bytes=1 << 20, max_items=10, ndjson=True)
    assert isinstance(item, Rejection) and item.message == "too many items: 11 > 10"
    assert len(decode_payload(orjson.dumps([GOOD] * 10), max_bytes=1 << 20, max_items=10)) == 10
    blank_lines = b"\n" * 100 + b"\n".join([orjson.dumps(GOOD)] * 10) + b"\n \r\n" * 100
    assert len(decode_payload(blank_lines, max_bytes=1 << 20, max_items=10, ndjson=True)) == 10


def test_an_item_over_the_byte_cap_is_refused_unparsed() -> None:
    huge = orjson.dumps({**GOOD, **{f"k{i}": i for i in range(MAX_ITEM_BYTES // 8)}})
    assert len(huge) > MAX_ITEM_BYTES
    [alone] = decode_payload(huge, max_bytes=1 << 20)
    [first, second] = decode_payload(b"[" + huge + b"," + orjson.dumps(GOOD) + b"]", max_bytes=1 << 20)
    for item in (alone, first):
        assert isinstance(item, Rejection) and item.code == "item_too_large"
        assert item.message == f"event: {len(huge)} bytes is over the limit of {MAX_ITEM_BYTES} for one event"
    assert isinstance(second, Accepted)


def test_an_empty_batch_is_one_rejection() -> None:
    for payload, ndjson in ((b"[]", False), (b" [ \n ] ", False), (b"\n \n", True)):
        [item] = decode_payload(payload, max_bytes=100, ndjson=ndjson)
        assert isinstance(item, Rejection) and item.code == "empty_batch"


def test_a_message_lists_at_most_five_errors_and_echoes_little_of_the_input() -> None:
    many = rejection({**GOOD, **{f"k{i}": 0 for i in range(1000)}})
    assert many.message.endswith("; and 995 more") and many.message.count("unknown field") == 5
    long_key = "x" * 10_000
    for event in ({**GOOD, long_key: 1}, {**GOOD, "type": long_key}, {**GOOD, "tags": {"_" + long_key: "v"}},
                  {**GOOD, "time": long_key}):
        item = rejection(event)
        assert len(item.message) < 400, item.message


def test_array_items_that_are_not_objects_are_named() -> None:
    items = decode_payload(b'[1, "a", [], null, true, -2.5e3, {"id": 1}]', max_bytes=100)
    assert [item.message for item in items[:6]] == [  # type: ignore[union-attr]
        f"payload: expected a JSON object, got {kind}"
        for kind in ("a number", "a string", "an array", "null", "a boolean", "a number")]
    assert [item.raw for item in items] == [b"1", b'"a"', b"[]", b"null", b"true", b"-2.5e3", b'{"id": 1}']


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'[{"id": "a"}, {"id": "\xff"}]', "bad_utf8"),
        (b'[{"id": "a"}, "\xff", ' + orjson.dumps(GOOD) + b"]", "bad_utf8"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_json"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "item_too_large"),
        (b'[{"id": "\\ud800"}]', "invalid_json"),
        (b'["' + b'\\"' * 1000, "invalid_json"),
        (b"[1,]", "invalid_json"),
        (b"\xef\xbb\xbf[]", "invalid_json"),
    ],
    ids=["bad-utf8", "bad-utf8-in-a-string-item", "deep-arrays", "deep-object", "deep-big-object", "lone-surrogate", "unterminated",
         "trailing-comma", "bom"],
)
def test_a_payload_that_is_not_json_is_one_rejection(payload: bytes, code: str) -> None:
    [item] = decode_payload(payload, max_bytes=1 << 20)
    assert isinstance(item, Rejection) and item.code == code, item
    assert item.raw is payload


def test_numbers_no_double_holds_are_rejected_per_item() -> None:
    payload = b"[" + orjson.dumps(GOOD).replace(b'"value":160', b'"value":1e400') + b"," + orjson.dumps(
        GOOD).replace(b'"value":160', b'"value":' + b"9" * 1000) + b"," + orjson.dumps(GOOD) + b"]"
    first, second, third = decode_payload(payload, max_bytes=1 << 20)
    assert isinstance(first, Rejection) and first.message == "value: not a finite number"
    assert isinstance(second, Rejection) and second.message.startswith("value: ")
    assert isinstance(third, Accepted)


# --- counting and splitting, against reference implementations ------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(alphabet=st.sampled_from('ab\\"[]{},: \n\t\u00e1\U0001f600\x00\x1f'), max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(alphabet='k"\\[],{}', max_size=4), inner, max_size=4),
                           max_leaves=20)
whitespace = st.sampled_from([b"", b" ", b"\n", b"\t\r\n  "])


def dump(value: Any) -> bytes:
    """JSON of any value drawn here (orjson refuses integers beyond 64 bits)."""
    return json.dumps(value, ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=30), whitespace)
def test_array_count_is_exact_for_any_json_array(items: list[Any], space: bytes) -> None:
    payload = space + b"[" + space + (b"," + space).join(dump(item) for item in items) + b"]" + space
    assert array_count(payload) == max(1, len(items))
    assert len(split_array(payload, max_items=1000)) == len(items)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.lists(st.sampled_from([b"\n", b" ", b"\r", b"\x0b", b"x", b"{}"]),
                                            max_size=60).map(b"".join))
def test_ndjson_count_and_lines_match_a_split(payload: bytes) -> None:
    expected = [line for line in payload.split(b"\n") if line and not line.isspace()]
    assert ndjson_count(payload) == len(expected)
    assert [line.strip() for line in ndjson_lines(payload, 100)] == [line.strip() for line in expected]
    padded = b"\n" * 500 + payload  # takes the counting path (far more newlines than lines allowed)
    assert [line.strip() for line in ndjson_lines(padded, 100)] == [line.strip() for line in expected]
    if expected:
        with pytest.raises(TooManyItems) as many:
            ndjson_lines(padded, len(expected) - 1)
        assert many.value.count == len(expected)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=32).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_utf8_error_finds_the_first_bad_byte(payload: bytes) -> None:
    try:
        payload.decode("utf-8")
        expected = None
    except UnicodeDecodeError as error:
        expected = error.start
    assert utf8_error(payload) == expected
    big = b"a" * ((1 << 18) - 1) + payload  # across a chunk boundary
    assert utf8_error(big) == (None if expected is None else expected + len(big) - len(payload))


def test_array_count_of_hostile_shapes_is_exact() -> None:
    assert array_count(b"[" + b"{}," * 1000 + b"{}]") == 1001
    assert array_count(b"[" + b"[1,[2,{}]]," * 1000 + b"1]") == 1001
    assert array_count(b"[" * 5000 + b"]" * 5000) == 1
    assert array_count(b'["' + b'\\\\\\",' * 1000 + b'"]') == 1
    assert array_count(b'[{"a":"[,{"},"\\\\",' + b'"x",' * 999 + b"1]") == 1002
    with pytest.raises(TooManyItems) as many:
        split_array(b"[" + b"1," * 20 + b"1]", max_items=10)
    assert many.value.count == 21


# --- hostile input of any shape: never an exception, bounded answers ------------------------------------

def _event_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"id": st.text(max_size=5), "source": st.sampled_from(["qtmt-aqi", "Bad", ""]),
         "type": st.sampled_from(["telemetry", "status", "x"])},
        optional={"time": st.sampled_from(["2026-03-02T08:00:00Z", "0001-01-01T00:00:00Z", "x", ""]),
                  "metric": st.just("env.aqi"), "value": json_scalars, "tags": json_values, "extra": json_values})


@settings(max_examples=400, deadline=None)
@given(st.lists(_event_like() | json_values, max_size=8), st.booleans(),
       st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.binary(min_size=0, max_size=3)),
                max_size=3))
def test_decode_never_raises_and_answers_every_item(items: list[Any], ndjson: bool,
                                                    cuts: list[tuple[int, bytes]]) -> None:
    payload = b"\n".join(dump(item) for item in items) if ndjson else dump(items)
    mutated = payload
    for position, insert in cuts:  # bad UTF-8, stray bytes, truncation
        position %= len(mutated) + 1
        mutated = mutated[:position] + insert + mutated[position + len(insert):]
    for body in (payload, mutated):
        decoded = decode_payload(body, max_bytes=1 << 20, max_items=5, ndjson=ndjson)
        assert decoded and all(isinstance(item, Accepted | Rejection) for item in decoded)
        for item in decoded:
            if isinstance(item, Rejection):
                assert item.code and len(item.message) < 2000 and isinstance(item.raw, bytes)
    decoded = decode_payload(payload, max_bytes=1 << 20, max_items=5, ndjson=ndjson)
    if len(items) > 5:
        assert [item.code for item in decoded] == ["too_many_items"]  # type: ignore[union-attr]
    elif items:
        assert len(decoded) == len(items)


# --- memory: in proportion to the payload, never per item -----------------------------------------------

@pytest.mark.parametrize(
    "payload",
    [
        b"[" + b"{}," * (2_796_000) + b"{}]",  # 8 MiB of empty objects: refused, counted without parsing
        b"[" + b",".join([b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(80)) + b"}"] * 10_000) + b"]",
        b"[" + b",".join([b"[" + b"[]," * 270 + b"[]]"] * 10_000) + b"]",
    ],
    ids=["8MiB-empty-objects", "10k-items-of-80-unknown-keys", "10k-items-of-nested-arrays"],
)
def test_decoding_costs_memory_in_proportion_to_the_payload(payload: bytes) -> None:
    tracemalloc.start()
    try:
        decoded = decode_payload(payload, max_bytes=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(payload) <= 8 << 20 and decoded
    assert peak < 4 * len(payload), f"{peak / len(payload):.1f}x the payload"


# --- dead letters: at most 64 KiB of the payload ---------------------------------------------------------

def test_dead_letter_body_keeps_small_payloads_whole() -> None:
    assert orjson.loads(dead_letter_body("bad", b'{"x": "\xc3\xa1"}')) == {"reason": "bad", "payload": '{"x": "á"}'}
    assert orjson.loads(dead_letter_body("bad", b"\xff\x00")) == {
        "reason": "bad", "payload": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40).map(lambda text: text.encode()) | st.binary(max_size=40),
       st.integers(min_value=1, max_value=50))
def test_dead_letter_body_cuts_at_the_limit_on_a_character(payload: bytes, limit: int) -> None:
    body = orjson.loads(dead_letter_body("why", payload, limit=limit))
    assert body["reason"] == "why"
    kept = base64.b64decode(body["payload"]) if body.get("encoding") == "base64" else body["payload"].encode()
    assert payload.startswith(kept) and len(kept) <= limit
    if len(payload) <= limit:
        assert kept == payload and "truncated" not in body
    else:
        assert body["truncated"] is True
        assert len(kept) > limit - 4 or body.get("encoding") == "base64"
        assert body.get("encoding") != "base64" or kept == payload[:limit]


def test_a_dead_letter_of_megabytes_is_64_kib() -> None:
    body = dead_letter_body("too many items", b"[" + b"{}," * 3_000_000)
    assert len(body) < DEAD_LETTER_MAX_BYTES + 100
    assert orjson.loads(body)["truncated"] is True
