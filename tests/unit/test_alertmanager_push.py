"""The Alertmanager pusher's logic: the payload, batching, re-sending, retries, settling the outbox.

The HTTP side is httpx's MockTransport (the logic under test is ours); tests/e2e/test_alertmanager_push.py
runs it against a real Alertmanager."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from ioc.alerts.alert import Acknowledgement, Alert
from ioc.alerts.alertmanager_push import (
    AlertmanagerPush,
    alertmanager_pushers,
    am_alert,
    am_time,
    label_name,
)
from ioc.alerts.config import AlertmanagerSettings, AlertsSettings
from ioc.alerts.outbox import Notification
from tests.waiting import wait_until

NOW = 1_796_000_000.0


def alert(state: str = "firing", *, fingerprint: str = "fp1", alert_id: str = "a1", **changes: Any) -> Alert:
    values: dict[str, Any] = {
        "id": alert_id, "fingerprint": fingerprint, "rule": "aqi-bad", "severity": "critical", "state": state,
        "labels": {"area": "22723"}, "summary": "AQI 180", "value": 180.0, "started_at": NOW - 120,
        "fired_at": None if state == "pending" else NOW - 60,
        "resolved_at": NOW - 10 if state == "resolved" else None}
    values.update(changes)
    return Alert(**values)


class FakeAlertmanager:
    """Records every POST; answers with `statuses` in turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.headers: list[httpx.Headers] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/prefix/api/v2/alerts"
        with self.lock:
            self.posts.append(orjson.loads(request.content))
            self.headers.append(request.headers)
            status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, text="" if status == 200 else '"bad"')

    def count(self) -> int:
        with self.lock:
            return len(self.posts)

    def last(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.posts[-1]


class Settled:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, seq: int, *, now: bool = False) -> None:
        self.seqs.append(seq)


def pusher(fake: FakeAlertmanager, **settings: Any) -> AlertmanagerPush:
    config = AlertmanagerSettings(url="http://am.test:9093/prefix/", **{
        "resend_interval": "60s", "backoff_min": "20ms", "backoff_max": "50ms", **settings})
    client = httpx.Client(transport=httpx.MockTransport(fake.handle))
    return AlertmanagerPush(config, external_url="http://ioc.test:8080", client=client, rand=lambda a, b: b)


def test_the_payload_is_prometheus_shaped() -> None:
    acked = alert(acknowledged=Acknowledgement("truc-ban-1", NOW - 5), runbook="https://wiki/aqi",
                  silenced_by=("s1",), labels={"area": "22723", "cell-id": "C1", "empty": ""})
    body = am_alert(acked, now=NOW, valid_for=240, extra_labels={"source": "ioc-bt"},
                    external_url="http://ioc.test:8080/")
    assert body["labels"] == {"source": "ioc-bt", "alertname": "aqi-bad", "severity": "critical",
                              "area": "22723", "cell_id": "C1"}
    assert body["annotations"] == {
        "summary": "AQI 180", "ioc_alert_id": "a1", "ioc_fingerprint": "fp1", "value": "180",
        "runbook_url": "https://wiki/aqi", "acknowledged_by": "truc-ban-1",
        "acknowledged_at": am_time(NOW - 5), "silenced_by": "s1"}
    assert body["startsAt"] == am_time(NOW - 60)  # when it fired, as Prometheus sends FiredAt
    assert body["endsAt"] == am_time(NOW + 240)  # a firing alert: valid for four resend intervals
    assert body["generatorURL"] == "http://ioc.test:8080/api/v1/alerts/a1"
    assert datetime.fromisoformat(body["startsAt"]).timestamp() == pytest.approx(NOW - 60)
    assert body["startsAt"].endswith("Z")


def test_a_resolved_alert_ends_when_it_resolved_and_times_never_cross() -> None:
    body = am_alert(alert("resolved"), now=NOW, valid_for=240)
    assert body["endsAt"] == am_time(NOW - 10) and "generatorURL" not in body
    # A device's clock ahead of ours: clamped, so Alertmanager never sees endsAt before startsAt.
    ahead = am_alert(alert("resolved", fired_at=NOW + 50, resolved_at=NOW + 80), now=NOW, valid_for=240)
    assert ahead["startsAt"] == ahead["endsAt"] == am_time(NOW)


def test_values_keep_their_digits() -> None:
    assert am_alert(alert(value=1234567.5), now=NOW, valid_for=1)["annotations"]["value"] == "1234567.5"
    assert "value" not in am_alert(alert(value=None), now=NOW, valid_for=1)["annotations"]


def test_label_names_alertmanager_refuses_are_rewritten() -> None:
    assert label_name("area") == "area"
    assert label_name("cell-id") == "cell_id"
    assert label_name("1st") == "_1st"
    assert label_name("trạm") == "tr_m"


def test_what_it_wants() -> None:
    push = pusher(FakeAlertmanager())
    assert push.wants(alert(), "firing")
    assert not push.wants(alert("pending"), "pending")
    assert push.wants(alert("resolved"), "resolved")
    assert not push.wants(alert("resolved", fired_at=None), "resolved")  # pending that never fired
    assert push.wants(alert(acknowledged=Acknowledgement("x", NOW)), "acknowledged")
    assert push.wants(alert(silenced_by=("s1",)), "muted")  # muted alerts are sent too
    assert not push.wants(alert("pending"), "muted")


def test_changes_are_posted_with_the_token_and_settled() -> None:
    fake = FakeAlertmanager()
    push = pusher(fake, token="s3cret")
    settled = Settled()
    push.start()
    push.deliver(Notification(alert(), "firing", "n1", 7), settled)
    wait_until("the post", lambda: settled.seqs == [7])
    [[posted]] = fake.posts
    assert posted["labels"]["alertname"] == "aqi-bad"
    assert fake.headers[0]["authorization"] == "Bearer s3cret"
    push.deliver(Notification(alert("resolved"), "resolved", "n2", 8), settled)
    wait_until("the resolve", lambda: settled.seqs == [7, 8])
    assert fake.last()[0]["endsAt"] == am_time(NOW - 10)
    assert push.outcomes() == {"sent": 2, "failed": 0, "dropped": 0}
    push.close()


def test_nothing_is_posted_before_start_and_start_sends_what_fires() -> None:
    fake = FakeAlertmanager()
    push = pusher(fake)
    push.deliver(Notification(alert(), "firing", "n1", 1), Settled())
    time.sleep(0.1)
    assert fake.count() == 0  # the daemon starts it once the outbox may be delivered
    push.start([alert(fingerprint="fp2", alert_id="a2"), alert("pending", fingerprint="fp3", alert_id="a3")])
    wait_until("the post", fake.count)
    assert sorted(a["annotations"]["ioc_alert_id"] for a in fake.posts[0]) == ["a1", "a2"]
    push.close()


def test_a_burst_is_one_post_and_a_superseded_change_is_settled_with_it() -> None:
    fake = FakeAlertmanager()
    push = pusher(fake)
    settled = Settled()
    for n in range(300):  # more than one batch
        push.deliver(Notification(alert(fingerprint=f"fp{n}", alert_id=f"a{n}"), "firing", f"n{n}", n + 1),
                     settled)
    push.deliver(Notification(alert("resolved", fingerprint="fp0", alert_id="a0"), "resolved", "r", 301),
                 settled)
    assert settled.seqs == [1]  # the firing row: the resolved one carries the newer state
    push.start()
    wait_until("all settled", lambda: len(settled.seqs) == 301)
    assert [len(post) for post in fake.posts] == [256, 44]
    first = next(a for a in fake.posts[0] if a["annotations"]["ioc_alert_id"] == "a0")
    assert first["endsAt"] == am_time(NOW - 10)
    push.close()


def test_failures_are_retried_with_the_latest_state_and_counted() -> None:
    fake = FakeAlertmanager([503, 503, 500])
    push = pusher(fake)
    settled = Settled()
    push.start()
    push.deliver(Notification(alert(), "firing", "n1", 1), settled)
    wait_until("the first failure", lambda: fake.count() >= 1)
    push.deliver(Notification(alert("resolved"), "resolved", "n2", 2), settled)
    wait_until("delivered", lambda: 2 in settled.seqs)
    assert settled.seqs == [1, 2]  # 1 when superseded, 2 when posted
    assert fake.count() == 4 and fake.last()[0]["endsAt"] == am_time(NOW - 10)
    assert push.posts == {"ok": 1, "error": 3, "refused": 0}
    metrics = {m.name: m for m in push.metrics()}
    assert metrics["ioc_alertmanager_posts"].samples[0].labels == {
        "alertmanager": "alertmanager:am.test:9093", "outcome": "error"}
    assert metrics["ioc_alertmanager_queue_length"].samples[0].value == 0
    assert metrics["ioc_alertmanager_last_success_timestamp_seconds"].samples[0].value > 0
    push.close()


def test_a_refused_post_is_settled_and_not_retried() -> None:
    fake = FakeAlertmanager([400])
    push = pusher(fake)
    settled = Settled()
    push.start()
    push.deliver(Notification(alert(), "firing", "n1", 1), settled)
    wait_until("settled", lambda: settled.seqs == [1])
    time.sleep(0.2)
    assert fake.count() == 1 and push.posts["refused"] == 1 and push.alerts_dropped == 1
    assert push.outcomes()["failed"] == 1
    push.close()


def test_firing_alerts_are_re_sent_every_resend_interval() -> None:
    fake = FakeAlertmanager()
    push = pusher(fake, resend_interval="150ms")
    push.start([alert()])
    wait_until("three posts", lambda: fake.count() >= 3)
    ends = [datetime.fromisoformat(post[0]["endsAt"]).timestamp() for post in fake.posts[:3]]
    assert ends == sorted(ends) and ends[0] < ends[2]  # endsAt moves ahead with each re-send
    push.close()


def test_a_full_queue_pushes_out_resolved_alerts_then_drops() -> None:
    fake = FakeAlertmanager()
    push = pusher(fake, queue_max=2)
    settled = Settled()
    push.deliver(Notification(alert("resolved"), "resolved", "n1", 1), settled)
    push.deliver(Notification(alert(fingerprint="fp2", alert_id="a2"), "firing", "n2", 2), settled)
    push.deliver(Notification(alert(fingerprint="fp3", alert_id="a3"), "firing", "n3", 3), settled)
    assert settled.seqs == [1] and push.tracked() == 2
    push.deliver(Notification(alert(fingerprint="fp4", alert_id="a4"), "firing", "n4", 4), settled)
    assert settled.seqs == [1, 4] and push.alerts_dropped == 2
    push.close()


def test_not_the_leader_posts_nothing_until_it_leads() -> None:
    fake = FakeAlertmanager()
    leading = threading.Event()
    config = AlertmanagerSettings(url="http://am.test:9093/prefix")
    push = AlertmanagerPush(config, client=httpx.Client(transport=httpx.MockTransport(fake.handle)),
                            leader=leading.is_set)
    push.start([alert()])
    time.sleep(0.2)
    assert fake.count() == 0 and push.pending() == 1
    leading.set()
    wait_until("the post once leading", fake.count, timeout=5)
    push.close()


def test_close_leaves_what_was_not_posted_in_the_outbox() -> None:
    fake = FakeAlertmanager([503] * 1000)
    push = pusher(fake, backoff_min="5s", backoff_max="5s")
    settled = Settled()
    push.start()
    push.deliver(Notification(alert(), "firing", "n1", 1), settled)
    wait_until("a failure", fake.count)
    started = time.monotonic()
    push.close(timeout=0.3)
    assert time.monotonic() - started < 3
    assert settled.seqs == []  # owed: delivered again at the next start
    push.deliver(Notification(alert("resolved"), "resolved", "n2", 2), settled)
    assert settled.seqs == []  # closing: stays in the outbox


def test_pushers_from_the_settings() -> None:
    assert alertmanager_pushers(AlertsSettings()) == []
    settings = AlertsSettings(alertmanagers=[{"url": "http://am1:9093"}, {"url": "http://am2:9093"}],
                              external_url="https://ioc.example.vn")
    pushers = alertmanager_pushers(settings, http_port=8080)
    assert [p.name for p in pushers] == ["alertmanager:am1:9093", "alertmanager:am2:9093"]
    assert pushers[0].external_url == "https://ioc.example.vn"
    assert alertmanager_pushers(AlertsSettings(alertmanagers=[{"url": "http://am1:9093"}]),
                                http_port=8080)[0].external_url.endswith(":8080")
    for push in pushers:
        push.close()


def test_the_token_file_and_bad_settings(tmp_path: Any) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert AlertmanagerSettings(url="http://am:9093", token_file=str(secret)).token.get_secret_value() \
        == "from-file"
    with pytest.raises(ValueError):
        AlertmanagerSettings(url="am:9093")
    with pytest.raises(ValueError):
        AlertmanagerSettings(url="http://am:9093", resend_interval="0s")
    with pytest.raises(ValueError):
        AlertsSettings(external_url="ioc.example.vn")
