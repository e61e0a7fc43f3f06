"""The fuzzers' own parts: the JSON writer says what it must, the MQTT oracle counts as the contract
does, and the generators reach past validation (a fuzzer whose cases all die at the first check tests
nothing)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ioc.envelope import EVENT_ADAPTER
from tests.fuzz.strategies import Pairs, Raw, dumps, outcomes_allowed, valid_events


def test_dumps_writes_what_python_objects_cannot() -> None:
    assert dumps({"value": Raw("1e400")}) == b'{"value":1e400}'
    assert dumps(Pairs((("id", "a"), ("id", "b")))) == b'{"id":"a","id":"b"}'
    assert dumps(["\ud800"]) == b'["\\ud800"]'  # a lone surrogate, escaped: valid JSON text
    assert dumps(["é😀"]) == "[\"é😀\"]".encode()  # others raw, 4-byte characters included
    assert dumps([10**30, float("nan")]) == b"[1000000000000000000000000000000, NaN]".replace(b", ", b",")


def test_outcomes_allowed_follows_the_json_grammar_and_the_limits() -> None:
    assert outcomes_allowed(b'{"id": 1}') == (1,)
    assert outcomes_allowed(b"[{},{},{}]") == (1, 3)  # one per item, or the message refused whole
    assert outcomes_allowed(b" [1e400, \"\\ud800\"]") == (1, 2)  # grammatical, whatever a double holds
    assert outcomes_allowed(b"[]") == (1,)  # an empty batch is dead-lettered, never silently dropped
    assert outcomes_allowed(b"[NaN, 1]") == (1,)
    assert outcomes_allowed(b"\xef\xbb\xbf[1, 2]") == (1,)
    assert outcomes_allowed(b"[1, 2]\xff") == (1,)
    assert outcomes_allowed(b"[" + b",".join([b"{}"] * 11) + b"]", max_items=10) == (1,)
    assert outcomes_allowed(b"[" * 5000 + b"]" * 5000 + b",[]]") == range(1, 3)


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(st.one_of(valid_events("qtmt-aqi"), valid_events("viettel-ran")))
def test_valid_events_are_valid(event: dict[str, object]) -> None:
    EVENT_ADAPTER.validate_json(dumps(event))
    assert json.loads(dumps(event)) == event
