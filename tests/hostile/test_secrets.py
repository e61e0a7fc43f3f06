"""Secrets never shown (docs/operations.md): no password, token or password in a URL in a log line, an error
message, an API answer, `/readyz`, `/metrics` or `ioc check`; a URL with credentials is shown as
`scheme://user:***@host:port`.

Measured on 3c5b46e: an `[influx] url` with a password was printed verbatim in `daemon.started`, and a bad
`[mqtt] url` error echoed it, password and all."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from ioc.mosquitto_acl import render_password_file
from tests.e2e.daemon import OPERATOR_TOKEN, VENDOR_TOKEN, DaemonProcess, config_text
from tests.servers import Server, free_port, start_mosquitto

MQTT_SECRET = "mqtt-S3cret-" + uuid.uuid4().hex[:8]
INFLUX_SECRET = "influx-S3cret-" + uuid.uuid4().hex[:8]
SECRETS = (MQTT_SECRET, INFLUX_SECRET, VENDOR_TOKEN, OPERATOR_TOKEN)


# --- a real daemon ------------------------------------------------------------------------------------

@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[Server]:
    """A Mosquitto that wants the daemon's user name and password."""
    passwords = tmp_path / "passwords"
    passwords.write_text(render_password_file({"ioc": MQTT_SECRET}))
    server = start_mosquitto(tmp_path / "broker", password_file=passwords)
    yield server
    server.stop()


def secret_config(tmp_path: Path, *, mqtt_url: str, influx_url: str, mqtt_password: str) -> DaemonProcess:
    """`ioc run`'s config with an MQTT user and password and an InfluxDB URL holding a password."""
    http_port = free_port()
    text = config_text(http_port=http_port, mqtt_url=mqtt_url, influx_url=influx_url,
                       database=f"t_{uuid.uuid4().hex[:12]}", store=tmp_path / "var" / "ioc.db",
                       client_id=f"ioc-secrets-{uuid.uuid4().hex[:8]}")
    text = text.replace("[mqtt]\n", f'[mqtt]\nusername = "ioc"\npassword = "{mqtt_password}"\n', 1)
    config = tmp_path / "ioc.toml"
    config.write_text(text)
    return DaemonProcess(config, http_port, tmp_path / "ioc.log")


def with_password(url: str) -> str:
    return url.replace("http://", f"http://ioc:{INFLUX_SECRET}@", 1)


def ioc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ioc.cli", *args], capture_output=True, text=True,
                          timeout=60)


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret ({secret[:6]}...):\n{text[-3000:]}"


def seen_over_http(daemon: DaemonProcess) -> str:
    """Everything the daemon answers to anyone: readiness, metrics, the API's reads, the OpenAPI."""
    answers = [httpx.get(f"{daemon.api}{path}", timeout=10).text
               for path in ("/readyz", "/metrics", "/api/v1/alerts", "/api/v1/sources", "/api/v1/silences",
                            "/openapi.json", "/")]
    return "\n".join(answers)


def post_event(daemon: DaemonProcess) -> httpx.Response:
    event = {"id": uuid.uuid4().hex, "source": "qtmt-aqi", "type": "telemetry",
             "time": datetime.now(UTC).isoformat(), "metric": "env.aqi", "value": 42.0, "area": "22723"}
    return httpx.post(f"{daemon.api}/api/v1/events", content=orjson.dumps(event), timeout=10,
                      headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})


def test_a_running_daemon_shows_no_secret(tmp_path: Path, secure_broker: Server, influxdb: Server) -> None:
    daemon = secret_config(tmp_path, mqtt_url=secure_broker.url, influx_url=with_password(influxdb.url),
                           mqtt_password=MQTT_SECRET)
    checked = ioc("check", "--config", str(daemon.config))
    assert checked.returncode == 0, checked.stderr
    assert_no_secret("ioc check", checked.stdout + checked.stderr)
    daemon.start()  # ready: connected to the broker with the password, writing to InfluxDB
    try:
        assert post_event(daemon).status_code == 202
        answered = seen_over_http(daemon)
        assert "ioc_events_accepted_total" in answered
        assert_no_secret("the HTTP answers", answered)
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    log = daemon.log()
    assert '"daemon.started"' in log and f"ioc:***@127.0.0.1:{influxdb.port}" in log, log[-3000:]
    assert_no_secret("the daemon's log", log)


def test_failures_show_no_secret(tmp_path: Path, secure_broker: Server) -> None:
    # A wrong MQTT password (the broker refuses it) and an InfluxDB that refuses connections (the error
    # names the URL it was given). A URL urllib3 cannot parse (port 99999) is now refused by the config.
    influx_url = f"http://ioc:{INFLUX_SECRET}@127.0.0.1:1"
    daemon = secret_config(tmp_path, mqtt_url=secure_broker.url, influx_url=influx_url,
                           mqtt_password=MQTT_SECRET[::-1])
    daemon.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = daemon.log()
            if "mqtt.connect_refused" in log and "sink.write_failed" in log:
                break
            with contextlib.suppress(httpx.HTTPError):  # the daemon may not listen yet
                post_event(daemon)
            time.sleep(0.2)
        log = daemon.log()
        assert "mqtt.connect_refused" in log and "sink.write_failed" in log, log[-3000:]
        ready = httpx.get(f"{daemon.api}/readyz", timeout=5)
        assert ready.status_code == 503 and "mqtt" in ready.text
        assert_no_secret("the HTTP answers", seen_over_http(daemon))
    finally:
        daemon.stop()
    log = daemon.log()
    assert "ioc:***@127.0.0.1:1" in log, log[-3000:]
    assert_no_secret("the daemon's log", log)


@pytest.mark.parametrize(("section", "url", "shown"), [
    ("mqtt", f"mqtt://ioc:{MQTT_SECRET}@broker:1883", "'mqtt://ioc:***@broker:1883' is not mqtt://HOST"),
    ("influx", f"ftp://ioc:{INFLUX_SECRET}@influx:8086", "url 'ftp://ioc:***@influx:8086' is not http(s)://"),
    ("influx", f"http://ioc:{INFLUX_SECRET}@influx:99999", "url 'http://ioc:***@influx:99999' is not http(s)://"),
])
def test_a_bad_url_is_refused_without_its_password(tmp_path: Path, section: str, url: str,
                                                  shown: str) -> None:
    config = tmp_path / "ioc.toml"
    config.write_text(f'[{section}]\nurl = "{url}"\n')
    for command in ("check", "run"):
        result = ioc(command, "--config", str(config))
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert shown in result.stderr and result.stderr.startswith(f"{config}:"), (command, result.stderr)
        assert_no_secret(f"ioc {command}", result.stdout + result.stderr)
