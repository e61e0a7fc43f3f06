"""Run `ioc run` as a subprocess against the test servers, as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ioc.config import token_sha256
from tests.servers import free_port
from tests.waiting import wait_until

VENDOR_TOKEN = "vendor-token-qtmt"
OTHER_VENDOR_TOKEN = "vendor-token-viettel"
OPERATOR_TOKEN = "operator-token-1"
RULE_FILE = "rules.yaml"  # a daemon's rule file (make_daemon's `rules`), next to its config


def config_text(*, http_port: int, mqtt_url: str, influx_url: str, database: str, store: Path,
                client_id: str, extra: str = "") -> str:
    return f"""
[http]
listen = "127.0.0.1:{http_port}"
durable_wait = "5s"

[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
reconnect_min = "200ms"
reconnect_max = "2s"

[influx]
url = "{influx_url}"
database = "{database}"
flush_interval = "200ms"
retry_min = "100ms"
retry_max = "1s"

[store]
path = "{store}"

[log]
format = "json"

[[vendors]]
name = "qtmt"
token_sha256 = "{token_sha256(VENDOR_TOKEN)}"
sources = ["qtmt-aqi"]
rate = 100000

[[vendors]]
name = "viettel"
token_sha256 = "{token_sha256(OTHER_VENDOR_TOKEN)}"
sources = ["viettel-ran"]

[[operators]]
name = "truc-ban-1"
token_sha256 = "{token_sha256(OPERATOR_TOKEN)}"
{extra}
"""


@dataclass
class DaemonProcess:
    config: Path
    http_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    runs: int = field(default=0)
    env: dict[str, str] = field(default_factory=dict)  # added to every start's (a cluster node's store, name)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        """Start `ioc run`; `env` adds to the environment and to `self.env` (e.g. IOC_FAILPOINTS for this run
        only)."""
        self.runs += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        self.process = subprocess.Popen([sys.executable, "-m", "ioc.cli", "run", "--config", str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until("ioc run ready", lambda: self._answers("/readyz"), timeout, transient=(httpx.HTTPError,),
                   explain=self.log)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait for `/healthz` (the process serves), not `/readyz` (its broker or database may be away)."""
        wait_until("ioc run healthy", lambda: self._answers("/healthz"), timeout, transient=(httpx.HTTPError,),
                   explain=self.log)

    def _answers(self, path: str) -> bool:
        """Whether `path` answers 200; an AssertionError (no use waiting) once the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"ioc run exited with {self.process.returncode}:\n{self.log()}")
        return httpx.get(f"{self.api}{path}", timeout=1).status_code == 200

    @property
    def pid(self) -> int | None:
        """The process id while it runs, else None."""
        if self.process is None or self.process.poll() is not None:
            return None
        return self.process.pid

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        text = httpx.get(f"{self.api}/metrics", timeout=5).text
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(value for (sample, sample_labels), value in self.metrics().items()
                   if sample == name and all((k, v) in sample_labels for k, v in labels.items()))


def make_daemon(tmp_path: Path, *, mqtt_url: str, influx_url: str, database: str, client_id: str,
                rules: str | None = None, extra: str = "") -> DaemonProcess:
    """A daemon (not started) with its config, store and log in `tmp_path`; `rules`, if given, is the text
    of its rule file (`tmp_path / RULE_FILE`, instead of the shipped rule packs); `extra` is added to the
    config (TOML tables: the `[rules]` table follows it)."""
    http_port = free_port()
    config = tmp_path / "ioc.toml"
    if rules is not None:
        rule_file = tmp_path / RULE_FILE
        rule_file.write_text(rules, encoding="utf-8")
        extra += f'\n[rules]\npaths = ["{rule_file}"]\n'
    config.write_text(config_text(http_port=http_port, mqtt_url=mqtt_url, influx_url=influx_url,
                                  database=database, store=tmp_path / "var" / "ioc.db", client_id=client_id,
                                  extra=extra))
    return DaemonProcess(config, http_port, tmp_path / "ioc.log")


def assert_counting_rule(daemon: DaemonProcess) -> None:
    """docs/metrics.md: received = accepted + rejected + duplicate per source; every point handed to a sink
    is written, dead-lettered, dropped, queued or spooled."""
    samples = daemon.metrics()
    sources = {dict(labels)["source"] for (name, labels) in samples if name == "ioc_events_received_total"}
    assert sources, "no events were counted"
    for source in sources:
        def total(name: str, source: str = source) -> float:
            return sum(v for (n, labels), v in samples.items() if n == name and ("source", source) in labels)

        assert total("ioc_events_received_total") == (
            total("ioc_events_accepted_total") + total("ioc_events_rejected_total")
            + total("ioc_events_duplicate_total")
        ), source
    sinks = {dict(labels)["sink"] for (name, labels) in samples if name == "ioc_sink_points_handed_total"}
    for sink in sinks:
        def of(name: str, sink: str = sink) -> float:
            return sum(v for (n, labels), v in samples.items() if n == name and ("sink", sink) in labels)

        assert of("ioc_sink_points_handed_total") == (
            of("ioc_sink_points_total") + of("ioc_sink_queue_points") + of("ioc_sink_spool_points")
        ), sink
