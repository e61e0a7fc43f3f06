"""Matchers and silences (ioc.matchers, ioc.alerts.silence) on a fake clock."""

from __future__ import annotations

import re

import pytest

from ioc.alerts.alert import Alert, rfc3339
from ioc.alerts.errors import InvalidSilence, SilenceNotFound
from ioc.alerts.silence import SilenceRequest, Silences, SilenceStore
from ioc.alerts.store import AlertStore
from ioc.matchers import Matcher, parse_matcher
from tests.doubles import SettableClock

T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z = 07:00 in Asia/Ho_Chi_Minh


def alert(rule: str = "cell-down", **labels: str) -> Alert:
    return Alert(id="a" * 32, fingerprint="f" * 16, rule=rule, severity="warning", state="firing",
                 labels=labels, summary="", value=None, started_at=T0)


def request(**body: object) -> SilenceRequest:
    return SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}], "duration": "1h", **body})


# --- matchers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("op", "value", "label", "expected"), [
    ("=", "22723", "22723", True),
    ("=", "22723", "227230", False),
    ("!=", "22723", "22724", True),
    ("!=", "22723", "22723", False),
    ("=~", "227.*", "22723", True),
    ("=~", "22", "22723", False),  # anchored: the whole value must match
    ("=~", "a|b", "b", True),
    ("!~", "a|b", "ab", True),
    ("!~", "227.*", "22723", False),
])
def test_matcher_ops(op: str, value: str, label: str, expected: bool) -> None:
    assert Matcher.create("area", value, op).matches({"area": label}) is expected


def test_a_missing_label_matches_as_empty() -> None:
    assert Matcher.create("entity", "", "=").matches({})
    assert Matcher.create("entity", "BTN1", "!=").matches({})
    assert not Matcher.create("entity", "BTN.*", "=~").matches({})


def test_regexes_are_re2_linear_and_anchored() -> None:
    # Python's re needs 2^n steps here (22 s at n = 30, with the GIL held); RE2 is linear in the value.
    evil = Matcher.create("station", "(a+)+$", "=~")
    assert not evil.matches({"station": "a" * 100_000 + "!"})
    assert evil.matches({"station": "a" * 100_000})
    assert Matcher.create("rule", "cell-down|coverage-outage", "=~").matches({"rule": "coverage-outage"})
    assert not Matcher.create("rule", "cell", "=~").matches({"rule": "cell-down"})  # the whole value
    assert Matcher.create("area", "227\\d{2}", "!~").matches({"area": "2272"})
    assert Matcher.create("name", "\\p{L}+", "=~").matches({"name": "Phường"})  # Unicode classes
    assert Matcher.create("name", "a.", "=~").matches({"name": "a\ud800"})  # not UTF-8: matched as "a?"


@pytest.mark.parametrize(("value", "message"), [
    ("(a)\\1", "RE2 syntax has no backreferences"),
    ("(?=a)a", "RE2 syntax has no lookarounds"),
    ("(?<!a)b", "RE2 syntax has no lookarounds"),
    ("a{1001}", "invalid repetition size"),
    ("x)|(y", "unexpected )"),  # it must not escape the anchors: ^(?:x)|(y)$ would match "x..."
    ("a" * 1025, "longer than 1024 characters"),
])
def test_what_re2_cannot_take_is_refused_with_a_reason(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Matcher.create("rule", value, "=~")
    with pytest.raises(InvalidSilence, match=r"^matchers\.0"):
        SilenceRequest.parse({"matchers": [{"name": "rule", "value": value, "op": "=~"}], "duration": "1h"})


@pytest.mark.parametrize(("fields", "message"), [
    ({"duration": "99999999999d"}, "duration: longer than 3650d"),
    ({"duration": "9" * 400 + "s"}, "duration: longer than 3650d"),  # float("9" * 400) is inf
    ({"duration": 10**400}, "duration: longer than 3650d"),  # past what a float holds
    ({"duration": float("nan")}, "duration: not a number"),
    ({"duration": 0}, "duration: must be more than 0s"),
    ({"duration": -1}, "duration: a duration cannot be negative"),
    ({"duration": None, "ends_at": "9999-12-31T23:59:59-23:59"}, "ends_at: after 9999-12-31T23:59:59Z"),
    ({"duration": None, "ends_at": "9999-12-31T23:59:59Z"}, "ends_at: the silence would end more than 3650"),
    ({"duration": None, "ends_at": "0001-01-01T00:00:00+14:00"}, "ends_at: before 1970"),
    ({"starts_at": "1969-12-31T23:59:59Z"}, "starts_at: before 1970"),
    ({"starts_at": "9999-12-31T00:00:00Z"}, "starts_at: more than 3650 days from now"),
    ({"starts_at": "2035-12-31T00:00:00Z", "duration": "3000d"}, "duration: the silence would end more than"),
])
def test_times_and_durations_out_of_range_are_refused_naming_the_field(
    fields: dict[str, object], message: str
) -> None:
    silences = Silences(None, clock=SettableClock(T0))
    with pytest.raises(InvalidSilence) as caught:
        silences.create(SilenceRequest.parse({"matchers": [{"name": "area", "value": "1"}], "duration": "1h",
                                              **fields}), actor="op")
    assert str(caught.value).startswith(message)
    assert silences.list() == []


def test_the_longest_silence_is_ten_years() -> None:
    silences = Silences(None, clock=SettableClock(T0))
    made = silences.create(request(duration="3650d"), actor="op")
    assert made.ends_at - made.starts_at == 3650 * 86400
    assert made.as_json(T0)["ends_at"] == "2036-02-28T00:00:00+00:00"


@pytest.mark.parametrize(("text", "expected"), [
    ("rule = coverage-outage", ("rule", "coverage-outage", "=")),
    ('severity=~"critical|warning"', ("severity", "critical|warning", "=~")),
    ('area != ""', ("area", "", "!=")),
    ('summary = "a \\"quoted\\" word"', ("summary", 'a "quoted" word', "=")),
    ("entity!~BTN.*", ("entity", "BTN.*", "!~")),
])
def test_matcher_text_form(text: str, expected: tuple[str, str, str]) -> None:
    parsed = parse_matcher(text)
    assert (parsed.name, parsed.value, parsed.op) == expected


@pytest.mark.parametrize("text", ["rule", "= x", "rule ~ x"])
def test_bad_matcher_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a matcher"):
        parse_matcher(text)


def test_silences_match_the_rule_and_severity_too() -> None:
    silences = Silences(None, clock=SettableClock(T0))
    silences.create(SilenceRequest.parse({"matchers": [{"name": "rule", "value": "cell-down"},
                                                       {"name": "severity", "value": "warning"}],
                                          "duration": "1h"}), actor="op")
    assert silences.mutes(alert("cell-down", area="22723"))
    assert not silences.mutes(alert("coverage-outage", area="22723"))


# --- validation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "message"), [
    ({"matchers": [{"name": "area", "value": "(", "op": "=~"}], "duration": "1h"},
     "matchers.0: value: '(' is not a valid regular expression"),
    ({"matchers": [{"name": "area", "value": "1", "op": "=="}], "duration": "1h"},
     "matchers.0.op: Input should be"),
    ({"matchers": [{"name": "area", "value": 22723}], "duration": "1h"},
     "matchers.0.value: Input should be a valid string"),
    ({"matchers": [], "duration": "1h"}, "matchers: List should have at least 1 item"),
    ({"matchers": [{"name": "area", "value": "1"}], "duration": "1h", "until": "x"}, "until: unknown key"),
    ({"matchers": [{"name": "area", "value": "1"}], "ends_at": "2026-03-02T10:00:00"},
     "ends_at: Input should have timezone info"),
    ({"matchers": [{"name": "area", "value": "1"}], "duration": "soon"},
     "duration: 'soon' is not a duration"),
])
def test_bad_requests_name_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSilence) as caught:
        SilenceRequest.parse(body)
    assert message in str(caught.value)


def test_a_body_that_is_not_json_is_refused() -> None:
    with pytest.raises(InvalidSilence, match="not valid JSON"):
        SilenceRequest.parse(b"{matchers")


@pytest.mark.parametrize(("body", "message"), [
    ({"ends_at": "2026-03-02T06:00:00+07:00", "duration": None}, "ends_at: .* is in the past"),
    ({"starts_at": "2026-03-02T09:00:00+07:00", "ends_at": "2026-03-02T08:00:00+07:00", "duration": None},
     "ends_at: .* is not after starts_at"),
    ({"ends_at": "2026-03-02T09:00:00+07:00"}, "give ends_at or duration, not both"),
    ({"duration": None}, "ends_at: required"),
    ({"matchers": [{"name": "area", "value": ".*", "op": "=~"}]}, "would mute every alert"),
])
def test_silences_that_make_no_sense_are_refused(body: dict[str, object], message: str) -> None:
    silences = Silences(None, clock=SettableClock(T0))
    with pytest.raises(InvalidSilence, match=message):
        silences.create(request(**body), actor="op")
    assert silences.list() == []


# --- life of a silence ---------------------------------------------------------------------------------

def test_status_follows_the_clock_and_expired_ones_are_purged_after_five_days() -> None:
    clock = SettableClock(T0)
    silences = Silences(None, clock=clock)
    silence = silences.create(request(starts_at="2026-03-02T08:00:00+07:00", duration="2h"), actor="op")
    assert silence.starts_at == T0 + 3600 and silence.ends_at == T0 + 3 * 3600
    assert silence.author == "op"
    assert silence.status(clock.now) == "pending" and not silences.mutes(alert(area="22723"))
    assert silences.next_transition(clock.now) == T0 + 3600
    clock.now = T0 + 3600
    assert silences.list()[0].as_json(clock.now)["status"] == "active"
    assert silences.mutes(alert(area="22723")) and not silences.mutes(alert(area="22724"))
    clock.now = T0 + 3 * 3600
    assert silences.list("expired") == [silence] and silences.counts()["expired"] == 1
    clock.now = T0 + 3 * 3600 + 5 * 86400
    assert silences.purge() == [] and silences.list("expired") == [silence]  # listed for 5 days
    clock.now += 1
    assert silences.purge() == [silence.id] and silences.list() == []


def test_expire_ends_a_silence_now_and_keeps_it_listed() -> None:
    clock = SettableClock(T0)
    silences = Silences(None, clock=clock)
    silence = silences.create(request(author="someone-else"), actor="op")
    assert silence.author == "someone-else"
    clock.now += 60
    expired, changed = silences.expire(silence.id, actor="op")
    assert changed and expired.ends_at == T0 + 60 and expired.status(clock.now) == "expired"
    assert not silences.mutes(alert(area="22723"))
    again, changed = silences.expire(silence.id, actor="op")
    assert not changed and again == expired
    with pytest.raises(SilenceNotFound):
        silences.expire("nope", actor="op")


def test_a_pending_silence_expired_never_starts() -> None:
    clock = SettableClock(T0)
    silences = Silences(None, clock=clock)
    silence = silences.create(request(starts_at="2026-03-02T09:00:00+07:00"), actor="op")
    expired, _ = silences.expire(silence.id, actor="op")
    assert expired.starts_at == expired.ends_at == T0
    clock.now = T0 + 2 * 3600 + 1
    assert not silences.mutes(alert(area="22723"))


def test_silences_and_their_audit_survive_a_restart(store_url: str) -> None:
    clock = SettableClock(T0)
    store = SilenceStore(store_url)
    silences = Silences(store, clock=clock)
    made = silences.create(SilenceRequest.parse({
        "matchers": [{"name": "rule", "value": "cell-down|coverage-outage", "op": "=~"},
                     {"name": "area", "value": "22723"}],
        "duration": "1h", "comment": "bảo trì trạm"}), actor="truc-ban-1")
    silences.expire(made.id, actor="truc-ban-2")
    store.close()

    store = SilenceStore(store_url)
    loaded = Silences(store, clock=clock).get(made.id)
    assert loaded.matchers == made.matchers and loaded.comment == "bảo trì trạm"
    assert loaded.matches({"rule": "coverage-outage", "area": "22723"})
    assert loaded.status(clock.now) == "expired"
    actions = [(entry.actor, entry.action) for entry in store.audit_log(target=made.id)]
    assert actions == [("truc-ban-2", "silence.expire"), ("truc-ban-1", "silence.create")]
    assert store.audit_log(target=made.id)[1].detail["matchers"] == ['rule=~"cell-down|coverage-outage"',
                                                                     'area="22723"']
    store.close()
    alerts = AlertStore(store_url)  # one audit log in the store: the operators' API reads it here
    assert [entry.action for entry in alerts.audit_log(target=made.id)] == ["silence.expire", "silence.create"]
    alerts.close()


# --- Alertmanager's update (POST /api/v2/silences with an id) ---------------------------------------------

def test_an_active_silence_is_updated_in_place_when_only_its_end_and_comment_change(store_url: str) -> None:
    clock = SettableClock(T0)
    store = SilenceStore(store_url)
    silences = Silences(store, clock=clock)
    made = silences.create(request(duration="1h"), actor="op")
    clock.now += 60
    longer = SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}], "comment": "longer",
                                   "starts_at": rfc3339(made.starts_at), "ends_at": rfc3339(made.ends_at + 3600)})
    updated = silences.create(longer, actor="op2", silence_id=made.id)
    assert updated.id == made.id and updated.ends_at == made.ends_at + 3600 and updated.comment == "longer"
    assert updated.created_at == made.created_at and updated.updated_at == clock.now
    assert [s.id for s in silences.list()] == [made.id]
    assert [entry.action for entry in store.audit_log(target=made.id)] == ["silence.update", "silence.create"]
    assert Silences(store, clock=clock).get(made.id).comment == "longer"  # stored


def test_changed_matchers_expire_the_old_silence_and_make_a_new_one(store_url: str) -> None:
    clock = SettableClock(T0)
    store = SilenceStore(store_url)
    silences = Silences(store, clock=clock)
    made = silences.create(request(duration="1h"), actor="op")
    clock.now += 60
    other = request(matchers=[{"name": "area", "value": "22724"}], duration="1h")
    replacement = silences.create(other, actor="op", silence_id=made.id)
    assert replacement.id != made.id
    assert silences.get(made.id).status(clock.now) == "expired"
    assert silences.get(replacement.id).status(clock.now) == "active"
    assert store.audit_log(target=made.id)[0].detail["replaced_by"] == replacement.id
    reloaded = Silences(store, clock=clock)  # both rows were written
    assert reloaded.get(made.id).status(clock.now) == "expired"
    assert reloaded.get(replacement.id).matchers == replacement.matchers


def test_a_moved_start_of_an_active_silence_makes_a_new_one_and_an_unknown_id_is_not_found() -> None:
    clock = SettableClock(T0)
    silences = Silences(None, clock=clock)
    made = silences.create(request(duration="1h"), actor="op")
    clock.now += 60
    moved = silences.create(request(duration="1h"), actor="op", silence_id=made.id)  # starts now: moved
    assert moved.id != made.id and silences.get(made.id).status(clock.now) == "expired"
    with pytest.raises(SilenceNotFound):
        silences.create(request(duration="1h"), actor="op", silence_id="no-such-silence")
    expired_again = silences.create(request(duration="1h"), actor="op", silence_id=made.id)
    assert expired_again.id not in (made.id, moved.id)  # an expired one is never changed back
