"""`ioc demo` as a person runs it: a subprocess that prints where to look and the tokens; an event of
our own over its embedded broker fires an alert we read and acknowledge over its API; Ctrl-C stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest

from ioc.embedded_broker import mosquitto_binary
from tests.servers import free_port


class Demo:
    def __init__(self, broker: str) -> None:
        self.port, self.mqtt_port = free_port(), free_port()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ioc.cli", "demo", "--port", str(self.port), "--mqtt-port",
             str(self.mqtt_port), "--broker", broker],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if found := regex.search(line):
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))
                self._changed.wait(left)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Ctrl-C, as a person stops it (the demo then removes its folder); a kill if that hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(params=["mosquitto", "amqtt"])
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    if request.param == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto); .ci/run installs it")
    running = Demo(request.param)
    yield running
    running.stop()


def aqi_event(event_id: str, minutes_ago: float) -> bytes:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return orjson.dumps({"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": at.isoformat(),
                         "metric": "env.aqi", "value": 190, "area": "68", "tags": {"station": "test"}})


def publish(port: int, username: str | None, password: str | None, payloads: list[bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if username:
        client.username_pw_set(username, password)
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.set() if not reason.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert connected.wait(10), "the embedded broker refused the demo vendor's credentials"
        for payload in payloads:
            client.publish("ioc/v1/events/qtmt-aqi", payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def firing_aqi(api: str) -> list[dict[str, Any]]:
    alerts = httpx.get(f"{api}/api/v1/alerts", params={"state": "firing"}, timeout=5).json()
    # Area 68 (the province itself): no station of the demo scenario reports there, only ours.
    return [a for a in alerts if a["rule"] == "aqi-bad" and a["labels"].get("area") == "68"]


@pytest.mark.slow
def test_the_demo_runs_takes_an_event_fires_and_stops_on_ctrl_c(demo: Demo) -> None:
    vendor = demo.wait_for_line(r"vendor token: (\S+)").group(1)
    operator = demo.wait_for_line(r"operator token: (\S+)").group(1)
    broker = demo.wait_for_line(r"MQTT broker:\s+(mqtt://\S+) \[(\w+)\]")
    assert broker.group(1) == f"mqtt://127.0.0.1:{demo.mqtt_port}"
    demo.wait_for_line(rf"wall display:\s+http://127\.0\.0\.1:{demo.port}/")
    authenticated = broker.group(2) == "mosquitto"
    if authenticated:  # Mosquitto enforces the generated password file: a wrong password is refused
        with pytest.raises(AssertionError, match="refused"):
            publish(demo.mqtt_port, "demo", "not-the-token", [aqi_event("x", 0)])

    # VN_AQI 190 for more than the rule's 10 minutes, on event time: the second event fires it.
    publish(demo.mqtt_port, "demo" if authenticated else None, vendor if authenticated else None,
            [aqi_event("mine-1", 11), aqi_event("mine-2", 0)])
    deadline = time.monotonic() + 20
    while not (found := firing_aqi(demo.api)):
        assert time.monotonic() < deadline, "aqi-bad did not fire for area 68"
        time.sleep(0.2)
    alert = found[0]
    acked = httpx.post(f"{demo.api}/api/v1/alerts/{alert['id']}/ack",
                       headers={"Authorization": f"Bearer {operator}"}, timeout=5)
    assert acked.status_code == 200 and acked.json()["acknowledged"]["by"] == "demo-operator"
    assert httpx.post(f"{demo.api}/api/v1/alerts/{alert['id']}/ack",
                      headers={"Authorization": f"Bearer {vendor}"}, timeout=5).status_code == 403
    wall = httpx.get(f"{demo.api}/", timeout=5)
    assert wall.status_code == 200 and "text/html" in wall.headers["content-type"]

    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    demo.wait_for_line("demo stopped", timeout=5)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_demo_killed_outright_takes_its_broker_and_simulator_along() -> None:
    """SIGKILL gives the demo no chance to stop its children: they used to live on (a Mosquitto holding
    the demo's port, a simulator publishing into it) with init as their parent. The kernel now ends them
    with the demo (PR_SET_PDEATHSIG)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto); .ci/run installs it")
    demo = Demo("mosquitto")
    try:
        demo.wait_for_line(r"operator token: (\S+)", timeout=90)
        deadline = time.monotonic() + 30
        while len(children := _children(demo.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children) >= 2, children  # the broker and the simulator
        demo.process.kill()
        demo.process.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        demo.stop()
