"""Every page the daemon serves works on a closed network (CONTRACT §9 "Offline"): `/docs` (Swagger UI) and
the wall render in a real headless Chromium whose every request to anything but 127.0.0.1 fails (a dead
proxy for everything but loopback, and no name resolves), and the browser's own network log shows that no
request even tried to leave 127.0.0.1; both pages' Content-Security-Policy is enforced and nothing
on them breaks it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.browser.conftest import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.daemon import DaemonProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

Driver = Any

# Nothing but loopback: names do not resolve, and any other address goes to a proxy that is not there.
CLOSED_NETWORK = (
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    "--proxy-server=http://127.0.0.1:9",  # the discard port: nothing listens, every connection is refused
    "--proxy-bypass-list=127.0.0.1",
)


@pytest.fixture
def closed_browser(tmp_path: Path) -> Iterator[Driver]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian packages chromium and chromium-driver; CI installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, *CLOSED_NETWORK):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1600,1000")
    # The network log (every request the page made) and the console (CSP violations are reported there).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver: Driver) -> list[str]:
    """The URL of every request the browser sent since the last call (from its network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = orjson.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_problems(driver: Driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]


def outside(urls: list[str], origin: str) -> list[str]:
    """The requests over the network to anywhere but `origin` (the browser's own chrome:// pages, such as
    the new-tab page it starts with, and data: URLs are not network requests)."""
    return [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:", "ftp:"))
            and not url.startswith(origin + "/")]


def test_docs_render_every_operation_offline_under_their_csp(wall: DaemonProcess, closed_browser: Driver,
                                                             tmp_path: Path) -> None:
    driver = closed_browser
    page = httpx.get(f"{wall.api}/docs", timeout=5)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert "http" not in page.text.replace(wall.api, "")  # no address of anywhere else in the page
    spec = httpx.get(f"{wall.api}/openapi.json", timeout=5).json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert len(operations) > 10

    driver.get(f"{wall.api}/docs")
    # Swagger UI rendered the document: one block per operation, with its method and path.
    wait_until("Swagger UI's operations",
               lambda: len(driver.find_elements("css selector", ".opblock")) >= len(operations), 20)
    rendered = {tuple(item) for item in driver.execute_script(
        "return Array.from(document.querySelectorAll('.opblock')).map(b => ["
        "b.querySelector('.opblock-summary-method').textContent,"
        "b.querySelector('.opblock-summary-path').getAttribute('data-path')])")}
    assert rendered == operations
    assert driver.find_element("css selector", ".info .title").text.startswith(spec["info"]["title"])
    # An operation opens, with its parameters and responses (the UI works, not only its first paint).
    driver.find_element("css selector", "#operations-alerts-list_alerts_api_v1_alerts_get .opblock-summary").click()
    wait_until("an opened operation",
               lambda: driver.find_elements("css selector", ".opblock.is-open .responses-table"), 20)
    # "Try it out" works under the policy: Swagger UI calls the daemon and shows its answer.
    driver.find_element("css selector", "#operations-health-healthz_healthz_get .opblock-summary").click()
    wait_until("the try-it-out button", lambda: driver.find_elements(
        "css selector", "#operations-health-healthz_healthz_get .try-out__btn"), 20)[0].click()
    wait_until("the execute button", lambda: driver.find_elements(
        "css selector", "#operations-health-healthz_healthz_get .execute"), 20)[0].click()
    wait_until("the live answer", lambda: driver.find_elements(
        "css selector", "#operations-health-healthz_healthz_get .live-responses-table tr.response .response-col_status"),
        20)
    status = driver.find_element(
        "css selector", "#operations-health-healthz_healthz_get .live-responses-table tr.response .response-col_status")
    assert status.text.strip().startswith("200")
    driver.save_screenshot(str(tmp_path / "docs.png"))
    print(f"screenshot: {tmp_path / 'docs.png'}")

    urls = requested_urls(driver)
    assert f"{wall.api}/openapi.json" in urls
    assert any(url.startswith(f"{wall.api}/docs/assets/swagger-ui-bundle.js?v=") for url in urls)
    assert outside(urls, wall.api) == []
    assert console_problems(driver) == []


def test_the_wall_renders_offline_under_its_csp(wall: DaemonProcess, closed_browser: Driver) -> None:
    driver = closed_browser
    driver.get(f"{wall.api}/")
    wait_until("the wall's stream to be live",
               lambda: driver.execute_script("return document.body.dataset.state") == "live", 20)
    wait_until("the wall's areas", lambda: driver.find_elements("css selector", "[data-area]"), 20)
    urls = requested_urls(driver)
    assert f"{wall.api}/api/v1/stream" in urls
    assert outside(urls, wall.api) == []
    assert console_problems(driver) == []


def test_the_closed_network_is_closed(wall: DaemonProcess, closed_browser: Driver) -> None:
    """The test's own premise: from this browser, an outside address cannot be reached (so a page that
    needed one would have failed above), while 127.0.0.1 can."""
    driver = closed_browser
    driver.get(f"{wall.api}/healthz")  # a page with no CSP of its own: only the network can refuse
    answers = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const attempt = (url) => fetch(url, {mode: "no-cors"}).then(() => "reached", () => "failed");
        Promise.all([attempt("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"),
                     attempt("/healthz")]).then(done);
    """)
    assert answers == ["failed", "reached"]
