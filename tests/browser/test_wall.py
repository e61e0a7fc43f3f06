"""The wall display in a real headless Chromium against a real daemon (`ioc run`): an alert fired by
events appears, an operator logs in, acknowledges it and silences it from the page, the language
switches, a cut stream shows the stale marker and recovers; and the layout fits 1920×1080 and 3840×2160.
With closed reads (`[http] public_read = false`) the page asks for a viewer token once per session.

A screenshot of each state is saved under the test's `tmp_path` (the path is printed)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from ioc.config import token_sha256
from tests.browser.conftest import wall_daemon
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess
from tests.servers import Server
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

Driver = Any  # selenium's WebDriver (imported lazily: the browser fixture skips without Chromium)


def now_iso(offset: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset)).isoformat()


def post_events(wall: DaemonProcess, events: list[dict[str, Any]]) -> None:
    answer = httpx.post(
        f"{wall.api}/api/v1/events",
        content=orjson.dumps(events),
        timeout=10,
        headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 202 and answer.json()["accepted"] == len(events), answer.text


def reading(event_id: str, value: float, area: str = "22945", metric: str = "env.aqi") -> dict[str, Any]:
    return {
        "id": event_id,
        "source": "qtmt-aqi",
        "type": "telemetry",
        "time": now_iso(),
        "metric": metric,
        "value": value,
        "area": area,
    }


def dossier(event_id: str, area: str, channel: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "source": "qtmt-aqi",
        "type": "dossier",
        "time": now_iso(),
        "area": area,
        "dossier_id": f"HS-{event_id}",
        "procedure": "1.001612",
        "status": "received",
        "received_at": now_iso(),
        "due_at": now_iso(3 * 86400),
        "channel": channel,
        "level": "commune",
    }


def wait(driver: Driver, what: str, probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """`wait_until` in the browser: selenium's stale elements and missing ones count as not yet; a timeout
    tells the page, its toast and the browser console."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def page() -> str:
        console = "\n".join(entry["message"] for entry in driver.get_log("browser"))
        toast = driver.execute_script("return document.querySelector('[data-toast]')?.textContent")
        return f"on {driver.current_url}; toast: {toast!r}; browser console:\n{console}"

    return wait_until(what, probe, timeout, transient=(NoSuchElementException, StaleElementReferenceException),
                      explain=page)


def css(driver: Driver, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def attribute(driver: Driver, selector: str, name: str) -> str | None:
    """An attribute read in the page itself (no element handle to go stale between renders)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        selector,
        name,
    )
    return None if value is None else str(value)


def text(driver: Driver, selector: str) -> str:
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector
    )
    return "" if value is None else str(value)


def click(driver: Driver, selector: str) -> None:
    wait(driver, f"{selector} to be clickable", lambda: css(driver, selector).is_displayed())
    wait(driver, f"a click on {selector}", lambda: css(driver, selector).click() or True)


def viewport(driver: Driver, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def shoot(driver: Driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


def alerts_api(wall: DaemonProcess, **params: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{wall.api}/api/v1/alerts", params=params, timeout=5).json())


def open_wall(driver: Driver, wall: DaemonProcess, query: str = "") -> None:
    viewport(driver, 1920, 1080)
    # The page must show Vietnamese time whatever the browser's zone is.
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Europe/London"})
    driver.get(f"{wall.api}/{query}")
    wait(driver, "the stream to be live", lambda: attribute(driver, "body", "data-state") == "live")


def test_alert_ack_silence_language_and_a_lost_stream(
    browser: Driver, wall: DaemonProcess, tmp_path: Path, unique: str
) -> None:
    driver = browser
    open_wall(driver, wall)
    assert attribute(driver, "html", "lang") == "vi"
    assert text(driver, "[data-province-name]") == "Tỉnh Lâm Đồng"
    wait(driver, "the live state", lambda: text(driver, "[data-conn-text]") == "Trực tuyến")
    assert text(driver, "[data-action=lang]") == "English"
    assert text(driver, "[data-action=login]") == "Đăng nhập trực ban"
    assert not css(driver, "[data-stale]").is_displayed()
    clock = text(driver, "[data-clock-time]")
    local = datetime.now(ZoneInfo("Asia/Ho_Chi_Minh"))
    assert clock[:2] == f"{local.hour:02d}" or clock[:2] == f"{(local - timedelta(minutes=1)).hour:02d}", (
        clock
    )
    assert wait(driver, "the commune grid", lambda: attribute(driver, "[data-areas]", "data-count")) == "124"
    assert attribute(driver, "[data-area='22945']", "data-severity") == "none"
    shoot(driver, tmp_path, "1-live")

    # Events fire an alert; it appears within 2 s of the daemon taking them, with its area coloured.
    post_events(wall, [reading(f"{unique}-1", 180)])
    selector = "[data-fingerprint][data-rule='aqi-bad']"
    wait(
        driver,
        "the alert on the wall",
        lambda: attribute(driver, selector, "data-state") == "firing",
        timeout=2,
    )
    [alert] = alerts_api(wall)
    selector = f"[data-fingerprint='{alert['fingerprint']}']"
    assert text(driver, f"{selector} .state-text") == "Đang cảnh báo"
    assert text(driver, f"{selector} .severity") == "Nghiêm trọng"
    assert (
        text(driver, f"{selector} .summary") == "Chất lượng không khí xấu tại Phường Phan Thiết: VN_AQI 180"
    )
    assert text(driver, f"{selector} .alert-area") == "Phường Phan Thiết"
    assert attribute(driver, f"{selector} use", "href") == "#i-firing"
    assert not driver.execute_script(f'return document.querySelectorAll("{selector} [data-action]").length')
    wait(
        driver,
        "the commune cell turning critical",
        lambda: attribute(driver, "[data-area='22945']", "data-severity") == "critical",
    )
    assert "Nghiêm trọng" in text(driver, "[data-worst-area='22945'] .worst-status")  # the ranked list
    assert text(driver, "[data-worst-area='22945'] .worst-name") == "Phường Phan Thiết"
    # The AQI tile (polled) and the dossier KPIs (streamed) against their targets.
    wait(driver, "the AQI tile", lambda: text(driver, "[data-tile=aqi] .number") == "180")
    assert attribute(driver, "[data-tile=aqi]", "data-status") == "bad"
    assert "Xấu" in text(driver, "[data-tile=aqi] .tile-note")
    post_events(
        wall, [dossier(f"{unique}-d1", "22945", "online"), dossier(f"{unique}-d2", "22918", "counter")]
    )
    wait(
        driver,
        "the province's online share",
        lambda: text(driver, "[data-tile=online-province] .number") == "50",
    )
    assert attribute(driver, "[data-tile=online-province]", "data-status") == "bad"  # target 90 %
    assert "Mục tiêu ≥ 90" in text(driver, "[data-tile=online-province] .tile-target")
    assert text(driver, "[data-tile=online-commune] .tile-note") == "1/2 đơn vị đạt"
    assert driver.execute_script(
        "return document.querySelectorAll('[data-tile=online-province] polyline').length"
    )
    wait(
        driver,
        "the source row",
        lambda: attribute(driver, "[data-source='qtmt-aqi']", "data-health") == "live",
    )
    shoot(driver, tmp_path, "2-firing")

    # A wrong token is refused on the page; the operator's is kept for the session.
    click(driver, "[data-action=login]")
    css(driver, "[data-action=token]").send_keys("not-a-token")
    click(driver, "[data-action=login-submit]")
    wait(driver, "the refusal", lambda: text(driver, "[data-login-error]") == "Mã truy cập không hợp lệ.")
    css(driver, "[data-action=token]").clear()
    css(driver, "[data-action=token]").send_keys(OPERATOR_TOKEN)
    click(driver, "[data-action=login-submit]")
    wait(driver, "the operator logged in", lambda: attribute(driver, "body", "data-operator") == "yes")
    assert text(driver, "[data-operator-name]") == "Trực ban: truc-ban-1"
    assert driver.execute_script("return sessionStorage.getItem('ioc.operator.token')") == OPERATOR_TOKEN

    # Acknowledge from the page; then take it back.
    click(driver, f"{selector} [data-action=ack]")
    wait(
        driver, "the acknowledged state", lambda: attribute(driver, selector, "data-state") == "acknowledged"
    )
    assert alerts_api(wall, state="acknowledged")[0]["acknowledged"]["by"] == "truc-ban-1"
    assert text(driver, f"{selector} .state-text") == "Đã xác nhận"
    assert "Xác nhận bởi truc-ban-1" in text(driver, f"{selector} .tags")
    shoot(driver, tmp_path, "3-acknowledged")
    click(driver, f"{selector} [data-action=unack]")
    wait(driver, "the firing state again", lambda: attribute(driver, selector, "data-state") == "firing")
    assert alerts_api(wall, state="firing")[0]["acknowledged"] is None

    # Silence it from the page: the silence is listed by the API, the alert shows silenced.
    click(driver, f"{selector} [data-action=silence]")
    from selenium.webdriver.support.ui import Select

    Select(css(driver, "[data-field=duration]")).select_by_value("1h")
    css(driver, "[data-field=comment]").send_keys("Bảo trì trạm quan trắc")
    assert 'area = "22945"' in text(driver, "[data-silence-matchers]")
    shoot(driver, tmp_path, "4-silence-dialog")
    click(driver, "[data-action=silence-submit]")
    silences = wait(
        driver,
        "the silence in the API",
        lambda: [
            s
            for s in httpx.get(f"{wall.api}/api/v1/silences", timeout=5).json()
            if s["comment"] == "Bảo trì trạm quan trắc"
        ],
    )
    [silence] = silences
    assert silence["status"] == "active" and silence["author"] == "truc-ban-1"
    assert {(m["name"], m["op"], m["value"]) for m in silence["matchers"]} == {
        ("rule", "=", "aqi-bad"),
        ("area", "=", "22945"),
    }
    length = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])
    assert length == timedelta(hours=1)
    wait(driver, "the silenced state", lambda: attribute(driver, selector, "data-state") == "silenced")
    assert text(driver, f"{selector} .state-text") == "Đã tắt tiếng"
    assert attribute(driver, f"{selector} use", "href") == "#i-silenced"
    shoot(driver, tmp_path, "5-silenced")

    # English by the toggle (and in the URL, so a reload keeps it).
    click(driver, "[data-action=lang]")
    wait(driver, "English", lambda: attribute(driver, "html", "lang") == "en")
    assert text(driver, f"{selector} .state-text") == "Silenced"
    assert text(driver, f"{selector} .severity") == "Critical"
    assert text(driver, "[data-i18n=title]") == "Intelligent Operations Center"
    # The stream may have been stale for a moment on a loaded machine (a ping late by more than its
    # interval): the English text of the live state is what is checked here, not the timing.
    wait(driver, "the live state in English", lambda: text(driver, "[data-conn-text]") == "Live")
    assert text(driver, "[data-action=lang]") == "Tiếng Việt"
    assert text(driver, "[data-tile=online-province] .tile-target").startswith("Target ≥ 90")
    assert driver.current_url.endswith("?lang=en")
    shoot(driver, tmp_path, "6-english")

    # The daemon hangs (SIGSTOP): the connection stays open but its pings stop; the page goes stale
    # after three missed heartbeats and is live again once the daemon runs on.
    assert wall.process is not None
    wall.process.send_signal(signal.SIGSTOP)
    try:
        wait(driver, "the stale marker of a hung stream",
             lambda: attribute(driver, "body", "data-state") == "stale", timeout=15)
    finally:
        wall.process.send_signal(signal.SIGCONT)
    wait(driver, "the stream back after the hang", lambda: attribute(driver, "body", "data-state") == "live",
         timeout=45)

    # The daemon goes away: the stream drops, the stale marker shows; it comes back and recovers.
    loads = int(attribute(driver, "body", "data-alerts-loads") or 0)
    assert wall.terminate() == 0
    wait(driver, "the stale marker", lambda: attribute(driver, "body", "data-state") == "stale")
    assert css(driver, "[data-stale]").is_displayed()
    assert "reconnecting" in text(driver, "[data-stale]")
    assert text(driver, "[data-conn-text]") == "Disconnected"
    shoot(driver, tmp_path, "7-stale")
    wall.start()
    wait(driver, "the stream back", lambda: attribute(driver, "body", "data-state") == "live", timeout=45)
    assert not css(driver, "[data-stale]").is_displayed()
    wait(
        driver,
        "the alert list reloaded",
        lambda: int(attribute(driver, "body", "data-alerts-loads") or 0) > loads,
    )
    assert attribute(driver, selector, "data-state") == "silenced"
    # Live again: a new alert in another commune arrives over the new stream.
    post_events(wall, [reading(f"{unique}-2", 200, area="22918")])
    wait(
        driver,
        "the second alert",
        lambda: attribute(driver, "[data-area='22918']", "data-severity") == "critical",
        timeout=2,
    )
    shoot(driver, tmp_path, "8-recovered")


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_the_wall_fits_full_hd_and_4k_without_horizontal_overflow(
    browser: Driver, wall: DaemonProcess, tmp_path: Path, unique: str, lang: str
) -> None:
    driver = browser
    areas = [
        "22945",
        "22954",
        "22918",
        "22924",
        "22960",
        "22933",
        "23235",
        "23231",
        "23246",
        "22969",
        "23272",
        "23191",
    ]
    post_events(
        wall,
        [reading(f"{unique}-a{i}", 160 + i, area=area) for i, area in enumerate(areas)]
        + [reading(f"{unique}-p{i}", 80, area=area, metric="env.pm25") for i, area in enumerate(areas[:6])]
        + [dossier(f"{unique}-d{i}", area, "online" if i % 2 else "counter") for i, area in enumerate(areas)],
    )
    query = "?lang=en" if lang == "en" else ""
    open_wall(driver, wall, query)
    wait(
        driver,
        "the alerts",
        lambda: driver.execute_script("return document.querySelectorAll('[data-fingerprint]').length") == 18,
    )
    driver.execute_script(
        "sessionStorage.setItem('ioc.operator.token', arguments[0]);"
        "sessionStorage.setItem('ioc.operator.name', 'truc-ban-1');",
        OPERATOR_TOKEN,
    )
    driver.get(f"{wall.api}/{query}")  # logged in: every alert has its buttons
    wait(
        driver,
        "the buttons",
        lambda: driver.execute_script("return document.querySelectorAll('[data-action=ack]').length") == 18,
    )
    sizes = {}
    for width, height in ((1920, 1080), (3840, 2160)):
        viewport(driver, width, height)

        def resized(expected: int = width) -> bool:
            return bool(driver.execute_script("return window.innerWidth") == expected)

        wait(driver, "the new size", resized)
        time.sleep(0.3)  # a layout pass
        overflow = driver.execute_script("""
            const width = window.innerWidth;
            const wide = [...document.querySelectorAll('body *')]
              .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > width + 0.5)
              .map((e) => e.tagName + '.' + e.className);
            return {scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth, width,
                    height: document.documentElement.scrollHeight, innerHeight: window.innerHeight, wide,
                    font: parseFloat(getComputedStyle(document.documentElement).fontSize)};""")
        assert overflow["scroll"] <= width and overflow["body"] <= width, overflow
        assert overflow["wide"] == [], overflow
        assert overflow["height"] <= overflow["innerHeight"], overflow  # a wall never scrolls
        sizes[width] = overflow["font"]
        shoot(driver, tmp_path, f"wall-{lang}-{width}x{height}")
    assert sizes[1920] >= 14 and sizes[3840] >= 2 * sizes[1920] - 1, sizes  # type scales with the wall


VIEWER_TOKEN = "viewer-token-wall-1"


@pytest.fixture
def closed_wall(
    tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
) -> Iterator[DaemonProcess]:
    """The wall's daemon with `[http] public_read = false` and a viewer."""
    viewer = f'\n[[viewers]]\nname = "wall-1"\ntoken_sha256 = "{token_sha256(VIEWER_TOKEN)}"\n'
    process = wall_daemon(tmp_path, mosquitto, influxdb, database, f"ioc-closed-wall-{unique}", extra=viewer)
    process.config.write_text(process.config.read_text().replace("[http]\n", "[http]\npublic_read = false\n"))
    process.start()
    yield process
    process.stop()


def test_closed_reads_ask_for_a_viewer_token_once_per_session(
    browser: Driver, closed_wall: DaemonProcess, tmp_path: Path, unique: str
) -> None:
    driver, wall = browser, closed_wall
    post_events(wall, [reading(f"{unique}-1", 180)])
    assert httpx.get(f"{wall.api}/api/v1/alerts", timeout=5).status_code == 401
    viewport(driver, 1920, 1080)
    driver.get(f"{wall.api}/")  # the shell loads without a token; its data does not
    wait(driver, "the locked page", lambda: attribute(driver, "body", "data-state") == "locked")
    wait(driver, "the token entry", lambda: driver.execute_script(
        "return document.querySelector('[data-viewer-dialog]').open"))
    assert text(driver, "[data-conn-text]") == "Cần mã truy cập"
    assert text(driver, "[data-viewer-dialog] h2") == "Mã truy cập màn hình"
    assert not driver.execute_script("return document.querySelectorAll('[data-fingerprint]').length")
    shoot(driver, tmp_path, "closed-1-token-entry")

    # A wrong token is refused on the page; the entry stays (Escape does not close it).
    css(driver, "[data-action=viewer-token]").send_keys("not-a-token")
    click(driver, "[data-action=viewer-submit]")
    wait(driver, "the refusal", lambda: text(driver, "[data-viewer-error]") == "Mã truy cập không hợp lệ.")
    from selenium.webdriver.common.keys import Keys

    css(driver, "[data-action=viewer-token]").send_keys(Keys.ESCAPE)
    assert driver.execute_script("return document.querySelector('[data-viewer-dialog]').open")

    # The viewer's token: the page reads and goes live; the token is kept for the session only.
    css(driver, "[data-action=viewer-token]").clear()
    css(driver, "[data-action=viewer-token]").send_keys(VIEWER_TOKEN)
    click(driver, "[data-action=viewer-submit]")
    wait(driver, "the stream to be live", lambda: attribute(driver, "body", "data-state") == "live")
    selector = "[data-fingerprint][data-rule='aqi-bad']"
    wait(driver, "the alert on the wall", lambda: attribute(driver, selector, "data-state") == "firing")
    assert wait(driver, "the commune grid", lambda: attribute(driver, "[data-areas]", "data-count")) == "124"
    assert driver.execute_script("return sessionStorage.getItem('ioc.viewer.token')") == VIEWER_TOKEN
    assert driver.execute_script("return localStorage.length") == 0
    assert not driver.execute_script("return document.querySelector('[data-viewer-dialog]').open")

    # Asked once: a reload reads with the kept token, and the stream (with the token in its header) is live.
    driver.get(f"{wall.api}/")
    wait(driver, "live after a reload", lambda: attribute(driver, "body", "data-state") == "live")
    assert not driver.execute_script("return document.querySelector('[data-viewer-dialog]').open")
    post_events(wall, [reading(f"{unique}-2", 200, area="22918")])
    wait(driver, "a new alert over the stream",  # over the stream: no reload (the 2 s latency is tested above)
         lambda: attribute(driver, "[data-area='22918']", "data-severity") == "critical", timeout=10)
    shoot(driver, tmp_path, "closed-2-live")

    # The operator's login works as before, beside the viewer's token.
    click(driver, "[data-action=login]")
    css(driver, "[data-action=token]").send_keys(OPERATOR_TOKEN)
    click(driver, "[data-action=login-submit]")
    wait(driver, "the operator logged in", lambda: attribute(driver, "body", "data-operator") == "yes")
    [alert] = [a for a in httpx.get(f"{wall.api}/api/v1/alerts", headers={
        "Authorization": f"Bearer {VIEWER_TOKEN}"}, timeout=5).json() if a["labels"]["area"] == "22945"]
    target = f"[data-fingerprint='{alert['fingerprint']}']"
    click(driver, f"{target} [data-action=ack]")
    wait(driver, "the acknowledged state", lambda: attribute(driver, target, "data-state") == "acknowledged")

    # A kept token that stopped being good (e.g. taken out of the config) asks again.
    driver.execute_script("sessionStorage.setItem('ioc.viewer.token', 'revoked');"
                          "sessionStorage.removeItem('ioc.operator.token');")
    driver.get(f"{wall.api}/?lang=en")
    wait(driver, "the token entry again", lambda: driver.execute_script(
        "return document.querySelector('[data-viewer-dialog]').open"))
    assert attribute(driver, "body", "data-state") == "locked"
    assert text(driver, "[data-viewer-dialog] h2") == "Wall access token"
    assert driver.execute_script("return sessionStorage.getItem('ioc.viewer.token')") is None
