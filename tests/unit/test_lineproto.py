"""Line protocol rendering (docs/influxdb.md). Round trips through real servers are in the integration
tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioc import lineproto
from ioc.envelope import EVENT_ADAPTER, event_time_ns, tag_value_problem
from ioc.ingest.decode import Accepted, decode_payload
from ioc.lineproto import escape_tag, render_event, render_point, string_field


def event(**fields: object) -> object:
    base = {"id": "a1", "source": "qtmt-aqi", "time": "2026-03-02T08:00:00.000001+07:00"}
    return EVENT_ADAPTER.validate_json(orjson.dumps({**base, **fields}))


def test_telemetry_line() -> None:
    line = render_event(event(type="telemetry", metric="env.aqi", value=160, area="22723",
                              tags={"station": "Phan Thiết 1", "b": "x,y=z"}))
    assert line == (r"env.aqi,source=qtmt-aqi,area=22723,station=Phan\ Thiết\ 1,b=x\,y\=z value=160.0 "
                    "1772413200000001000")


def test_escaped_tags_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Escaped keys and values are looked up, not translated again; a vendor sending ever new values
    cannot grow the memory past the bound, and the lines stay right across the clearing."""
    monkeypatch.setattr(lineproto, "_ESCAPED", {})
    monkeypatch.setattr(lineproto, "_ESCAPED_MAX", 4)
    for n in range(20):
        line = render_event(event(type="telemetry", metric="env.aqi", value=1, area="22723",
                                  tags={"station": f"Trạm {n}", "site": "a=b"}))
        assert line == (rf"env.aqi,source=qtmt-aqi,area=22723,station=Trạm\ {n},site=a\=b value=1.0 "
                        "1772413200000001000")
        assert len(lineproto._ESCAPED) <= 4
    assert lineproto._ESCAPED.get("a=b", r"a\=b") == r"a\=b"


def test_status_line_writes_up_as_float() -> None:
    line = render_event(event(type="status", entity="BTS 01", state="down", area="22723"))
    assert line == r'status,area=22723,entity=BTS\ 01,source=qtmt-aqi state="down",up=0.0 1772413200000001000'


def test_time_keeps_microseconds_exactly() -> None:
    time = datetime(2026, 3, 2, 8, 0, 0, 999999, tzinfo=timezone(timedelta(hours=7)))
    assert event_time_ns(time) == 1772413200_999999_000


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_time_ns_matches_datetime_arithmetic_for_any_offset(naive: datetime, minutes: int) -> None:
    time = naive.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert event_time_ns(time) == (time - epoch) // timedelta(microseconds=1) * 1000


def test_time_ns_of_parsed_events_with_z_and_negative_offsets() -> None:
    for text, expected in [("2026-03-02T01:00:00Z", 1772413200), ("2026-03-01T20:00:00-05:00", 1772413200),
                           ("2026-03-02T06:45:00+05:45", 1772413200)]:
        parsed = event(type="telemetry", metric="m", value=1, time=text)
        assert event_time_ns(parsed.time) == expected * 10**9  # type: ignore[attr-defined]


def test_string_field_escapes_quote_and_backslash() -> None:
    assert string_field('a"b\\c') == '"a\\"b\\\\c"'


def test_render_point_leaves_out_none_tags_and_sorts() -> None:
    line = render_point("kpi", {"level": "commune", "area": None, "kpi": "kpi.dossier.open"},
                        {"value": 3, "target": 90.0}, 5)
    assert line == "kpi,kpi=kpi.dossier.open,level=commune value=3.0,target=90.0 5"


@given(st.text(min_size=1).filter(lambda s: tag_value_problem(s) is None))
def test_escaped_tags_hold_no_unescaped_separator(value: str) -> None:
    escaped = escape_tag(value)
    index = 0
    while index < len(escaped):  # every separator in the output is preceded by a backslash
        if escaped[index] in ", =":
            assert index > 0 and escaped[index - 1] == "\\"
        index += 1


def test_every_accepted_event_renders_one_line_without_raw_newline_in_tags() -> None:
    payload = orjson.dumps({"id": "x", "source": "s", "type": "status", "time": "2026-01-01T00:00:00Z",
                            "entity": "e", "state": "up", "detail": "line1\nline2"})
    [item] = decode_payload(payload, max_bytes=1000)
    assert isinstance(item, Accepted)
    assert "\n" not in render_event(item.event)  # detail is not stored; tags cannot hold newlines
