"""What a node tells when it brings its alerts to the store's (`ioc.alerts.replica.differences`, pure): a
follower every difference of state or acknowledgement, never an older row over its own newer change; the
leader only acknowledgements stored after its own change."""

from __future__ import annotations

from dataclasses import replace

from ioc.alerts.alert import Acknowledgement, Alert
from ioc.alerts.replica import differences

BASE = Alert(id="a1", fingerprint="f1", rule="aqi-bad", severity="critical", state="firing",
             labels={"area": "22945"}, summary="AQI", value=180.0, started_at=100.0, fired_at=100.0,
             updated_at=10.0)
ACKED = replace(BASE, acknowledged=Acknowledgement("truc-ban", 20.0), updated_at=20.0)


def test_a_follower_tells_new_alerts_acks_and_resolutions() -> None:
    pending = replace(BASE, id="a2", fingerprint="f2", state="pending", fired_at=None)
    found = differences([BASE], {"f1": ACKED, "f2": pending}, acks_only=False)
    assert [(alert.id, change) for alert, change in found] == [("a1", "acknowledged"), ("a2", "pending")]
    found = differences([ACKED], {}, acks_only=False)
    assert [(alert.id, alert.state, change) for alert, change in found] == [("a1", "resolved", "resolved")]
    next_episode = replace(BASE, id="a3", updated_at=30.0)
    assert [(a.id, c) for a, c in differences([BASE], {"f1": next_episode}, acks_only=False)] == [("a3", "firing")]
    assert differences([BASE], {"f1": BASE}, acks_only=False) == []


def test_a_follower_keeps_its_own_newer_change_over_an_older_row() -> None:
    assert differences([ACKED], {"f1": BASE}, acks_only=False) == []


def test_the_leader_takes_only_newer_acknowledgements() -> None:
    found = differences([BASE], {"f1": ACKED}, acks_only=True)
    assert [(alert.acknowledged, change) for alert, change in found] == [(ACKED.acknowledged, "acknowledged")]
    assert differences([ACKED], {"f1": BASE}, acks_only=True) == []  # an older row: its own ack stays
    unacked = replace(BASE, updated_at=30.0)
    assert [change for _, change in differences([ACKED], {"f1": unacked}, acks_only=True)] == ["unacknowledged"]
    assert differences([BASE], {}, acks_only=True) == []  # the rules' changes are the leader's own
