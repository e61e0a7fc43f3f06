"""Validation of the envelope (CONTRACT §2): every bad input gets a specific reason naming the field."""

from __future__ import annotations

import orjson
import pytest

from ioc.ingest.decode import Accepted, Rejection, decode_payload
from ioc.models import StatusEvent, TelemetryEvent

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
