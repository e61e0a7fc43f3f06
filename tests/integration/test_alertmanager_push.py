"""The alert manager with an Alertmanager pusher, against a real Alertmanager (Debian
`prometheus-alertmanager`): changes reach it with their labels, annotations follow an operator's ack,
a resolve ends the alert there, and a change owed when the process stopped is delivered after a restart
(the outbox)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ioc.rules.updates import AlertUpdate

from ioc.alerts.alertmanager_push import AlertmanagerPush
from ioc.alerts.config import AlertmanagerSettings
from ioc.alerts.manager import AlertManager
from ioc.alerts.silence_request import SilenceRequest
from ioc.alerts.store import AlertStore
from tests.alertmanager_server import am_alerts, start_alertmanager
from tests.servers import Server, find_binary
from tests.waiting import wait_until


def update(state: str, value: float = 180.0) -> AlertUpdate:
    return AlertUpdate(rule="aqi-bad", labels={"area": "22723"}, severity="critical",  # type: ignore[arg-type]
                       state=state, summary=f"VN_AQI {value:g}", value=value, at=time.time() - 1)  # type: ignore[arg-type]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Server]:
    server = start_alertmanager(tmp_path / "alertmanager")
    yield server
    server.stop()


def open_manager(db: Path, alertmanager: Server) -> tuple[AlertManager, AlertmanagerPush]:
    """As the daemon wires them: the pusher in the chain, started with the store's firing alerts before
    the outbox resumes."""
    push = AlertmanagerPush(AlertmanagerSettings(url=alertmanager.url, resend_interval="2s", backoff_min="100ms",
                                                 backoff_max="500ms"), external_url="http://ioc.test:8080")
    manager = AlertManager(AlertStore(db), notifiers=[push], resume=False)
    push.start(manager.active())
    manager.resume()
    return manager, push


def listed(alertmanager: Server) -> list[dict[str, Any]]:
    return [a for a in am_alerts(alertmanager) if a["labels"].get("alertname") == "aqi-bad"]


def test_changes_reach_alertmanager_and_a_resolve_ends_the_alert(tmp_path: Path, alertmanager: Server) -> None:
    manager, push = open_manager(tmp_path / "ioc.db", alertmanager)
    try:
        alert = manager.apply(update("firing"))
        assert alert is not None
        [found] = wait_until("the alert in Alertmanager", lambda: listed(alertmanager), 20)
        assert found["labels"] == {"alertname": "aqi-bad", "severity": "critical", "area": "22723"}
        assert found["annotations"]["ioc_alert_id"] == alert.id and found["annotations"]["value"] == "180"
        assert found["status"]["state"] == "active"

        # What an operator of that Alertmanager sees with its own amtool.
        queried = subprocess.run([find_binary("amtool", "prometheus-alertmanager"), "alert", "query", "-o", "json",
                                  f"--alertmanager.url={alertmanager.url}", "alertname=aqi-bad", "area=22723"],
                                 capture_output=True, text=True, timeout=30, check=True)
        assert [a["annotations"]["summary"] for a in json.loads(queried.stdout)] == ["VN_AQI 180"]

        manager.ack(alert.id, "truc-ban-1")
        wait_until("the ack in its annotations", lambda: [
            a for a in listed(alertmanager) if a["annotations"].get("acknowledged_by") == "truc-ban-1"], 20)

        # Silenced on the daemon: still pushed (Alertmanager routes and silences for itself; an alert that
        # stopped coming would end there and page "resolved"), with the silence named.
        silence = manager.create_silence(SilenceRequest.parse({"matchers": [{"name": "area", "value": "22723"}],
                                                               "duration": "30m"}), actor="truc-ban-1")
        wait_until("the silence in its annotations", lambda: [
            a for a in listed(alertmanager) if a["annotations"].get("silenced_by") == silence.id], 20)

        manager.apply(update("resolved", 100))
        wait_until("the alert ended in Alertmanager", lambda: not listed(alertmanager), 20)
        assert push.wait_idle(10)
        # Every delivery settled (a post is marked done before its outbox rows are removed: poll for it).
        wait_until("an empty outbox", lambda: manager.store.outbox() == [], 20)
        assert push.posts["error"] == push.posts["refused"] == 0
    finally:
        push.close()
        manager.close()


def test_a_change_owed_at_a_stop_is_delivered_after_the_restart(tmp_path: Path, alertmanager: Server) -> None:
    db = tmp_path / "ioc.db"
    alertmanager.stop()
    manager, push = open_manager(db, alertmanager)
    manager.apply(update("firing"))
    wait_until("a failed post", lambda: push.posts["error"] >= 1, 20)
    push.close(timeout=0.2)  # Alertmanager still away: the change stays owed
    manager.close()
    store = AlertStore(db)
    assert [row.notifier for row in store.outbox()] == [f"alertmanager:127.0.0.1:{alertmanager.port}"]
    store.close()

    alertmanager.start()
    manager, push = open_manager(db, alertmanager)
    try:
        wait_until("the alert in Alertmanager after the restart", lambda: listed(alertmanager), 20)
        wait_until("the outbox emptied", lambda: manager.store.outbox() == [], 20)
    finally:
        push.close()
        manager.close()
