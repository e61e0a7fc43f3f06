"""Each rule kind's semantics on a fake (event-time) clock, and the timing every kind shares."""

from __future__ import annotations

from datetime import datetime

import pytest
from ioc.rules.kinds import window as window_module
from ioc.rules.template import format_number
from structlog.testing import capture_logs

from ioc.areas import AreaRegistry
from tests.unit.rules_support import VN, Recorder, at, status, tel

AREAS = AreaRegistry.default()


def threshold_rule(extra: str = "", op: str = ">=", threshold: str = "151", group_by: str = "[area]") -> str:
    return f"""
rules:
  - id: t
    kind: threshold
    severity: critical
    match: {{metric: m}}
    group_by: {group_by}
    op: "{op}"
    threshold: {threshold}
    summary: "{{{{ value }}}} / {{{{ threshold }}}}"
{extra}"""


# --- threshold ---------------------------------------------------------------------------------------

def test_threshold_with_no_for_fires_at_once_and_resolves_when_the_value_drops() -> None:
    r = Recorder(threshold_rule())
    r.feed(tel(0, 160, area="22945"), tel(60, 150, area="22945"))
    assert r.changes() == [("t", "firing", 0), ("t", "resolved", 60)]
    assert [u.summary for u in r.updates] == ["160 / 151", "150 / 151"]
    assert r.updates[0].labels == {"area": "22945"} and r.updates[0].value == 160.0


def test_for_goes_pending_then_firing_at_the_moment_it_was_due() -> None:
    r = Recorder(threshold_rule("    for: 10m"))
    r.feed(tel(0, 160, area="1"))
    r.advance("9m")
    assert r.states() == {("t", (("area", "1"),)): "pending"}
    r.advance("25m")  # noticed late: the change still happened at 10m
    assert r.changes() == [("t", "pending", 0), ("t", "firing", 600)]
    assert r.states() == {("t", (("area", "1"),)): "firing"}


def test_an_event_after_the_for_deadline_fires_before_it_is_judged() -> None:
    r = Recorder(threshold_rule("    for: 10m"))
    r.feed(tel(0, 160, area="1"), tel("12m", 100, area="1"))  # no advance in between
    assert r.changes() == [("t", "pending", 0), ("t", "firing", 600), ("t", "resolved", 720)]


def test_a_pending_alert_whose_condition_stops_resolves_at_once() -> None:
    r = Recorder(threshold_rule("    for: 10m\n    keep_firing_for: 1h"))
    r.feed(tel(0, 160, area="1"), tel("5m", 10, area="1"))
    assert r.changes() == [("t", "pending", 0), ("t", "resolved", 300)]
    assert r.states() == {}


def test_keep_firing_for_holds_a_firing_alert_and_a_return_cancels_the_countdown() -> None:
    r = Recorder(threshold_rule("    keep_firing_for: 10m"))
    r.feed(tel(0, 160, area="1"), tel("1m", 10, area="1"))
    r.advance("10m")
    assert r.states() == {("t", (("area", "1"),)): "firing"}
    r.feed(tel("10m30s", 170, area="1"), tel("12m", 10, area="1"))
    r.advance("21m")
    assert r.states() == {("t", (("area", "1"),)): "firing"}  # 12m + 10m not reached yet
    r.advance("23m")
    assert r.changes() == [("t", "firing", 0), ("t", "resolved", 22 * 60)]


def test_hysteresis_resolves_only_below_clear_and_refires_only_above_the_threshold() -> None:
    r = Recorder(threshold_rule("    clear: 120"))
    r.feed(tel(0, 160, area="1"), tel(1, 125, area="1"), tel(2, 120, area="1"))
    assert r.changes() == [("t", "firing", 0)]
    r.feed(tel(3, 119, area="1"), tel(4, 140, area="1"))
    assert r.changes() == [("t", "firing", 0), ("t", "resolved", 3)]
    r.feed(tel(5, 151, area="1"))
    assert r.changes()[-1] == ("t", "firing", 5)


def test_hysteresis_for_a_lower_bound() -> None:
    r = Recorder(threshold_rule("    clear: 20", op="<", threshold="10"))
    r.feed(tel(0, 5, area="1"), tel(1, 15, area="1"), tel(2, 21, area="1"))
    assert r.changes() == [("t", "firing", 0), ("t", "resolved", 2)]


@pytest.mark.parametrize(("op", "holds_for"), [
    (">", [11]), (">=", [10, 11]), ("<", [9]), ("<=", [9, 10]), ("==", [10]), ("!=", [9, 11]),
])
def test_each_operator(op: str, holds_for: list[int]) -> None:
    for value in (9, 10, 11):
        r = Recorder(threshold_rule(op=op, threshold="10", group_by="[]"))
        r.feed(tel(0, value))
        assert bool(r.states()) == (value in holds_for), (op, value)


def test_per_level_thresholds_follow_the_registry_on_the_events_date() -> None:
    r = Recorder(threshold_rule(threshold="{province: 50, district: 20, commune: 10}"), areas=AREAS)
    r.feed(tel(0, 12, area="22945"),    # a commune: 12 >= 10
           tel(0, 12, area="68"),       # the province: 12 < 50
           tel(0, 999, area="99999"))   # not in the registry: not judged
    assert r.states() == {("t", (("area", "22945"),)): "firing"}
    assert r.updates[0].summary == "12 / 10"
    # in 2024 area 593 was a district (threshold 20); it no longer exists in 2026
    old = Recorder(threshold_rule(threshold="{province: 50, district: 20}"), areas=AREAS)
    old.engine.observe(tel(0, 25, area="593").model_copy(update={"time": datetime(2024, 5, 1, tzinfo=VN)}))
    assert [u.labels for u in old.updates] == [{"area": "593"}]
    old.feed(tel(0, 25, area="593"))  # 2026: no level, so the rule does not apply: it resolves
    assert [u.state for u in old.updates] == ["firing", "resolved"]


def test_a_level_missing_from_the_map_is_not_judged() -> None:
    r = Recorder(threshold_rule(threshold="{province: 50}"), areas=AREAS)
    r.feed(tel(0, 1000, area="22945"))
    assert r.states() == {}


def test_threshold_target_uses_the_registrys_target_for_the_level() -> None:
    rule = threshold_rule(op="<", threshold="target").replace("match: {metric: m}",
                                                               "match: {metric: kpi.dossier.online_share}")
    r = Recorder(rule, areas=AREAS)
    r.feed(tel(0, 70, metric="kpi.dossier.online_share", area="22945"),  # commune target 60
           tel(0, 70, metric="kpi.dossier.online_share", area="68"))     # province target 90
    assert r.states() == {("t", (("area", "68"),)): "firing"}
    assert r.updates[0].summary == "70 / 90"


def test_an_event_lacking_a_group_by_label_is_grouped_with_it_absent() -> None:
    r = Recorder(threshold_rule(group_by="[area, station]", threshold="1"))
    r.feed(tel(0, 5, area="1", tags={"station": "A"}), tel(0, 5, area="1"), tel(0, 5))
    assert set(r.states()) == {("t", (("area", "1"), ("station", "A"))), ("t", (("area", "1"),)), ("t", ())}


def test_a_late_value_does_not_replace_the_latest() -> None:
    r = Recorder(threshold_rule(threshold="100"))
    r.feed(tel(10, 150, area="1"), tel(5, 50, area="1"))
    assert r.states() == {("t", (("area", "1"),)): "firing"}


def test_static_labels_and_area_name_in_the_summary() -> None:
    text = threshold_rule("    labels: {team: moi-truong}").replace(
        '"{{ value }} / {{ threshold }}"', '"Không khí xấu tại {{ area_name }}: {{ value }} ({{ team }})"')
    r = Recorder(text, areas=AREAS)
    r.feed(tel(0, 170.256, area="22945"), tel(0, 170, area="88888"))
    assert [u.summary for u in r.updates] == ["Không khí xấu tại Phường Phan Thiết: 170,26 (moi-truong)",
                                              "Không khí xấu tại 88888: 170 (moi-truong)"]
    assert r.updates[0].labels == {"area": "22945", "team": "moi-truong"}


@pytest.mark.parametrize(("value", "text"), [(160.0, "160"), (12.345, "12.35"), (0.5, "0.5"), (-3.0, "-3"),
                                             (33.3333, "33.33"), (1e-9, "0")])
def test_numbers_in_summaries(value: float, text: str) -> None:
    assert format_number(value) == text


# --- window ------------------------------------------------------------------------------------------

def window_rule(aggregate: str, op: str, threshold: float, window: str = "10m") -> str:
    return f"""
rules:
  - id: w
    kind: window
    severity: warning
    match: {{source: s}}
    aggregate: {aggregate}
    window: {window}
    op: "{op}"
    threshold: {threshold}
"""


def test_a_count_alert_resolves_as_the_window_slides_with_no_event() -> None:
    r = Recorder(window_rule("count", ">=", 3))
    r.feed(tel(0, 1), status("1m", "x", "up"), tel("2m", 1))
    assert r.changes() == [("w", "firing", 120)]
    r.advance("9m")
    assert r.states() == {("w", ()): "firing"}
    r.advance("30m")
    assert r.changes() == [("w", "firing", 120), ("w", "resolved", 600)]  # the 0m sample left at 10m


def test_rate_is_events_per_second_over_the_window() -> None:
    r = Recorder(window_rule("rate", ">", 0.004))  # 10 minutes: 3 events = 0.005/s
    r.feed(tel(0, 1), tel(1, 1))
    assert r.states() == {}
    r.feed(tel(2, 1))
    assert r.updates[-1].value == pytest.approx(3 / 600)


@pytest.mark.parametrize(("aggregate", "expected"), [("avg", 20.0), ("min", 10.0), ("max", 30.0),
                                                     ("sum", 60.0), ("count", 3.0)])
def test_aggregates(aggregate: str, expected: float) -> None:
    r = Recorder(window_rule(aggregate, ">", -1e9))
    r.feed(tel(0, 10), tel(1, 30), tel(2, 20))
    assert r.engine.active()[0].value == expected


def test_min_and_max_follow_the_window_as_samples_expire() -> None:
    r = Recorder(window_rule("max", ">", 50, window="1m"))
    r.feed(tel(0, 90), tel(10, 40), tel(20, 60), tel(30, 20))
    assert r.engine.active()[0].value == 90
    r.advance(61)  # 90 left: the max is 60
    assert r.engine.active()[0].value == 60
    r.advance(81)  # 40 left at 70s, 60 at 80s: only 20 remains
    assert r.states() == {}
    assert r.changes() == [("w", "firing", 0), ("w", "resolved", 80)]


def test_an_empty_window_has_no_average_and_does_not_hold() -> None:
    r = Recorder(window_rule("avg", "<", 5, window="1m"))
    r.feed(tel(0, 1))
    r.advance("5m")
    assert r.changes() == [("w", "firing", 0), ("w", "resolved", 60)]
    assert r.updates[-1].value == 1.0  # the last value judged is kept for the summary


def test_avg_ignores_status_events_but_count_takes_them() -> None:
    r = Recorder(window_rule("avg", ">", 0))
    r.feed(status(0, "x", "down"))
    assert r.states() == {}


def test_samples_are_bounded_and_drops_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(window_module, "MAX_SAMPLES", 5)
    r = Recorder(window_rule("count", ">", 100, window="1h"))
    r.feed(*(tel(i, 1) for i in range(8)))
    metrics = {family.name: family for family in r.engine.metrics()()}
    assert metrics["ioc_rule_samples_dropped"].samples[0].value == 3
    runtime = r.engine._runtimes["w"]
    assert len(next(iter(runtime.groups.values())).data.items) == 5


# --- absence -----------------------------------------------------------------------------------------

ABSENCE = """
rules:
  - id: silent
    kind: absence
    severity: warning
    match: {source: [qtmt-aqi, viettel-ran]}
    group_by: [source]
    after: 15m
    summary: "{{ source }} im lặng"
"""


def test_absence_of_a_never_seen_series_fires_once_after_has_passed_since_start_up() -> None:
    r = Recorder(ABSENCE, started="1h")
    r.advance("1h14m59s")
    assert r.states() == {}
    r.advance("1h15m")
    assert sorted(r.changes()) == [("silent", "firing", 4500), ("silent", "firing", 4500)]
    assert {u.labels["source"] for u in r.updates} == {"qtmt-aqi", "viettel-ran"}
    assert r.updates[0].value is None and r.updates[0].summary.endswith(" im lặng")


def test_absence_fires_after_the_last_event_and_resolves_when_one_arrives() -> None:
    r = Recorder(ABSENCE)
    r.feed(tel("10m", 1, source="qtmt-aqi"), tel("10m", 1, source="viettel-ran"))
    r.advance("24m")
    assert r.states() == {}
    r.feed(tel("20m", 1, source="viettel-ran"))  # late but still in time for viettel-ran
    r.advance("25m")
    assert r.states() == {("silent", (("source", "qtmt-aqi"),)): "firing"}
    assert r.changes() == [("silent", "firing", 25 * 60)]
    r.feed(tel("26m", 1, source="qtmt-aqi"))
    assert r.changes()[-1] == ("silent", "resolved", 26 * 60)


def test_a_late_event_does_not_resolve_a_series_still_silent_for_after() -> None:
    r = Recorder(ABSENCE)
    r.feed(tel(0, 1, source="qtmt-aqi"), tel("1h", 1, source="viettel-ran"))
    assert ("silent", (("source", "qtmt-aqi"),)) in r.states()
    r.feed(tel("30m", 1, source="qtmt-aqi"))  # arrives at 1h, dated 30m: silent since then for 30m
    assert ("silent", (("source", "qtmt-aqi"),)) in r.states()


def test_absence_of_series_not_fixed_by_match_is_known_only_once_seen() -> None:
    r = Recorder(ABSENCE.replace("group_by: [source]", "group_by: [entity]").replace("{{ source }}", "{{ entity }}"))
    r.advance("2h")
    assert r.states() == {}
    r.feed(status("2h", "cell-1", "up", source="viettel-ran"))
    r.advance("2h15m")
    assert r.states() == {("silent", (("entity", "cell-1"),)): "firing"}


def test_absence_grace_period_after_a_restart() -> None:
    first = Recorder(ABSENCE)
    first.feed(tel("10m", 1, source="qtmt-aqi"), tel("10m", 1, source="viettel-ran"))
    saved = first.engine.dump_state()
    again = Recorder(ABSENCE, started="1h")  # down from 10m to 1h: nothing fires before 1h15m
    again.engine.load_state(saved)
    again.advance("1h14m")
    assert again.states() == {}
    again.advance("1h15m")
    assert len(again.states()) == 2


# --- status and share --------------------------------------------------------------------------------

STATUS = """
rules:
  - id: down
    kind: status
    severity: warning
    match: {source: ran}
    group_by: [entity, area]
    for: 5m
"""


def test_status_down_for_5_minutes_fires_and_up_resolves() -> None:
    r = Recorder(STATUS)
    r.feed(status(0, "c1", "down", source="ran", area="1"), status("3m", "c1", "degraded", source="ran", area="1"))
    assert r.changes() == [("down", "pending", 0), ("down", "resolved", 180)]
    r.feed(status("4m", "c1", "down", source="ran", area="1"))
    r.advance("9m")
    assert r.changes()[-1] == ("down", "firing", 540)
    assert r.updates[-1].value == 0.0
    r.feed(status("10m", "c1", "up", source="ran", area="1"))
    assert r.changes()[-1] == ("down", "resolved", 600) and r.updates[-1].value == 1.0


def test_status_states_may_include_degraded() -> None:
    r = Recorder(STATUS.replace("for: 5m", "states: [down, degraded]"))
    r.feed(status(0, "c1", "degraded", source="ran"))
    assert r.states() == {("down", (("entity", "c1"),)): "firing"}


SHARE = """
rules:
  - id: outage
    kind: share
    severity: critical
    match: {source: ran}
    group_by: [area]
    op: ">="
    threshold: 50
    summary: "{{ value }}%"
"""


def test_share_is_over_the_distinct_entities_seen_by_their_latest_state() -> None:
    r = Recorder(SHARE)
    r.feed(*(status(0, f"c{i}", "up", source="ran", area="1") for i in range(3)))
    r.feed(status(1, "c0", "down", source="ran", area="1"))
    assert r.states() == {}
    r.feed(status(2, "c0", "down", source="ran", area="1"), status(3, "c3", "down", source="ran", area="1"))
    assert r.states() == {("outage", (("area", "1"),)): "firing"}  # 2 of 4
    assert r.updates[-1].summary == "50%"
    r.feed(status(4, "c3", "up", source="ran", area="1"))
    assert r.changes() == [("outage", "firing", 3), ("outage", "resolved", 4)]
    r.feed(status(4, "c9", "down", source="ran", area="2"))  # another area: 1 of 1
    assert r.states() == {("outage", (("area", "2"),)): "firing"}


# --- errors ------------------------------------------------------------------------------------------

TWO = """
rules:
  - id: bad
    kind: threshold
    severity: info
    op: ">"
    threshold: 0
  - id: good
    kind: threshold
    severity: info
    op: ">"
    threshold: 0
"""


def test_a_rule_that_raises_is_counted_logged_once_per_episode_and_never_stops_the_others() -> None:
    r = Recorder(TWO)
    kind = r.engine._runtimes["bad"].kind
    original = kind.observe

    def boom(*args: object) -> None:
        raise RuntimeError("bug")

    kind.observe = boom  # type: ignore[method-assign]
    with capture_logs() as logs:
        r.feed(tel(0, 1), tel(1, 2), tel(2, 3))
        kind.observe = original  # type: ignore[method-assign]
        r.feed(tel(3, 4))
        kind.observe = boom  # type: ignore[method-assign]
        r.feed(tel(4, 5))
    assert [u.rule for u in r.updates] == ["good", "bad"]
    failures = [entry for entry in logs if entry["event"] == "rules.evaluation_failed"]
    assert [entry["rule"] for entry in failures] == ["bad", "bad"]  # two episodes
    metrics = {family.name: {s.labels.get("rule"): s.value for s in family.samples}
               for family in r.engine.metrics()()}
    assert metrics["ioc_rule_errors"] == {"bad": 4.0, "good": 0.0}
    assert metrics["ioc_rule_evaluations"] == {"bad": 5.0, "good": 5.0}
    assert metrics["ioc_rules_loaded"] == {None: 2.0}


def test_a_listener_that_raises_does_not_break_the_engine() -> None:
    seen = []

    def listener(update: object) -> None:
        seen.append(update)
        raise ValueError("listener bug")

    r = Recorder(TWO)
    r.engine._on_change = listener
    with capture_logs() as logs:
        r.feed(tel(0, 1), tel(1, -1))
    assert len(seen) == 4  # firing and resolved of both rules
    assert [e["event"] for e in logs].count("rules.listener_failed") == 1
    assert r.engine.active() == []


def test_the_clock_never_moves_backwards() -> None:
    r = Recorder(threshold_rule("    for: 10m"))
    r.feed(tel("20m", 160, area="1"))
    r.advance("5m")
    assert r.engine.now == at("20m")
    # A late event is judged at its own time (event time): its `for` counts from 1m, so by the engine's
    # 20m it has long held 10 minutes and fires at once, reported when it became due (11m).
    r.feed(tel("1m", 170, area="2"))
    assert r.engine.now == at("20m")  # the clock did not move back
    r.advance("30m")
    assert sorted(r.changes()) == [("t", "firing", 660), ("t", "firing", 1800), ("t", "pending", 60),
                                   ("t", "pending", 1200)]
