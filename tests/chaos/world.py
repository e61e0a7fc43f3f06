"""The system under test, assembled from real parts: a private Mosquitto (persistence on, so sessions
survive its restart), a private InfluxDB 1.x, a fault proxy in front of each (the daemon reaches both only
through them), a webhook receiver, and `ioc run` as a subprocess.

    generator ──MQTT──> Mosquitto <──proxy── ioc run ──proxy──> InfluxDB
    generator ──HTTP──────────────────────> ioc run ──webhooks──> receiver

The generator, the dead-letter collector and the checker talk to the servers directly: only the daemon's
own connections go through the proxies. A `Node` is one `ioc run` as the nemesis drives it (the world is
one node; `cluster.py` has a world of two on PostgreSQL).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ioc.config import token_sha256
from tests.chaos.proxy import ProxyProcess
from tests.e2e.daemon import DaemonProcess
from tests.servers import Server, free_port, start_influxdb, start_mosquitto

DATABASE = "chaos"
MQTT_SOURCE = "chaos-mqtt"
HTTP_SOURCE = "chaos-http"
ALARM_SOURCE = "chaos-alarm"
HTTP_TOKEN = "chaos-http-vendor-token"
ALARM_TOKEN = "chaos-alarm-vendor-token"
OPERATOR_TOKEN = "chaos-operator-token"
ALARM_RULE = "chaos-alarm"
ALARM_THRESHOLD = 100.0

RULES = f"""\
rules:
  - id: {ALARM_RULE}
    kind: threshold
    severity: warning
    match: {{type: telemetry, metric: chaos.alarm}}
    op: ">="
    threshold: {ALARM_THRESHOLD}
    summary: "chaos alarm at {{{{ value }}}}"
"""


def daemon_config(*, http_port: int, mqtt_port: int, influx_port: int, store: Path, rules: Path,
                  webhook_url: str, client_id: str = "ioc-chaos", extra: str = "") -> str:
    """Short timeouts so every fault is noticed within its few seconds: MQTT keepalive 5 s, InfluxDB
    request timeout 2 s, retries from 100 ms to 1 s. A small sink queue (2000 points, a second or two
    of the generator's traffic) so a fault that stops the sink (a failing spool disk) reaches the queue's
    bound and the daemon's back-pressure within the fault's few seconds."""
    return f"""
[http]
listen = "127.0.0.1:{http_port}"
durable_wait = "5s"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "{client_id}"
keepalive = 5
reconnect_min = "100ms"
reconnect_max = "1s"

[influx]
url = "http://127.0.0.1:{influx_port}"
database = "{DATABASE}"
flush_interval = "200ms"
batch_size = 1000
queue_max_points = 2000
timeout = "2s"
retry_min = "100ms"
retry_max = "1s"

[store]
path = "{store}"

[rules]
paths = ["{rules}"]

[log]
format = "json"

[[vendors]]
name = "chaos-http"
token_sha256 = "{token_sha256(HTTP_TOKEN)}"
sources = ["{HTTP_SOURCE}"]
rate = 1000000

[[vendors]]
name = "chaos-alarm"
token_sha256 = "{token_sha256(ALARM_TOKEN)}"
sources = ["{ALARM_SOURCE}"]
rate = 1000000

[[operators]]
name = "chaos-operator"
token_sha256 = "{token_sha256(OPERATOR_TOKEN)}"

[[alerts.webhooks]]
url = "{webhook_url}"
timeout = "2s"
max_attempts = 20
backoff_min = "100ms"
backoff_max = "1s"
{extra}"""


class WebhookReceiver:
    """Records every alert change the daemon POSTs: (monotonic time, body). Always answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="chaos-webhook", daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def changes(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Node:
    """One `ioc run` as the nemesis drives it. Everything done to the process goes through `start_daemon` /
    `kill_daemon` / `terminate_daemon`, which tell the watchdog (`Monitor` in the checker) that the process
    is meant to be down, so any other exit is a crash. `env` is added to every start (a cluster node's
    store URL and name)."""

    def __init__(self, name: str, daemon: DaemonProcess, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.daemon = daemon
        self.env = dict(env or {})
        self.lock = threading.RLock()
        self.expect_down = False  # the nemesis is stopping or starting the daemon: an exit is no crash
        self.failpoints = ""  # IOC_FAILPOINTS of the running daemon
        self.doing = "start"  # what the run is doing (the fault being injected), for the record of starts
        self.starts: list[tuple[float, str]] = []  # (monotonic, doing) of each daemon start

    def start_daemon(self, failpoints: str = "", *, wait: bool = True) -> None:
        """Start `ioc run` (with IOC_FAILPOINTS=`failpoints` for this run only); wait for /healthz."""
        with self.lock:
            self.expect_down = True
            self.failpoints = failpoints
            self.starts.append((time.monotonic(), self.doing))
            env = {**self.env, **({"IOC_FAILPOINTS": failpoints} if failpoints else {})}
            self.daemon.start(wait_ready=False, env=env or None)
        if wait:
            self.wait_daemon()

    def wait_daemon(self, timeout: float = 60.0) -> None:
        try:
            self.daemon.wait_healthy(timeout)
        finally:
            with self.lock:
                self.expect_down = False

    def kill_daemon(self) -> int | None:
        """SIGKILL: no flush, no goodbye. The exit status (None when it was not running)."""
        with self.lock:
            self.expect_down = True
            process = self.daemon.process
            if process is None or process.poll() is not None:
                return None if process is None else process.returncode
            process.kill()
            return process.wait(10)

    def terminate_daemon(self, timeout: float = 60.0) -> int:
        """SIGTERM: the graceful stop (flush, last acknowledgements, exit 0)."""
        with self.lock:
            self.expect_down = True
        return self.daemon.terminate(timeout)

    def daemon_running(self) -> bool:
        process = self.daemon.process
        return process is not None and process.poll() is None

    def stop_for_good(self) -> None:
        with self.lock:
            self.expect_down = True
        self.daemon.stop()


class World(Node):
    """One daemon and its servers (the module's picture)."""

    def __init__(self, workdir: Path, mosquitto: Server, influxdb: Server, influx_proxy: ProxyProcess,
                 broker_proxy: ProxyProcess, webhook: WebhookReceiver, daemon: DaemonProcess) -> None:
        super().__init__("ioc", daemon)
        self.workdir = workdir
        self.mosquitto = mosquitto
        self.influxdb = influxdb
        self.influx_proxy = influx_proxy
        self.broker_proxy = broker_proxy
        self.webhook = webhook

    @property
    def nodes(self) -> list[Node]:
        return [self]

    @property
    def apis(self) -> list[str]:
        return [self.daemon.api]

    @classmethod
    def start(cls, workdir: Path) -> World:
        workdir.mkdir(parents=True, exist_ok=True)
        mosquitto = start_mosquitto(workdir / "mosquitto")
        influxdb = start_influxdb(workdir / "influxdb")
        influx_proxy = ProxyProcess("influx", influxdb.port, workdir)
        broker_proxy = ProxyProcess("broker", mosquitto.port, workdir)
        webhook = WebhookReceiver()
        rules = workdir / "rules.yaml"
        rules.write_text(RULES, encoding="utf-8")
        http_port = free_port()
        config = workdir / "ioc.toml"
        config.write_text(daemon_config(http_port=http_port, mqtt_port=broker_proxy.listen_port,
                                        influx_port=influx_proxy.listen_port, store=workdir / "var" / "ioc.db",
                                        rules=rules, webhook_url=webhook.url), encoding="utf-8")
        daemon = DaemonProcess(config, http_port, workdir / "ioc.log")
        world = cls(workdir, mosquitto, influxdb, influx_proxy, broker_proxy, webhook, daemon)
        world.start_daemon()
        return world

    def set_doing(self, doing: str) -> None:
        self.doing = doing

    # --- healing -------------------------------------------------------------------------------------

    def heal(self) -> None:
        """Every fault undone: proxies pass, servers up, the daemon up without failpoints."""
        self.influx_proxy.set("pass")
        self.broker_proxy.set("pass")
        self.influxdb.start()
        self.mosquitto.start()
        if self.failpoints or not self.daemon_running():
            self.kill_daemon()
            self.start_daemon()

    def close(self) -> None:
        self.stop_for_good()
        for proxy in (self.influx_proxy, self.broker_proxy):
            proxy.close()
        self.webhook.close()
        self.mosquitto.stop()
        self.influxdb.stop()
