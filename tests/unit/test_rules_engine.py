"""The engine as a whole: the index agrees with brute force, state survives a restart, reloads."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ioc.rules.engine import RuleEngine, StateError
from ioc.rules.index import RuleIndex
from ioc.rules.kinds import RULE_ADAPTER
from ioc.rules.kinds.window import WindowKind
from ioc.rules.loader import parse_rules
from ioc.rules.spec import Pattern, RuleBase

from ioc.areas import AreaRegistry, local_date
from ioc.envelope import AnyEvent
from tests.unit.rules_support import START, Recorder, at, event, status, tel

AREAS = AreaRegistry.default()

# --- the index against brute force -------------------------------------------------------------------

SOURCES = ["a", "b", "c"]
METRICS = ["m1", "m2", "m3"]
ENTITIES = ["e1", "e2"]
AREA_CODES = ["60", "22723", "22693"]
TAG_VALUES = ["x", "y"]


def _value(choices: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(choices), st.lists(st.sampled_from(choices), min_size=1,
                                                                   max_size=2),
                     st.sampled_from(choices).map(lambda v: {"re": f"{v[0]}.*"}))


@st.composite
def rules(draw: st.DrawFn, index: int) -> RuleBase:
    kind = draw(st.sampled_from(["threshold", "status", "absence", "window"]))
    match: dict[str, Any] = {}
    for name, choices in (("source", SOURCES), ("metric", METRICS), ("entity", ENTITIES)):
        value = draw(_value(choices))
        if value is not None:
            match[name] = value
    if draw(st.booleans()):
        match["type"] = draw(st.sampled_from(["telemetry", "status", "dossier"]))
    area = draw(st.one_of(st.none(), st.sampled_from(AREA_CODES)))
    if area is not None:
        match["area"] = area
    tags = draw(st.dictionaries(st.sampled_from(["k1", "k2"]), st.sampled_from(TAG_VALUES), max_size=2))
    if tags:
        match["tags"] = tags
    body: dict[str, Any] = {"id": f"r{index}", "kind": kind, "severity": "info", "match": match}
    if kind == "threshold":
        body |= {"op": ">", "threshold": 0.0}
        match.pop("type", None)
    elif kind == "status":
        match.pop("type", None)
    elif kind == "absence":
        body["after"] = "1m"
    else:
        body |= {"aggregate": "count", "window": "1m", "op": ">", "threshold": 0.0}
    return RULE_ADAPTER.validate_python(body)


@st.composite
def events(draw: st.DrawFn) -> AnyEvent:
    kind = draw(st.sampled_from(["telemetry", "status", "dossier"]))
    fields: dict[str, Any] = {"source": draw(st.sampled_from(SOURCES))}
    area = draw(st.one_of(st.none(), st.sampled_from([*AREA_CODES, "99999"])))
    if area is not None:
        fields["area"] = area
    tags = draw(st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), st.sampled_from(TAG_VALUES), max_size=3))
    if tags:
        fields["tags"] = tags
    if kind == "telemetry":
        return tel(0, 1.0, metric=draw(st.sampled_from(METRICS)), **fields)
    if kind == "status":
        return status(0, draw(st.sampled_from(ENTITIES)), "down", **fields)
    return event(0, type="dossier", dossier_id="d", procedure="p", status="received", received_at=START,
                 due_at=START, channel="online", level="commune", **fields)


def _wants(want: Any, have: str | None) -> bool:
    if want is None:
        return True
    if have is None:
        return False
    if isinstance(want, Pattern):
        return re.fullmatch(want.re, have) is not None
    return have in ([want] if isinstance(want, str) else want)


def brute_force(rule: RuleBase, item: AnyEvent) -> bool:
    match = rule.match
    if item.type not in rule.event_types():
        return False
    if not all(_wants(getattr(match, name), getattr(item, name, None)) for name in ("source", "metric", "entity")):
        return False
    if match.area is not None:
        wanted = [match.area] if isinstance(match.area, str) else match.area
        day = local_date(item.time.timestamp())
        if item.area is None or not any(AREAS.is_within(item.area, code, day) for code in wanted):
            return False
    return all(_wants(want, (item.tags or {}).get(key)) for key, want in (match.tags or {}).items())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(*(rules(i) for i in range(n)))),
       st.lists(events(), min_size=1, max_size=20))
def test_the_index_matches_exactly_what_brute_force_does(rule_list: tuple[RuleBase, ...],
                                                         event_list: list[AnyEvent]) -> None:
    index = RuleIndex([(rule, rule.id) for rule in rule_list], AREAS)
    for item in event_list:
        assert index.match(item) == [rule.id for rule in rule_list if brute_force(rule, item)]


def test_the_index_looks_only_where_an_event_can_match() -> None:
    many = [RULE_ADAPTER.validate_python({"id": f"r{i}", "kind": "threshold", "severity": "info",
                                          "match": {"metric": f"m{i}"}, "op": ">", "threshold": 0.0})
            for i in range(1000)]
    index = RuleIndex([(rule, rule.id) for rule in many], None)
    assert index.candidates(tel(0, 1, metric="m7")) == [7]
    assert index.match(tel(0, 1, metric="m7")) == ["r7"]


# --- state across a restart --------------------------------------------------------------------------

MIXED = """
rules:
  - id: t
    kind: threshold
    severity: critical
    match: {metric: m}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    for: 10m
  - id: w
    kind: window
    severity: warning
    match: {metric: m}
    group_by: [area]
    aggregate: avg
    window: 1h
    op: ">"
    threshold: 100
  - id: silent
    kind: absence
    severity: warning
    match: {source: s}
    group_by: [source]
    after: 15m
  - id: share
    kind: share
    severity: critical
    match: {type: status}
    group_by: [area]
    op: ">="
    threshold: 50
  - id: down
    kind: status
    severity: warning
    group_by: [entity]
    for: 5m
"""


def _script(offset: int) -> list[AnyEvent]:
    return [tel(offset, 160, area="1"), tel(offset + 60, 130, area="1"), tel(offset + 90, 90, area="2"),
            status(offset + 100, "c1", "down", area="1"), status(offset + 110, "c2", "up", area="1")]


def test_dump_and_load_round_trip_continues_exactly_as_if_never_stopped() -> None:
    a = Recorder(MIXED)
    a.feed(*_script(0))
    saved = a.engine.dump_state()
    b = Recorder(MIXED)  # the same start-up time: only the state differs
    b.engine.load_state(saved)
    assert sorted(map(repr, b.engine.active())) == sorted(map(repr, a.engine.active()))
    assert b.engine.dump_state() == saved
    before = len(a.updates)
    later = [tel(3600 + 30, 115, area="1"), tel(3600 + 40, 110, area="1"), status(3600, "c1", "up", area="1")]
    for engine in (a, b):
        engine.feed(*later)
        engine.advance("3h")
    assert [repr(u) for u in a.updates[before:]] == [repr(u) for u in b.updates]
    assert len(b.updates) >= 4


def test_the_state_is_encoded_after_the_engine_is_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon saves the state every 30 s from another thread: a window's samples (up to a million) are
    encoded while the engine judges events, and what is saved is the state when it was copied."""
    r = Recorder(MIXED)
    r.feed(*_script(0))
    expected = r.engine.dump_state()
    encode = WindowKind.encode
    seen: list[bool] = []

    def encoding_meanwhile(kind: WindowKind, snapshot: Any) -> Any:
        def evaluation() -> None:  # the evaluation thread, with an event for the window being encoded
            free = r.engine.still().acquire(blocking=False)
            seen.append(free)
            if free:
                r.engine.still().release()
                r.feed(tel(100, 99, area="1"))

        thread = threading.Thread(target=evaluation)
        thread.start()
        thread.join()
        return encode(kind, snapshot)

    monkeypatch.setattr(WindowKind, "encode", encoding_meanwhile)
    assert r.engine.dump_state() == expected
    assert seen and all(seen)
    monkeypatch.undo()
    assert r.engine.dump_state() != expected  # the event of the meantime is in the next save


def test_state_of_a_changed_rule_is_not_restored() -> None:
    a = Recorder(MIXED)
    a.feed(*_script(0))
    b = Recorder(MIXED.replace("threshold: 151", "threshold: 152"))
    b.engine.load_state(a.engine.dump_state())
    assert "t" not in {alert.rule for alert in b.engine.active()}
    assert "w" in {alert.rule for alert in b.engine.active()}


@pytest.mark.parametrize("data", [b"", b"[]", b'{"version": 9}', b'{"version": 1, "rules": {"t": 3}}',
                                  b'{"version": 1}', b"\xff"])
def test_unreadable_state_is_a_state_error(data: bytes) -> None:
    r = Recorder(MIXED)
    with pytest.raises(StateError, match="rule state: "):
        r.engine.load_state(data)


def test_state_that_does_not_fit_the_rule_changes_nothing() -> None:
    a = Recorder(MIXED)
    a.feed(*_script(0))
    saved = a.engine.dump_state().replace(b'"key":["1"]', b'"key":["1","extra"]', 1)
    b = Recorder(MIXED)
    with pytest.raises(StateError):
        b.engine.load_state(saved)
    assert b.engine.active() == []


# --- replace_rules -----------------------------------------------------------------------------------

def test_replace_rules_keeps_unchanged_rules_and_resolves_removed_and_changed_ones() -> None:
    r = Recorder(MIXED)
    r.feed(tel(0, 160, area="1"), status(0, "c1", "down", area="1"))
    assert {a.rule: a.state for a in r.engine.active()} == {"t": "pending", "w": "firing", "share": "firing",
                                                            "down": "pending"}
    text = MIXED.replace("threshold: 100", "threshold: 99")                       # w changed
    text = text[:text.index("  - id: share")] + text[text.index("  - id: down"):]  # share removed
    text += "  - id: new-silent\n    kind: absence\n    severity: info\n    match: {source: q}\n    after: 10m\n"
    before = len(r.updates)
    r.engine.replace_rules(parse_rules(text))
    assert sorted((u.rule, u.state) for u in r.updates[before:]) == [("share", "resolved"), ("w", "resolved")]
    assert all(u.at == at(0) for u in r.updates[before:])
    r.advance("10m")
    # t kept its pending since 0 and fires at 10m; w starts afresh and only fires on the next event
    assert {a.rule: a.state for a in r.engine.active()} == {"t": "firing", "down": "firing", "new-silent": "firing"}
    metrics = {family.name: family for family in r.engine.metrics()()}
    assert metrics["ioc_rules_loaded"].samples[0].value == 5


def test_a_rule_added_by_a_reload_gets_its_grace_period_from_the_reload() -> None:
    r = Recorder("rules: []\n")
    r.feed(tel("1h", 1, source="x"))
    r.engine.replace_rules(parse_rules(
        "rules:\n  - {id: q, kind: absence, severity: info, match: {source: q}, group_by: [source], after: 10m}\n"))
    r.advance("1h9m")
    assert r.engine.active() == []
    r.advance("1h10m")
    assert [(a.rule, a.labels) for a in r.engine.active()] == [("q", {"source": "q"})]


def test_observe_is_thread_safe() -> None:
    r = Recorder("rules:\n  - {id: c, kind: window, severity: info, aggregate: count, window: 1d, op: '>', "
                 "threshold: 1000000}\n")
    batches = [[tel(i, 1, area=str(n)) for i in range(500)] for n in range(4)]
    threads = [threading.Thread(target=r.feed, args=batch) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    group = next(iter(r.engine._runtimes["c"].groups.values()))
    assert len(group.data.items) == 2000


def test_an_engine_without_a_registry_matches_areas_exactly() -> None:
    text = "rules:\n  - {id: a, kind: status, severity: info, match: {area: '60'}}\n"
    updates: list[Any] = []
    engine = RuleEngine(parse_rules(text), areas=None, on_change=updates.append, started_at=at(0))
    engine.observe(status(0, "c", "down", area="22723"))
    engine.observe(status(0, "c", "down", area="60"))
    assert [u.labels for u in updates] == [{}]
