"""Fixtures of the browser tests: a headless Chromium (Debian's `chromium` + `chromium-driver`) and a
real daemon (`ioc run` as a subprocess, `tests/e2e/daemon.py`) with a rule file of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import DaemonProcess, make_daemon
from tests.servers import Server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

RULES = """\
rules:
  - id: aqi-bad
    kind: threshold
    severity: critical
    match: {type: telemetry, metric: env.aqi}
    group_by: [area]
    op: ">="
    threshold: 151
    clear: 120
    summary:
      vi: "Chất lượng không khí xấu tại {{ area_name }}: VN_AQI {{ value }}"
      en: "Poor air quality in {{ area_name }}: VN_AQI {{ value }}"
  - id: aqi-moderate
    kind: threshold
    severity: warning
    match: {type: telemetry, metric: env.pm25}
    group_by: [area]
    op: ">="
    threshold: 50
    summary: "Bụi mịn PM2.5 cao tại {{ area_name }}: {{ value }} µg/m³"
"""


def wall_daemon(tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, client_id: str,
                extra: str = "") -> DaemonProcess:
    """The wall's daemon (not started) with RULES; `extra` adds to its config."""
    return make_daemon(tmp_path, mqtt_url=mosquitto.url, influx_url=influxdb.url, database=database,
                       client_id=client_id, rules=RULES,
                       # A quick heartbeat, so a stream that hangs without closing shows stale within seconds;
                       # the wall of one real province: Lâm Đồng, 124 communes.
                       extra='\n[alerts]\nstream_heartbeat = "1s"\n[areas]\nprovinces = ["68"]\n' + extra)


@pytest.fixture
def wall(
    tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
) -> Iterator[DaemonProcess]:
    process = wall_daemon(tmp_path, mosquitto, influxdb, database, f"ioc-wall-{unique}")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian packages chromium and chromium-driver; CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1920,1080")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages, for failures
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
