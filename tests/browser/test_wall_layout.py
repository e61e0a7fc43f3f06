"""The wall at a real province's scale (Lâm Đồng, 124 communes) in headless Chromium, at 1920×1080 and
3840×2160, in Vietnamese and English: every commune's map cell inside the window, no text that overflows
its box or overlaps another, no scroll bar, lists longer than their panel paging by themselves, and the
map's colours following the alerts (fire -> the severity's colour, resolve -> back).

Screenshots are saved under the test's `tmp_path` (the paths are printed)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from ioc.config import token_sha256
from tests.browser.conftest import wall_daemon
from tests.browser.test_wall import (
    Driver,
    attribute,
    dossier,
    now_iso,
    post_events,
    reading,
    shoot,
    text,
    viewport,
    wait,
)
from tests.e2e.daemon import OPERATOR_TOKEN, DaemonProcess
from tests.servers import Server

pytestmark = pytest.mark.slow

MANY_TOKEN = "vendor-token-many-sources"
# Subsystems of a real province: more than the sources panel holds at once.
MANY_SOURCES = ["viettel-ran", "vnpt-ran", "mobifone-ran", "dvc-hcc-lamdong", "camera-giao-thong",
                "quan-trac-nuoc", "pccc-iot", "evn-luoi-dien", "khi-tuong-thuy-van", "y-te-cap-cuu"]
CRITICAL = ["22945", "22954", "22918", "22924", "22960", "22933", "23235", "23231", "23246", "22969",
            "23272", "23191", "24778", "24781"]
WARNING = ["22945", "22954", "22918", "24805", "24846", "23227", "24611", "24703"]
SIZES = ((1920, 1080), (3840, 2160))
# A folder (e.g. docs/img): also save each 1920×1080 wall there at 1280×720, for the README.
DOCS_IMG = os.environ.get("IOC_WALL_SCREENSHOTS")

# What the page shows, measured in the page itself: the document's scroll size; elements whose content
# is larger than their box; text runs outside their panel or the window, or overlapping another run
# (from Range rects, so a run is its glyphs' box, not its element's); the map's cells outside the window.
PROBE = """
const W = window.innerWidth, H = window.innerHeight;
const describe = (e) => (e.closest('[data-fingerprint],[data-worst-area],[data-source],[data-tile],[data-label-for]')
  ?.outerHTML.slice(0, 90) ?? '') + ' > ' + e.tagName + '.' + (e.getAttribute('class') ?? '');
const shown = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
const overflowing = [];
for (const e of document.querySelectorAll('body *')) {
  if (e.closest('svg, dialog:not([open]), .visually-hidden, [hidden]') || !shown(e)) continue;
  const style = getComputedStyle(e);
  if (style.display === 'inline' || style.display === 'contents') continue;
  if (e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1) {
    overflowing.push(`${describe(e)} ${e.scrollWidth}x${e.scrollHeight} in ${e.clientWidth}x${e.clientHeight}`);
  }
}
const runs = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const parent = node.parentElement;
  if (!node.data.trim() || !parent || parent.closest('title, dialog:not([open]), .visually-hidden, [hidden], option')) continue;
  if (!shown(parent)) continue;
  const range = document.createRange();
  range.selectNodeContents(node);
  const box = parent.closest('.panel, .tile, header, .map-box, .stale-banner, .toast')?.getBoundingClientRect()
    ?? {left: 0, top: 0, right: W, bottom: H};
  for (const r of range.getClientRects()) {
    if (r.width < 0.5 || r.height < 0.5) continue;
    runs.push({text: node.data.trim().slice(0, 40), where: describe(parent), left: r.left, top: r.top, right: r.right,
               bottom: r.bottom, outside: r.left < Math.max(0, box.left) - 1 || r.right > Math.min(W, box.right) + 1
                 || r.top < Math.max(0, box.top) - 1 || r.bottom > Math.min(H, box.bottom) + 1});
  }
}
const overlapping = [];
for (let i = 0; i < runs.length; i++) {
  for (let j = i + 1; j < runs.length; j++) {
    const a = runs[i], b = runs[j];
    const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (x > 1 && y > 1) overlapping.push(`${a.text} (${a.where}) / ${b.text} (${b.where})`);
  }
}
const cells = [...document.querySelectorAll('[data-areas] [data-area]')];
const outsideCells = cells.map((c) => [c.dataset.area, c.getBoundingClientRect()])
  .filter(([, r]) => !r.width || !r.height || r.left < -0.5 || r.top < -0.5 || r.right > W + 0.5 || r.bottom > H + 0.5)
  .map(([code]) => code);
return {width: W, height: H, scrollWidth: document.documentElement.scrollWidth,
        scrollHeight: document.documentElement.scrollHeight, overflowing, overlapping,
        clipped: runs.filter((r) => r.outside).map((r) => `${r.text} (${r.where})`),
        cells: cells.length, outsideCells, runs: runs.length,
        labels: document.querySelectorAll('[data-map-labels] text').length};
"""


@pytest.fixture
def big_wall(
    tmp_path: Path, mosquitto: Server, influxdb: Server, database: str, unique: str
) -> Iterator[DaemonProcess]:
    """The wall's daemon (Lâm Đồng) with a vendor of many subsystems, so every panel has more than it holds."""
    sources = ", ".join(f'"{source}"' for source in MANY_SOURCES)
    vendor = (f'\n[[vendors]]\nname = "many"\ntoken_sha256 = "{token_sha256(MANY_TOKEN)}"\n'
              f'sources = [{sources}]\n')
    process = wall_daemon(tmp_path, mosquitto, influxdb, database, f"ioc-big-wall-{unique}", extra=vendor)
    process.start()
    yield process
    process.stop()


def fill(wall: DaemonProcess, unique: str) -> None:
    """Alerts in many communes (more than the alert list holds), dossiers, and ten talking subsystems."""
    post_events(
        wall,
        [reading(f"{unique}-a{i}", 151.25 + 3 * i, area=area) for i, area in enumerate(CRITICAL)]
        + [reading(f"{unique}-p{i}", 80.5 + i, area=area, metric="env.pm25") for i, area in enumerate(WARNING)]
        + [dossier(f"{unique}-d{i}", area, "online" if i % 2 else "counter") for i, area in enumerate(CRITICAL)],
    )
    events = [{"id": f"{unique}-s{i}", "source": source, "type": "status", "time": now_iso(),
               "entity": f"{source}-1", "state": "up", "area": "22945"} for i, source in enumerate(MANY_SOURCES)]
    answer = httpx.post(f"{wall.api}/api/v1/events", content=orjson.dumps(events), timeout=10,
                        headers={"Authorization": f"Bearer {MANY_TOKEN}", "Content-Type": "application/json"})
    assert answer.status_code == 202 and answer.json()["accepted"] == len(events), answer.text


def ack_and_silence(wall: DaemonProcess) -> None:
    """One alert acknowledged (its card says ACKNOWLEDGED and by whom) and one silenced ("1 silence")."""
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    alerts = httpx.get(f"{wall.api}/api/v1/alerts", timeout=5).json()
    critical = next(a for a in alerts if a["rule"] == "aqi-bad")
    warning = next(a for a in alerts if a["rule"] == "aqi-moderate")
    assert httpx.post(f"{wall.api}/api/v1/alerts/{critical['id']}/ack", headers=operator, timeout=5).is_success
    silence = {"matchers": [{"name": "rule", "value": "aqi-moderate", "op": "="},
                            {"name": "area", "value": warning["labels"]["area"], "op": "="}],
               "duration": "2h", "comment": "bảo trì trạm quan trắc"}
    assert httpx.post(f"{wall.api}/api/v1/silences", json=silence, headers=operator, timeout=5).is_success


def resize(driver: Driver, width: int, height: int) -> None:
    viewport(driver, width, height)
    wait(driver, f"the window at {width}x{height}",
         lambda: driver.execute_script("return [innerWidth, innerHeight]") == [width, height])
    # Fitted again: the labels are placed for this size (a render after the resize, then a layout pass).
    rendered = int(attribute(driver, "body", "data-rendered") or 0)
    wait(driver, "a render at the new size", lambda: int(attribute(driver, "body", "data-rendered") or 0) > rendered)
    time.sleep(0.3)


def colour(driver: Driver, selector: str) -> str:
    return str(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? getComputedStyle(e).fill : null;", selector))


def severity_colour(driver: Driver, severity: str) -> str:
    """The fill the stylesheet gives a cell of this severity, read from a swatch-like probe cell."""
    return str(driver.execute_script("""
        const probe = document.createElementNS('http://www.w3.org/2000/svg', 'path');
        probe.setAttribute('class', 'map-cell'); probe.dataset.severity = arguments[0];
        document.querySelector('[data-areas]').append(probe);
        const fill = getComputedStyle(probe).fill; probe.remove(); return fill;""", severity))


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_every_commune_on_one_screen_nothing_clipped_lists_page_and_colours_follow_alerts(
    browser: Driver, big_wall: DaemonProcess, tmp_path: Path, unique: str, lang: str
) -> None:
    driver, wall = browser, big_wall
    fill(wall, unique)
    wait(driver, "the alerts in the API", lambda: len(httpx.get(f"{wall.api}/api/v1/alerts", timeout=5).json())
         == len(CRITICAL) + len(WARNING))
    ack_and_silence(wall)
    query = "?page=3" + ("&lang=en" if lang == "en" else "")
    viewport(driver, *SIZES[0])
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Europe/London"})
    driver.get(f"{wall.api}/{query}")
    driver.execute_script(  # an operator's wall: every alert has its buttons
        "sessionStorage.setItem('ioc.operator.token', arguments[0]);"
        "sessionStorage.setItem('ioc.operator.name', 'truc-ban-1');", OPERATOR_TOKEN)
    driver.get(f"{wall.api}/{query}")
    wait(driver, "the stream to be live", lambda: attribute(driver, "body", "data-state") == "live")
    wait(driver, "the alerts", lambda: driver.execute_script(
        "return document.querySelectorAll('[data-fingerprint]').length") == len(CRITICAL) + len(WARNING))
    wait(driver, "the map", lambda: attribute(driver, "[data-areas]", "data-count") == "124")
    wait(driver, "the sources", lambda: driver.execute_script(
        "return document.querySelectorAll('[data-source]').length") == len(MANY_SOURCES) + 1)
    expected_name = "Tỉnh Lâm Đồng" if lang == "vi" else "Lam Dong Province"
    assert text(driver, "[data-province-name]") == expected_name
    counts = text(driver, "[data-alert-counts]")
    wait(driver, "the counts", lambda: "1" in text(driver, "[data-alert-counts]").split("·")[-1])
    counts = text(driver, "[data-alert-counts]")
    assert counts.endswith("1 lệnh tắt tiếng" if lang == "vi" else "1 silence"), counts  # a proper plural
    assert ("1 đã xác nhận" if lang == "vi" else "1 acknowledged") in counts, counts
    assert driver.execute_script("return document.querySelectorAll('[data-action=silence]').length") >= 20
    # The rule's summary in the wall's language, numbers with its decimal mark, never both marks on a card.
    summaries = driver.execute_script(
        "return [...document.querySelectorAll(\"[data-rule='aqi-bad'] .summary\")].map((e) => e.textContent)")
    prefix, mark = ("Chất lượng không khí xấu tại ", ",") if lang == "vi" else ("Poor air quality in ", ".")
    assert summaries and all(s.startswith(prefix) for s in summaries), summaries
    assert any(re.search(rf"\d{re.escape(mark)}25$", s) for s in summaries), summaries
    cards = driver.execute_script("return [...document.querySelectorAll('[data-fingerprint]')].map((e) => e.textContent)")
    for card in cards:
        plain = card.replace("PM2.5", "")  # a name, not a number
        assert not (re.search(r"\d,\d", plain) and re.search(r"\d\.\d", plain)), card

    for index, (width, height) in enumerate(SIZES):
        resize(driver, width, height)
        shoot(driver, tmp_path, f"wall-{lang}-{width}x{height}")
        found = driver.execute_script(PROBE)
        problems = {key: found[key] for key in ("overflowing", "clipped", "overlapping", "outsideCells")}
        assert found["scrollWidth"] <= width and found["scrollHeight"] <= height, found  # no scroll bar
        assert found["cells"] == 124, found
        assert problems == {"overflowing": [], "clipped": [], "overlapping": [], "outsideCells": []}, problems
        assert found["labels"] >= 20, found  # names where they fit: many do
        # The alert list is longer than its panel: it pages by itself, and says where it is.
        assert int(attribute(driver, "[data-alerts]", "data-pages") or 0) >= 2
        pager = text(driver, "[data-pager-for=alerts]")
        assert pager == f"{attribute(driver, '[data-alerts]', 'data-page')}/{attribute(driver, '[data-alerts]', 'data-pages')}"
        first = attribute(driver, "[data-alerts]", "data-page")
        wait(driver, "the next page of alerts", lambda first=first: attribute(driver, "[data-alerts]", "data-page") != first,
             timeout=15)
        again = driver.execute_script(PROBE)  # another page fits as well
        assert again["overflowing"] == [] and again["overlapping"] == [] and again["clipped"] == [], again
        # So are the ranked communes (19 of them) and the eleven subsystems.
        for paged in ("worst", "sources"):
            pages = int(attribute(driver, f"[data-paged={paged}]", "data-pages") or 0)
            assert pages >= 2 and text(driver, f"[data-pager-for={paged}]").endswith(f"/{pages}"), paged
        # The ranked list: the critical communes first.
        assert attribute(driver, "[data-worst] [data-worst-area]", "data-severity") == "critical"
        if DOCS_IMG and width == 1920:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 2 / 3, "mobile": False})
            time.sleep(0.5)  # a frame at the new scale (only the picture's resolution changes, not the layout)
            assert driver.save_screenshot(str(Path(DOCS_IMG) / f"wall-{lang}-{width}x{height}.png"))
            viewport(driver, width, height)

        # Colours follow the alerts: a commune fires -> critical's colour; resolves -> back to normal.
        area = ["24820", "25036"][index]
        cell = f"[data-areas] [data-area='{area}']"
        normal = severity_colour(driver, "none")
        assert colour(driver, cell) == normal
        post_events(wall, [reading(f"{unique}-f{index}", 190.0, area=area)])
        wait(driver, "the cell turning critical", lambda cell=cell: attribute(driver, cell, "data-severity") == "critical",
             timeout=5)
        assert colour(driver, cell) == severity_colour(driver, "critical") != normal
        assert driver.execute_script(f"return !!document.querySelector(\"[data-worst-area='{area}']\")")
        post_events(wall, [reading(f"{unique}-r{index}", 40.0, area=area)])
        wait(driver, "the cell back to normal", lambda cell=cell: attribute(driver, cell, "data-severity") == "none",
             timeout=5)
        assert colour(driver, cell) == normal
