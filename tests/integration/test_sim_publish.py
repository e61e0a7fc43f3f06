"""The simulator's publishers against real servers: every event reaches a real Mosquitto, a broker
restart mid-stream loses nothing at QoS 1, and the HTTP publisher waits out 429 and 503."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import orjson
import paho.mqtt.client as mqtt
import pytest
from ioc.simulators.cli import sim_app
from ioc.simulators.play import Player, events, plan
from ioc.simulators.publish import HttpPublisher, MqttPublisher
from ioc.simulators.scenario import load_scenario, resolve
from typer.testing import CliRunner

from tests.servers import Server

START = "2026-03-02T09:00:00+07:00"


class Subscriber:
    """A QoS 1 subscriber with a persistent session (it keeps its messages over a broker restart)."""

    def __init__(self, port: int) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, *_: client.subscribe("ioc/v1/events/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        event = orjson.loads(message.payload)
        assert message.topic == f"ioc/v1/events/{event['source']}"
        with self._lock:
            self.ids.append(event["id"])

    def wait_for(self, expected: set[str], timeout: float = 60.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if expected <= set(self.ids):
                    break
            time.sleep(0.05)
        with self._lock:
            return set(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(mosquitto: Server) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto.port)
    yield sub
    sub.close()


def expected_ids(*flags: str) -> set[str]:
    result = CliRunner().invoke(sim_app, ["run", "province-day", "--to", "-", "--speed", "0", *flags])
    assert result.exit_code == 0, result.stderr
    return {orjson.loads(line)["id"] for line in result.stdout_bytes.splitlines()}


def test_run_to_mqtt_delivers_every_event(mosquitto: Server, subscriber: Subscriber) -> None:
    flags = ["--start", START, "--duration", "2h"]
    wanted = expected_ids(*flags)
    result = CliRunner().invoke(sim_app, ["run", "province-day", "--to", mosquitto.url, "--speed", "0", *flags])
    assert result.exit_code == 0, result.stderr
    assert f"{len(wanted)} events" in result.stderr  # the quiet one-line summary
    received = subscriber.wait_for(wanted)
    assert received == wanted


def test_a_broker_restart_mid_stream_loses_nothing_at_qos_1(private_mosquitto: Server) -> None:
    scenario = load_scenario(resolve("province-day"))
    how = plan(scenario, start=datetime.fromisoformat(START), duration=3600, speed=900)  # 1 h in 4 s
    wanted = {orjson.loads(payload)["id"] for _, _, payload in events(scenario, how)}
    subscriber = Subscriber(private_mosquitto.port)
    publisher = MqttPublisher("127.0.0.1", private_mosquitto.port, qos=1)
    player = Player(scenario, how, publisher.publish, publisher.idle)
    done = threading.Event()

    def play() -> None:
        player.run()
        publisher.close()
        done.set()

    thread = threading.Thread(target=play)
    thread.start()
    try:
        time.sleep(1.5)
        assert not done.is_set() and 0 < player.stats.offset < 3600
        private_mosquitto.restart()
        thread.join(120)
        assert done.is_set()
        assert publisher.stats.reconnects >= 1
        assert publisher.stats.acknowledged == publisher.stats.sent == len(wanted)
        received = subscriber.wait_for(wanted)
        assert wanted - received == set()
    finally:
        thread.join(5)
        subscriber.close()


class _Daemonish(BaseHTTPRequestHandler):
    """Answers 429 (Retry-After: 1), then 503, then 202, counting what it was sent."""

    answers: ClassVar[list[int]] = []
    bodies: ClassVar[list[bytes]] = []
    seen_at: ClassVar[list[float]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        type(self).seen_at.append(time.monotonic())
        assert self.path == "/api/v1/events" and self.headers["Authorization"] == "Bearer t0ken"
        assert self.headers["Content-Type"] == "application/x-ndjson"
        status = type(self).answers.pop(0) if type(self).answers else 202
        lines = [line for line in body.split(b"\n") if line]
        answer = {"accepted": len(lines), "duplicates": 0, "rejected": []} if status == 202 else \
            {"error": "slow down"}
        data = orjson.dumps(answer)
        self.send_response(status)
        if status in (429, 503):
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_http_publisher_waits_out_429_and_503_and_resends() -> None:
    _Daemonish.answers, _Daemonish.bodies, _Daemonish.seen_at = [429, 503], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Daemonish)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        publisher = HttpPublisher(f"http://127.0.0.1:{server.server_address[1]}", token="t0ken", batch=500)
        payloads = [orjson.dumps({"id": str(n)}) for n in range(700)]
        for payload in payloads:
            publisher.publish("qtmt-aqi", payload)
        stats = publisher.close()
    finally:
        server.shutdown()
        server.server_close()
    assert stats.retries == 2 and stats.sent == stats.acknowledged == 700 and stats.rejected == 0
    assert len(_Daemonish.bodies) == 4  # the first batch three times (429, 503, 202), the rest once
    assert _Daemonish.bodies[0] == _Daemonish.bodies[1] == _Daemonish.bodies[2]
    assert _Daemonish.bodies[0].count(b"\n") == 500 and _Daemonish.bodies[3].count(b"\n") == 200
    assert _Daemonish.seen_at[1] - _Daemonish.seen_at[0] >= 0.9  # Retry-After was honoured


def test_http_publisher_counts_a_refused_batch_and_goes_on() -> None:
    _Daemonish.answers, _Daemonish.bodies, _Daemonish.seen_at = [403], [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Daemonish)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        publisher = HttpPublisher(f"http://127.0.0.1:{server.server_address[1]}", token="t0ken", batch=10)
        for n in range(15):
            publisher.publish("x", orjson.dumps({"id": str(n)}))
        stats = publisher.close()
    finally:
        server.shutdown()
        server.server_close()
    assert stats.rejected == 10 and stats.acknowledged == 5 and stats.retries == 0
    assert stats.errors == ["HTTP 403: slow down"]
