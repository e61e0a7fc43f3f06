"""`ioc demo` as a visitor meets it (issue 13): Lâm Đồng at its real size, a wall full from the first seconds
(the simulated history sent at once), a firing alert within a minute, and every printed command line working
as printed, run twice (the example events' ids come from the shell, so the second is no duplicate)."""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ioc.embedded_broker import mosquitto_binary
from tests.e2e.test_demo import Demo

FIRST_ALERT_BOUND = 120.0  # seconds; the goal is 60 (measured well under it: see the printed figure)


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[Demo, float]]:
    if mosquitto_binary() is None or shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto and its clients are not installed (Debian packages mosquitto, mosquitto-clients)")
    started = time.time()
    running = Demo("mosquitto")
    yield running, started
    running.stop()


def firing(api: str) -> list[dict[str, Any]]:
    try:
        return list(httpx.get(f"{api}/api/v1/alerts", params={"state": "firing"}, timeout=5).json())
    except httpx.HTTPError:
        return []  # not listening yet


def fired_at(alert: dict[str, Any]) -> float:
    return datetime.fromisoformat(alert["fired_at"]).timestamp()


@pytest.mark.slow
def test_a_firing_alert_within_a_minute_on_a_wall_full_from_the_start(demo: tuple[Demo, float]) -> None:
    running, started = demo
    deadline = started + FIRST_ALERT_BOUND
    while not (alerts := firing(running.api)):
        assert time.time() < deadline, "no firing alert:\n" + "\n".join(running.lines)
        time.sleep(0.25)
    first = time.time() - started
    print(f"\nioc demo: first firing alert {first:.1f}s after start ({sorted({a['rule'] for a in alerts})})")
    assert first < FIRST_ALERT_BOUND
    # Primed: alerts that fired in the simulated history, before the demo started, are on the wall.
    assert any(fired_at(alert) < started for alert in alerts)
    # And one fires live (the backlog's, 14m10s into the cycle; the demo starts at 13m30s).
    while not (live := [a for a in firing(running.api) if fired_at(a) > started + 1]):
        assert time.time() < started + 240, "no alert fired after the start"
        time.sleep(0.5)
    print(f"ioc demo: first alert fired live {fired_at(live[0]) - started:.1f}s after start ({live[0]['rule']})")
    kpis = httpx.get(f"{running.api}/api/v1/kpis", timeout=5).json()
    assert kpis  # hours of dossiers and cells: the KPI tiles have values


@pytest.mark.slow
def test_the_demo_serves_lam_dong_at_its_real_size(demo: tuple[Demo, float]) -> None:
    running, _ = demo
    running.wait_for_line(r"Tỉnh Lâm Đồng \(68\), 124 communes")
    areas = httpx.get(f"{running.api}/api/v1/provinces/68/areas", timeout=5).json()
    assert sum(area["level"] == "commune" for area in areas) == 124
    assert sum("60" in area["former_provinces"] for area in areas if area["level"] == "commune") == 45  # the focus


def count(sources: dict[str, dict[str, Any]], key: str) -> int:
    """A counter of `qtmt-aqi` in GET /api/v1/sources (0 before its first event)."""
    return int(sources.get("qtmt-aqi", {}).get(key, 0))


def shell(line: str) -> str:
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.mark.slow
def test_every_printed_command_works_as_printed_and_twice(demo: tuple[Demo, float]) -> None:
    running, _ = demo
    running.wait_for_line(r"Ctrl-C stops the demo")
    commands = [line.strip() for line in running.lines if re.match(r"\s+(mosquitto_pub|curl) ", line)]
    publish = next(c for c in commands if c.startswith("mosquitto_pub"))
    post = next(c for c in commands if "/api/v1/events" in c)
    silence = next(c for c in commands if "/api/v1/silences" in c)
    subscribe = running.wait_for_line(r"as they change: (mosquitto_sub .*)").group(1)
    watcher = subprocess.Popen(["bash", "-c", f"exec {subscribe} -C 1 -W 60"], stdout=subprocess.PIPE, text=True)
    try:
        before = {row["source"]: row for row in httpx.get(f"{running.api}/api/v1/sources", timeout=5).json()}
        for _ in range(2):
            shell(publish)
            answer = httpx.Response(200, content=shell(post)).json()
            assert answer["accepted"] == 1 and answer["duplicates"] == 0, answer
            time.sleep(0.01)  # the ids are the shell's nanoseconds
        deadline = time.monotonic() + 30
        while True:  # both MQTT events taken, none a duplicate
            after = {row["source"]: row for row in httpx.get(f"{running.api}/api/v1/sources", timeout=5).json()}
            accepted = count(after, "accepted") - count(before, "accepted")
            if accepted >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert count(after, "duplicates") == count(before, "duplicates")
        created = httpx.Response(200, content=shell(silence)).json()
        assert "id" in created, created
        one = httpx.get(f"{running.api}/api/v1/silences/{created['id']}", timeout=5).json()
        assert one["status"] == "active"  # an hour from now, whatever the date
        out, _ = watcher.communicate(timeout=90)  # an alert on ioc/v1/alerts/... with the printed credentials
        assert out.startswith("ioc/v1/alerts/"), out
    finally:
        watcher.kill()
    readable = [line for line in running.lines if re.match(r"\s+(wall display|API docs|alerts):", line)]
    urls = re.findall(r"(http://127\.0\.0\.1:\d+/\S*)", "\n".join(readable))
    assert len(urls) == 4  # the wall, in English, the API's documentation, the alerts
    for url in urls:
        assert httpx.get(url, timeout=10).status_code == 200, url
    # "as the vendor: ... (e.g. ioc sim run smoke --to mqtt://demo:TOKEN@...)": plays from now until Ctrl-C.
    example = running.wait_for_line(r"\(e\.g\. (ioc sim run smoke --to \S+)\)").group(1)
    player = subprocess.Popen(["bash", "-c", f"exec {example}"], stderr=subprocess.PIPE, text=True,
                              stdout=subprocess.DEVNULL)
    time.sleep(5)
    player.send_signal(signal.SIGINT)
    _, err = player.communicate(timeout=60)
    assert player.returncode == 0 and "sim smoke:" in err, err


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.parametrize(("size", "lang"), [("1920,1080", "vi"), ("3840,2160", "en")])
def test_a_headless_screenshot_with_a_virtual_time_budget_finishes(demo: tuple[Demo, float], tmp_path: Path,
                                                                   size: str, lang: str) -> None:
    """`--virtual-time-budget` advances virtual time only while no network fetch is pending: the wall's
    stream must not hold it (an EventSource did, and the screenshot never came: issue 13). Read with
    fetch() (`StreamSource` in ioc/web/app.js) it does not."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    running, _ = demo
    running.wait_for_line(r"wall display:")
    shot = tmp_path / f"wall-{lang}.png"
    began = time.monotonic()
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}",
                    f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={shot}",
                    f"{running.api}/?lang={lang}"], capture_output=True, timeout=90, check=True)
    print(f"\nheadless screenshot {size} {lang} with a 20 s virtual-time budget: {time.monotonic() - began:.1f}s")
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG's IHDR
    assert f"{width},{height}" == size
