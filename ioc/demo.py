"""`ioc demo`: the whole system on one machine with nothing but the install (docs/operations.md,
simulators/README.md).

An embedded MQTT broker (`ioc.embedded_broker`: Mosquitto when installed, else amqtt in-process), the
daemon with its SQLite store in a fresh folder, points kept in that store unless `IOC_INFLUX__URL` names
an InfluxDB, the shipped rule packs, the wall display on http://127.0.0.1:PORT, and the `demo` scenario
played in a loop by `ioc sim run` in a child process (the simulator is a vendor like any other: it
publishes with the demo vendor's credentials). The lines printed at start tell a person where to look
and how to publish an event and acknowledge an alert at once. Ctrl-C (or SIGTERM) stops it all cleanly.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import structlog

from ioc.app import run_daemon
from ioc.config import Settings, token_sha256
from ioc.embedded_broker import (
    BrokerKind,
    EmbeddedBroker,
    exit_with_parent,
    port_is_free,
    start_embedded_broker,
)
from ioc.errors import IocError
from ioc.redact import redact_url

log = structlog.get_logger("ioc.demo")

DEMO_SCENARIO = "demo"
VENDOR = "demo"
OPERATOR = "demo-operator"
DAEMON_USER = "ioc"
# What the demo vendor may send for when the scenario cannot be read (it names its own subsystems).
FALLBACK_SOURCES = ["dvc-binhthuan", "viettel-ran", "vnpt-ran", "mobifone-ran", "qtmt-aqi", "ioc-probe"]
SIM_RESTART_DELAY = 2.0
# The simulated history sent at once before real time (`ioc sim run --history`), so the wall is full from
# its first second: two hours of KPIs and alerts, ending 13m30s into the demo's 20-minute cycle, when bad air,
# an outage and a service down are on the wall and the backlog's alert fires within the minute (demo.yaml).
# amqtt takes ~500 messages/s (NOTES.md): it gets only the last part of a cycle, a few seconds' worth.
HISTORY = {"mosquitto": "2h13m30s", "amqtt": "13m30s"}
PROVINCE = "68"  # Lâm Đồng at its real size; the demo scenario plays the former Bình Thuận (60) inside it


def demo_sources() -> list[str]:
    """The sources of the `demo` scenario: the demo vendor may send for every one of them."""
    try:
        from ioc.simulators.scenario import load_scenario, resolve

        sources = sorted(set(load_scenario(resolve(DEMO_SCENARIO)).sources()))
    except Exception:  # noqa: BLE001 - the demo still runs for the usual sources
        log.warning("demo.scenario_sources_unknown", fallback=FALLBACK_SOURCES)
        return list(FALLBACK_SOURCES)
    return sorted(set(sources) | {"ioc-probe"})


def demo_settings(*, port: int, broker: EmbeddedBroker, workdir: Path, vendor_token: str,
                  operator_token: str, daemon_password: str, sources: list[str]) -> Settings:
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{port}"},
        "mqtt": {"url": broker.url, "client_id": "ioc-demo", "protocol": broker.protocol,
                 "username": DAEMON_USER if broker.authenticated else "",
                 "password": daemon_password if broker.authenticated else "",
                 "reconnect_min": "200ms", "reconnect_max": "5s"},
        # An InfluxDB only when the environment names one (IOC_INFLUX__URL overrides this).
        "influx": {"url": ""},
        "areas": {"provinces": [PROVINCE]},
        "store": {"path": str(workdir / "ioc.db")},
        "log": {"level": "warning"},
        "vendors": [{"name": VENDOR, "token_sha256": token_sha256(vendor_token), "sources": sources,
                     "rate": 5000}],
        "operators": [{"name": OPERATOR, "token_sha256": token_sha256(operator_token)}],
    })


def banner(*, port: int, broker: EmbeddedBroker, vendor_token: str, operator_token: str,
           sources: list[str], workdir: Path, influx: str) -> str:
    """What `ioc demo` prints: every command line works as printed, on any date, run more than once (the
    events' ids and times come from the shell at the moment it runs, the silence lasts a duration)."""
    credentials = f" (user {VENDOR}, password = the vendor token)" if broker.authenticated else \
        " (anonymous, 127.0.0.1 only)"
    auth = f" -u {VENDOR} -P {vendor_token}" if broker.authenticated else ""
    vendor_url = f"mqtt://{VENDOR}:{vendor_token}@127.0.0.1:{broker.port}" if broker.authenticated else broker.url
    example = ('{"id":"my-\'$(date +%s%N)\'","source":"qtmt-aqi","type":"telemetry","time":"\'$(date -Iseconds)\'",'
               '"metric":"env.aqi","value":180,"area":"22945"}')
    silence = '{"matchers":[{"name":"area","value":"22945","op":"="}],"duration":"1h","comment":"bảo trì trạm"}'
    api = f"http://127.0.0.1:{port}"
    return "\n".join([
        ("IOC demo — Trung tâm Điều hành thông minh: Tỉnh Lâm Đồng (68), 124 communes; simulated: the former "
        "Bình Thuận"),
        f"  wall display:   {api}/   (English: {api}/?lang=en)",
        f"  API docs:       {api}/docs",
        f"  MQTT broker:    {broker.url} [{broker.kind}]{credentials}",
        f"  as the vendor:  {vendor_url}   (e.g. ioc sim run smoke --to {vendor_url})",
        f"  metrics:        {redact_url(influx) or 'kept in the embedded store ' + str(workdir / 'ioc.db')}",
        f"  vendor token: {vendor_token}",
        f"  operator token: {operator_token}",
        f"  the demo vendor may send for: {', '.join(sources)}",
        "  publish an event of your own:",
        f"    mosquitto_pub -h 127.0.0.1 -p {broker.port}{auth} -t ioc/v1/events/qtmt-aqi -m '{example}'",
        (f"    curl -sS -X POST {api}/api/v1/events -H 'Authorization: Bearer {vendor_token}' "
        f"-H 'Content-Type: application/json' -d '{example}'"),
        f"  alerts:         curl -sS {api}/api/v1/alerts",
        f"    as they change: mosquitto_sub -h 127.0.0.1 -p {broker.port}{auth} -t 'ioc/v1/alerts/#' -v",
        "  silence commune 22945 for an hour:",
        (f"    curl -sS -X POST {api}/api/v1/silences -H 'Authorization: Bearer {operator_token}' "
        f"-H 'Content-Type: application/json' -d '{silence}'"),
        "  Ctrl-C stops the demo.",
    ])


class ScenarioLoop:
    """`ioc sim run demo` in a child process, started again whenever it ends, until `stop()`."""

    def __init__(self, to: str, log_path: Path, history: str | None = None) -> None:
        self.to = to
        self.log_path = log_path
        self.history = history  # sent at once by the first run only: a restart goes on from now
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="demo-scenario", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with self.log_path.open("ab") as output:
            while not self._stopping.is_set():
                self.runs += 1
                history = ["--history", self.history] if self.history and self.runs == 1 else []
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "ioc.simulators.cli", "run", DEMO_SCENARIO, "--to", self.to,
                     "--speed", "1", *history], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops this in order
                    preexec_fn=exit_with_parent)  # noqa: PLW1509  # one prctl, no allocation; the demo killed takes it along
                code = self._process.wait()
                if not self._stopping.is_set():
                    log.warning("demo.scenario_ended", code=code, restart_in=SIM_RESTART_DELAY,
                                log=str(self.log_path))
                    self._stopping.wait(SIM_RESTART_DELAY)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(10)


DEFAULT_MQTT_PORT = 1883


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(*, port: int = 8080, mqtt_port: int | None = None, broker_kind: BrokerKind = "auto",
             keep: bool = False, play: bool = True) -> int:
    """Run the demo until Ctrl-C; the exit status. `keep` leaves the demo's folder (store, logs).

    `mqtt_port` None: 1883, or a free port when something (often a system Mosquitto) holds 1883 — the
    banner says which. A port asked for explicitly is used or refused, never replaced."""
    from ioc.logs import configure_logging

    if not port_is_free(port):
        raise IocError(f"port {port} on 127.0.0.1 is taken: choose another with --port")
    if mqtt_port is None:
        mqtt_port = DEFAULT_MQTT_PORT if port_is_free(DEFAULT_MQTT_PORT) else free_loopback_port()
    workdir = Path(tempfile.mkdtemp(prefix="ioc-demo-"))
    vendor_token, operator_token = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    daemon_password = secrets.token_urlsafe(18)
    sources = demo_sources()
    # The broker's ACL is generated from these settings, so build them once with a placeholder URL.
    draft = demo_settings(port=port, broker=EmbeddedBroker("mosquitto", mqtt_port, "5", True, lambda: None),
                          workdir=workdir, vendor_token=vendor_token, operator_token=operator_token,
                          daemon_password=daemon_password, sources=sources)
    broker = start_embedded_broker(mqtt_port, workdir, settings=draft, kind=broker_kind,
                                   tokens={DAEMON_USER: daemon_password, VENDOR: vendor_token})
    scenario: ScenarioLoop | None = None
    try:
        settings = demo_settings(port=port, broker=broker, workdir=workdir, vendor_token=vendor_token,
                                 operator_token=operator_token, daemon_password=daemon_password,
                                 sources=sources)
        configure_logging(settings.log.level, settings.log.format)
        credentials = f"{VENDOR}:{vendor_token}@" if broker.authenticated else ""
        scenario = ScenarioLoop(f"mqtt://{credentials}127.0.0.1:{broker.port}", workdir / "scenario.log",
                                history=HISTORY[broker.kind]) if play else None

        def ready() -> None:
            print(banner(port=port, broker=broker, vendor_token=vendor_token, operator_token=operator_token,
                         sources=sources, workdir=workdir, influx=settings.influx.url), flush=True)
            if scenario is not None:
                scenario.start()

        asyncio.run(run_daemon(settings, on_listening=ready))
    finally:
        if scenario is not None:
            scenario.stop()
        broker.stop()
        if keep:
            print(f"the demo's files are kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("demo stopped", flush=True)
    return 0
