"""Real servers for the tests: Mosquitto, InfluxDB 1.x and VictoriaMetrics on free 127.0.0.1 ports.

Each `start_*` returns a handle with `stop()`; fixtures in conftest.py own their lifetime. The binaries
come from Debian packages that `.ci/run` installs; a test that needs a missing one is skipped with the
package named, never faked.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, taken below the kernel's ephemeral range: a port the kernel
    handed out (bind to 0) could be given again, between this call and the server's bind, as the local
    port of some client's outgoing connection (seen in CI: "Address already in use"). Never the same port
    twice in one test session."""
    rng = random.Random()
    low = 10_000 if _EPHEMERAL_LOW > 11_000 else 1_024
    for _ in range(1000):
        port = rng.randrange(low, _EPHEMERAL_LOW)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 30.0, ok: tuple[int, ...] = (200, 204)) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as error:
            if error.code in ok:
                return
            last = error
        except OSError as error:
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        import pytest

        pytest.skip(f"{name} is not installed (Debian package {package}; .ci/run installs it)")
    return path


@dataclass
class Server:
    """A server process the tests started; `stop()` ends it, `pause()`/`resume()` freeze it."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    argv: list[str]
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.name == "mosquitto" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def start(self) -> None:
        """Start again after `stop()`, `kill()` or a crash: same port, same files (a no-op while running)."""
        if self.process.poll() is None:
            return
        self.process = _spawn(self.argv, self.log_path)
        wait_for_port(self.port)
        if self.name != "mosquitto":
            wait_for_http(f"{self.url}{self.extra.get('ready_path', '/ping')}")

    def restart(self) -> None:
        """Stop and start again on the same port with the same files (for outage tests)."""
        self.stop()
        self.process = _spawn(self.argv, self.log_path)
        wait_for_port(self.port)
        if self.name != "mosquitto":
            wait_for_http(f"{self.url}{self.extra.get('ready_path', '/ping')}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_mosquitto(workdir: Path, *, password_file: Path | None = None, acl_file: Path | None = None,
                    port: int | None = None, extra_conf: str = "", queue_qos0: bool = False,
                    persistence: bool = True) -> Server:
    """Mosquitto 2 with persistence (sessions survive its restart), unlimited queues for load tests."""
    binary = find_binary("mosquitto", "mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        "max_queued_messages 0",
        "max_inflight_messages 0",
        f"queue_qos0_messages {'true' if queue_qos0 else 'false'}",  # the benchmark preloads QoS 0
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops privileges and cannot read files in the temp dir
    if password_file is not None:
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n" + extra_conf)
    argv = [binary, "-c", str(conf)]
    log_path = workdir / "mosquitto.log"
    server = Server("mosquitto", port, _spawn(argv, log_path), workdir, argv, log_path)
    try:
        wait_for_port(port)
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"mosquitto did not start:\n{server.log()}") from None
    return server


def start_influxdb(workdir: Path) -> Server:
    """InfluxDB 1.x (`influxd`) with its HTTP API and RPC on free ports and data in `workdir`."""
    binary = find_binary("influxd", "influxdb")
    workdir.mkdir(parents=True, exist_ok=True)
    port, rpc_port = free_port(), free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""
    )
    argv = [binary, "-config", str(conf)]
    log_path = workdir / "influxd.log"
    server = Server("influxdb", port, _spawn(argv, log_path), workdir, argv, log_path, {"ready_path": "/ping"})
    try:
        wait_for_http(f"{server.url}/ping")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"influxd did not start:\n{server.log()}") from None
    return server


def start_victoria_metrics(workdir: Path) -> Server:
    """VictoriaMetrics single-node: serves the InfluxDB v2 write API on /api/v2/write."""
    binary = find_binary("victoria-metrics", "victoria-metrics")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        binary,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={workdir}/data",
        "-retentionPeriod=100y",
        "-search.latencyOffset=0s",
        "-search.disableCache",
        "-loggerLevel=WARN",
    ]
    log_path = workdir / "victoria-metrics.log"
    server = Server("victoria-metrics", port, _spawn(argv, log_path), workdir, argv, log_path,
                    {"ready_path": "/health"})
    try:
        wait_for_http(f"{server.url}/health")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"victoria-metrics did not start:\n{server.log()}") from None
    return server


def influx_query(server_url: str, database: str, query: str) -> list[dict[str, object]]:
    """Run an InfluxQL query; return the series of the first statement (empty when none)."""
    import json
    import urllib.parse

    params = urllib.parse.urlencode({"db": database, "q": query, "epoch": "ns"})
    with urllib.request.urlopen(f"{server_url}/query?{params}", timeout=10) as response:
        body = json.load(response)
    result = body["results"][0]
    if "error" in result:
        raise RuntimeError(result["error"])
    return list(result.get("series", []))


def influx_count(server_url: str, database: str, measurement: str, field: str = "value") -> int:
    """Points in `measurement` (0 while the database does not exist yet)."""
    try:
        series = influx_query(server_url, database, f'SELECT count("{field}") FROM "{measurement}"')
    except RuntimeError as error:
        if "database not found" in str(error):
            return 0
        raise
    return int(series[0]["values"][0][1]) if series else 0
