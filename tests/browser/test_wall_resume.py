"""The wall resumes its stream (CONTRACT §9 "SSE resume") in a real headless Chromium against `ioc run`: the
page reaches the daemon through a fault proxy (tests/chaos/proxy.py); the proxy cuts the stream and
answers 503 for a while, an alert fires meanwhile, and when the proxy lets the page through again the
alert arrives over the resumed stream (`Last-Event-ID`) without the page loading its alert list again.
After a restart of the daemon the old id is gone: the page gets a `reset` and loads everything again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.chaos.proxy import ProxyProcess
from tests.e2e.daemon import VENDOR_TOKEN, DaemonProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

Driver = Any


@pytest.fixture
def proxy(wall: DaemonProcess, tmp_path: Path) -> Iterator[ProxyProcess]:
    process = ProxyProcess("wall", wall.http_port, tmp_path)
    yield process
    process.close()


def body(driver: Driver, name: str) -> int:
    return int(driver.execute_script(f"return document.body.dataset.{name} || '0'"))


def fire(wall: DaemonProcess, event_id: str, area: str, value: float = 200.0) -> None:
    event = {"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": datetime.now(UTC).isoformat(),
             "metric": "env.aqi", "value": value, "area": area}
    answer = httpx.post(f"{wall.api}/api/v1/events", content=orjson.dumps([event]), timeout=10,
                        headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})
    assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text


def shown(driver: Driver, fingerprint: str) -> bool:
    return bool(driver.execute_script(
        "return document.querySelector(`[data-fingerprint='${arguments[0]}']`) !== null", fingerprint))


def test_the_wall_resumes_its_stream_and_reloads_after_a_reset(
        browser: Driver, wall: DaemonProcess, proxy: ProxyProcess, unique: str) -> None:
    driver = browser
    areas = httpx.get(f"{wall.api}/api/v1/areas", timeout=10).json()
    communes = [area["code"] for area in areas if area["level"] == "commune"][:2]
    driver.get(f"http://127.0.0.1:{proxy.listen_port}/")
    wait_until("the stream to be live",
               lambda: driver.execute_script("return document.body.dataset.state") == "live", 45)
    wait_until("the first alert list", lambda: body(driver, "alertsLoads") >= 1, 45)
    loads = body(driver, "alertsLoads")

    # The way to the daemon breaks: the stream is cut and every request answered 503 for a while.
    proxy.set("http", status=503)
    wait_until("the stale marker",
               lambda: driver.execute_script("return document.body.dataset.state") == "stale", 45)
    fire(wall, f"{unique}-1", communes[0])
    (alert,) = wait_until("the alert in the daemon",
                          lambda: [a for a in httpx.get(f"{wall.api}/api/v1/alerts", timeout=5).json()
                                   if a["labels"].get("area") == communes[0]], 45)
    assert not shown(driver, alert["fingerprint"])
    proxy.set("pass")
    wait_until("the stream back",
               lambda: driver.execute_script("return document.body.dataset.state") == "live", 45)
    wait_until("the missed alert, from the resumed stream", lambda: shown(driver, alert["fingerprint"]), 45)
    assert body(driver, "streamResumes") >= 1
    assert body(driver, "streamResets") == 0
    assert body(driver, "alertsLoads") == loads  # nothing fetched again: the stream carried it

    # The daemon restarts: the page's last id is of the run before, so it gets a reset and reloads.
    assert wall.terminate() == 0
    wait_until("the stale marker",
               lambda: driver.execute_script("return document.body.dataset.state") == "stale", 45)
    wall.start()
    wait_until("the reset", lambda: body(driver, "streamResets") == 1, 45)
    wait_until("the alert list loaded again", lambda: body(driver, "alertsLoads") > loads, 45)
    fire(wall, f"{unique}-2", communes[1])
    (second,) = wait_until("the second alert", lambda: [a for a in httpx.get(f"{wall.api}/api/v1/alerts",
                                                                              timeout=5).json()
                                                        if a["labels"].get("area") == communes[1]], 45)
    wait_until("the second alert, live", lambda: shown(driver, second["fingerprint"]), timeout=10)
