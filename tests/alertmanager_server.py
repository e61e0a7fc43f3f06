"""A real Prometheus Alertmanager for the tests (Debian `prometheus-alertmanager`), as tests/servers.py
starts the other servers: free 127.0.0.1 port, clustering off, its own storage dir, a config whose one
route goes to a webhook receiver (a URL the test serves) or to a receiver with no integration."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from tests.servers import Server, _spawn, find_binary, free_port, wait_for_http

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def alertmanager_binary() -> str:
    """Debian names it `prometheus-alertmanager`; upstream's tarball `alertmanager`."""
    for name in ALERTMANAGER_BINARIES:
        if path := shutil.which(name):
            return path
    return find_binary(ALERTMANAGER_BINARIES[0], "prometheus-alertmanager")  # skips, naming the package


def alertmanager_config(webhook_url: str | None = None) -> str:
    """One route; short group timings so a test sees notifications within seconds."""
    receiver = ("  - name: test\n    webhook_configs:\n"
                f"      - url: '{webhook_url}'\n        send_resolved: true\n") if webhook_url else \
        "  - name: test\n"
    return ("route:\n  receiver: test\n  group_by: ['alertname']\n  group_wait: 0s\n"
            "  group_interval: 1s\n  repeat_interval: 1h\n"
            f"receivers:\n{receiver}")


def start_alertmanager(workdir: Path, *, webhook_url: str | None = None) -> Server:
    """Alertmanager on a free port with clustering off (`--cluster.listen-address=` empty) and its
    data in `workdir`; ready when `/-/ready` answers."""
    binary = alertmanager_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "alertmanager.yml"
    config.write_text(alertmanager_config(webhook_url))
    argv = [binary, f"--config.file={config}", f"--storage.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"]
    log_path = workdir / "alertmanager.log"
    server = Server("alertmanager", port, _spawn(argv, log_path), workdir, argv, log_path,
                    {"ready_path": "/-/ready"})
    try:
        wait_for_http(f"{server.url}/-/ready")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"alertmanager did not start:\n{server.log()}") from None
    return server


def am_alerts(server: Server, **params: str) -> list[dict[str, Any]]:
    """Alertmanager's own `GET /api/v2/alerts` (active by default; ended alerts are not listed)."""
    response = httpx.get(f"{server.url}/api/v2/alerts", params=params, timeout=5)
    response.raise_for_status()
    return list(response.json())
