"""Shared parts of the live benchmarks (live_bench, latency_bench, restart_bench).

The servers are the tests' own (`tests/servers.py`: Mosquitto and InfluxDB 1.6 on free loopback ports);
`ioc run` is started as an operator would, from a TOML file, as a subprocess; CPU figures come from
/proc (utime + stime of a process), so they count only the process named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # for `tests.servers`; appended, so a snapshot's `ioc` on PYTHONPATH wins
    sys.path.append(str(ROOT))

from tests.servers import free_port, wait_for_http

# One vendor per source, one metric (= one InfluxDB measurement) per source.
SOURCES = {"qtmt-aqi": "env.aqi", "viettel-ran": "net.rssi", "vnpt-ran": "net.rsrp",
           "dvc-binhthuan": "portal.sessions"}
TOKEN = "bench-vendor-token"
STATIONS = 300  # per source: 1,200 series in InfluxDB, as a province's stations and cells would give
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def token_sha256(token: str) -> str:
    """As `ioc.config.token_sha256`; computed here so the harness imports nothing of the daemon."""
    return hashlib.sha256(token.encode()).hexdigest()


def snapshot(commit: str, into: Path) -> dict[str, str]:
    """`ioc run` from a committed tree, not the working tree (which other work may hold half-edited):
    `git archive COMMIT` into `into`, with `ioc/rules`, `ioc/connectors` and `ioc/simulators` linked to
    their top-level folders as the editable install maps them. Returns the environment to run it with."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in ("rules", "connectors", "simulators"):
        if (into / name).is_dir() and not (into / "ioc" / name).exists():
            (into / "ioc" / name).symlink_to(into / name, target_is_directory=True)
    return {"PYTHONPATH": str(into)}


IOC_ENV: dict[str, str] = {}  # set by `use_commit`: how `ioc run` is started

_COMMUNES = """
from datetime import date
from ioc.areas import registry_from_settings
from ioc.config import AreasSettings
registry = registry_from_settings(AreasSettings())
print(" ".join(sorted(a.code for a in registry.areas(date.today()) if a.level == "commune")[:LIMIT]))
"""


def commune_codes(limit: int = 120) -> list[str]:
    """Commune codes valid today in the registry of the daemon measured (its tree, its default areas):
    the shipped registry changed with the 2025 reform (a former commune that was divided is refused as
    `area_divided`), so the bench asks rather than assumes."""
    out = subprocess.run([sys.executable, "-c", _COMMUNES.replace("LIMIT", str(limit))], check=True,
                         capture_output=True, text=True, env={**os.environ, **IOC_ENV},
                         cwd=IOC_ENV.get("PYTHONPATH")).stdout.split()
    if not out:
        raise RuntimeError("the daemon's registry has no commune today")
    return out


def exit_on_sigterm() -> None:
    """SIGTERM ends the bench through its `finally` blocks (the servers and the daemon stopped)."""
    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)


def use_commit(commit: str | None, workdir: Path) -> str:
    """Run `ioc run` from `commit` (None: the installed working tree); returns what is measured."""
    if commit is None:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip()
        return f"working tree {head}+"
    IOC_ENV.update(snapshot(commit, workdir / "ioc-snapshot"))
    return "commit " + subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                                      capture_output=True, text=True, check=True).stdout.strip()


def make_payloads(source: str, count: int, run: str, base_s: int, areas: list[str], offset: int = 0,
                  step_us: int = 1) -> list[bytes]:
    """`count` telemetry events of `source`, ~240 bytes each in the contract's envelope.

    Each event's time is unique within the run (`base_s` + index * `step_us` µs), so no two points share
    a series and a timestamp (InfluxDB would keep one of them). 300 stations a source, each with its own area,
    device and site tags: 1,200 series, not one per event (which would make InfluxDB's series index,
    not the consumer, what is measured). `areas`: commune codes the daemon accepts (`commune_codes`).
    Values stay in calm ranges (VN_AQI 20-90): the
    shipped rule packs evaluate every event, but the stream is no alert storm."""
    metric = SOURCES[source]
    out = []
    for local in range(count):
        index = offset + local
        seconds, micros = divmod(index * step_us, 1_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base_s + seconds)) + f".{micros:06d}+00:00"
        station = index % STATIONS  # a station's area, device and site are fixed: a real series count
        body = {
            "id": f"{run}-{source}-{index:08d}",
            "source": source,
            "type": "telemetry",
            "time": stamp,
            "metric": metric,
            "value": 20.0 + (index * 7919) % 7000 / 100,
            "area": areas[station % len(areas)],
            "tags": {"station": f"ST-{station:03d}", "device": f"dev-{source[:4]}-{station * 7 % 997:04d}",
                     "site": f"site-{station % 53:02d}"},
        }
        out.append(orjson.dumps(body))
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (`node-red` runs its flows in one node process, but
    npm's launcher may sit in between)."""
    total = 0.0
    for child in [pid, *children(pid)]:
        try:
            total += cpu_seconds(child)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
                found += children(int(entry.name))
    return found


def influx_post(url: str, query: str) -> None:
    data = urllib.parse.urlencode({"q": query}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=30) as response:
        response.read()


def influx_points(url: str, database: str, measurements: list[str]) -> int:
    """Points queryable in `measurements` of `database` (0 while it does not exist)."""
    names = ",".join(f'"{m}"' for m in measurements)
    params = urllib.parse.urlencode({"db": database, "q": f'SELECT count("value") FROM {names}'})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as response:
        body = json.load(response)
    result = body["results"][0]
    if "error" in result:
        if "database not found" in result["error"]:
            return 0
        raise RuntimeError(result["error"])
    return sum(int(series["values"][0][1]) for series in result.get("series", []))


def wait_points(url: str, database: str, measurements: list[str], expected: int, timeout: float,
                every: float = 0.05) -> float:
    """Poll the count until `expected` points are queryable; the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        seen = influx_points(url, database, measurements)
        if seen >= expected:
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError(f"{seen} of {expected} points queryable in {database} after {timeout:.0f}s")


@dataclass
class Ioc:
    """`ioc run` as a subprocess, its config written from the arguments."""

    process: subprocess.Popen[bytes]
    http_port: int
    log_path: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def ioc_config(workdir: Path, *, mqtt_port: int | None, influx_url: str, database: str, client_id: str,
               store: Path, rules: list[str] | None = None, http_port: int | None = None,
               batch_size: int | None = None) -> tuple[Path, int]:
    """An `ioc run` config for the bench: the four sources as one vendor with no rate limit, the
    shipped rule packs (plus `rules`), logs at warning; `batch_size`: the sink's, if not its default.
    Returns (path, HTTP port)."""
    http_port = http_port or free_port()
    paths = json.dumps(["@packs", *(rules or [])])
    mqtt = (f'url = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "{client_id}"' if mqtt_port
            else "enabled = false")
    config = workdir / f"ioc-{client_id}.toml"
    config.write_text(f"""
[http]
listen = "127.0.0.1:{http_port}"
[mqtt]
{mqtt}
[influx]
url = "{influx_url}"
database = "{database}"
{f"batch_size = {batch_size}" if batch_size else ""}
[store]
path = "{store}"
[rules]
paths = {paths}
[log]
level = "warning"
format = "json"
[[vendors]]
name = "bench"
token_sha256 = "{token_sha256(TOKEN)}"
sources = {json.dumps(list(SOURCES))}
rate = 100000000
""")
    return config, http_port


def start_ioc(config: Path, http_port: int, log_path: Path, *, wait: float = 120.0) -> Ioc:
    """Start `ioc run --config` and wait for /readyz (broker connected, sinks taking points)."""
    process = subprocess.Popen([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=log_path.open("ab"),
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **IOC_ENV},
                               cwd=IOC_ENV.get("PYTHONPATH"))
    daemon = Ioc(process, http_port, log_path)
    deadline = time.monotonic() + wait
    while True:
        try:
            wait_for_http(f"{daemon.api}/readyz", timeout=1.0)
            return daemon
        except TimeoutError:
            if process.poll() is None and time.monotonic() < deadline:
                continue
        daemon.stop()
        raise RuntimeError(f"ioc run not ready:\n{log_path.read_text(errors='replace')[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
