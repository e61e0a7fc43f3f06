"""Hostile-input benchmark (issue 9, docs/operations.md): what the worst payloads, clients and regexes cost
`ioc run`.

    python bench/hostile.py                       # everything, with the issue's sizes
    python bench/hostile.py --only flood --slowloris 200
    python bench/hostile.py --only rss --payload-size 1MiB --payloads objects ndjson

Three measurements, each against a fresh `ioc run` subprocess (no broker, no InfluxDB: the local sink),
printed as one table with the issue's target beside each figure:

1. rss: peak RSS growth for the worst payloads at `max_body` (8 MiB) posted to `/api/v1/events`:
   `[{},{},...]`, one object with many unknown keys, `[[],[],...]`, NDJSON of tiny lines. The daemon is
   warmed up, its RSS taken as the baseline, its peak (VmHWM) reset through /proc/PID/clear_refs, the
   payload posted, then VmHWM read (and VmRSS sampled every 20 ms, in case the reset is not allowed);
   RSS is read again `--settle` seconds after the answer. Targets: growth <= 10x the payload, and back
   within 10 % of the baseline. A daemon past `--rss-cap` is killed (a payload that once took 13.5 GB must
   not take the machine down) and reported as such.
2. flood: `/healthz` during a slow-client flood. The daemon runs with short timeouts (header 2 s,
   keep-alive 2 s, body 5 s) and `max_connections` 1024; the bench opens `--slowloris` connections that
   send a header byte every 0.5 s and never finish, then idle connections up to `max_connections` plus
   `--past-cap` more. `/healthz` is timed while they are connected (an answer or a refusal, never a
   hang) and once the slow clients have timed out. Target: <= 1 s once they have.
3. regex: the worst silence-regex match. Through the API: a silence with the matcher `station =~
   (a+)+$`, events whose `station` tag is `--regex-chars` a's and a `!` (a near miss: 2^n steps for a
   backtracking engine) grouped into alerts by a rule, and `/healthz` timed while the silence is matched.
   In process: `ioc.matchers.Matcher` against growing values (stopped once one match takes more
   than a second). Target: <= 10 ms a match.

Figures are also written to `bench/results/hostile.json` (not committed). They swing with other load on
a shared machine; the targets have wide margins on purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ioc.config import parse_size, token_sha256
from tests.servers import free_port

VENDOR_TOKEN = secrets.token_urlsafe(24)
OPERATOR_TOKEN = secrets.token_urlsafe(24)
PAYLOADS = ("objects", "keys", "arrays", "ndjson")
RULE = """\
rules:
  - id: station-aqi
    kind: threshold
    severity: warning
    match: {type: telemetry, metric: env.aqi}
    group_by: [station]
    op: ">="
    threshold: 151
    summary: "AQI at {{ station }}: {{ value }}"
"""


# --- the daemon ------------------------------------------------------------------------------------------

def config_text(folder: Path, port: int, http_extra: str = "") -> str:
    rules = folder / "rules.yaml"
    rules.write_text(RULE, encoding="utf-8")
    return f"""
[http]
listen = "127.0.0.1:{port}"
{http_extra}

[mqtt]
enabled = false

[influx]
url = ""

[store]
path = "{folder / 'var' / 'ioc.db'}"

[rules]
paths = ["{rules}"]

[log]
format = "json"

[[vendors]]
name = "bench"
token_sha256 = "{token_sha256(VENDOR_TOKEN)}"
sources = ["qtmt-aqi"]
rate = 1000000

[[operators]]
name = "bench-operator"
token_sha256 = "{token_sha256(OPERATOR_TOKEN)}"
"""


@dataclass
class Daemon:
    """`ioc run` in a temporary folder; `nofile` lowers its file descriptor limit."""

    folder: Path
    http_extra: str = ""
    nofile: int | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "ioc.log"

    def start(self) -> None:
        config = self.folder / "ioc.toml"
        config.write_text(config_text(self.folder, self.port, self.http_extra), encoding="utf-8")
        launcher = ("import resource, runpy, sys\n"
                    f"if {self.nofile!r} is not None:\n"
                    f"    resource.setrlimit(resource.RLIMIT_NOFILE, ({self.nofile!r}, {self.nofile!r}))\n"
                    f"sys.argv = ['ioc', 'run', '--config', {str(config)!r}]\n"
                    "runpy.run_module('ioc.cli', run_name='__main__')\n")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen([sys.executable, "-c", launcher], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"ioc run exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise SystemExit(f"ioc run not ready after 60 s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, int]:
        """VmRSS, VmHWM, ... of /proc/PID/status in bytes."""
        assert self.process is not None
        values = {}
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("Vm") and line.rstrip().endswith("kB"):
                    name, _, value = line.partition(":")
                    values[name] = int(value.split()[0]) * 1024
        return values

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
                refs.write("5")
        except OSError:
            return False
        return True


@contextlib.contextmanager
def running(http_extra: str = "", nofile: int | None = None) -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="ioc-hostile-") as folder:
        daemon = Daemon(Path(folder), http_extra=http_extra, nofile=nofile)
        try:
            daemon.start()
            yield daemon
        finally:
            daemon.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def event(index: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"e-{uuid.uuid4().hex}-{index}", "source": "qtmt-aqi", "type": "telemetry", "time": now_iso(),
            "metric": "env.aqi", "value": float(index % 100), "area": "60", **extra}


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


@dataclass
class Row:
    measurement: str
    figure: str
    target: str
    ok: bool | None  # None: no target for this line
    data: dict[str, Any] = field(default_factory=dict)


# --- 1. memory for the worst payloads -----------------------------------------------------------------

def payload(kind: str, size: int) -> tuple[bytes, str]:
    """The worst payload of `kind`, as close to `size` bytes as it gets without passing it."""
    if kind == "objects":  # [{},{},...]: the most items per byte
        count = (size - 2 + 1) // 3
        return b"[" + b",".join([b"{}"] * count) + b"]", "application/json"
    if kind == "arrays":  # [[],[],...]
        count = (size - 2 + 1) // 3
        return b"[" + b",".join([b"[]"] * count) + b"]", "application/json"
    if kind == "ndjson":  # {} lines
        return b"{}\n" * (size // 3), "application/x-ndjson"
    if kind == "keys":  # one object, many unknown keys
        parts, total, index = [], 2, 0
        while True:
            part = b'"k%d":0' % index
            if total + len(part) + 1 > size:
                break
            parts.append(part)
            total += len(part) + 1
            index += 1
        return b"{" + b",".join(parts) + b"}", "application/json"
    raise ValueError(kind)


def measure_payload(kind: str, size: int, *, settle: float, rss_cap: int, timeout: float) -> Row:
    body, content_type = payload(kind, size)
    with running() as daemon:
        with httpx.Client(timeout=10) as client:  # warm up: lazy imports, caches, the first batch path
            for index in range(20):
                client.post(f"{daemon.api}/api/v1/events", headers=auth(VENDOR_TOKEN),
                            content=orjson.dumps([event(index) for _ in range(1)]))
        time.sleep(1.0)
        baseline = daemon.status()["VmRSS"]
        reset = daemon.reset_peak()
        sampled = [baseline]
        stop = threading.Event()
        killed = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    rss = daemon.status()["VmRSS"]
                except (OSError, KeyError):
                    return
                sampled.append(rss)
                if rss > rss_cap:
                    killed.set()
                    daemon.kill()
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        try:
            answer = httpx.post(f"{daemon.api}/api/v1/events", content=body, timeout=timeout,
                                headers={**auth(VENDOR_TOKEN), "Content-Type": content_type})
            outcome = f"{answer.status_code} {answer.text[:60]}"
        except httpx.HTTPError as error:
            outcome = f"no answer ({type(error).__name__})"
        took = time.monotonic() - started
        if killed.is_set():
            stop.set()
            sampler.join()
            return Row(f"RSS, {kind} ({mib(len(body))})", f"> {mib(rss_cap)} (killed)",
                       f"<= {mib(10 * len(body))}", False, {"outcome": outcome, "baseline": baseline})
        time.sleep(settle)
        stop.set()
        sampler.join()
        status = daemon.status()
        peak = max(max(sampled), status["VmHWM"] if reset else 0)
        after = status["VmRSS"]
    growth = peak - baseline
    back = (after - baseline) / baseline
    return Row(f"RSS, {kind} ({mib(len(body))})",
               f"+{mib(growth)} peak ({growth / len(body):.1f}x), after {back * 100:+.1f} %; "
               f"{outcome.split(' ')[0]} in {took:.2f} s",
               "<= 10x, after <= +10 %", growth <= 10 * len(body) and back <= 0.10,
               {"kind": kind, "bytes": len(body), "baseline": baseline, "peak": peak, "after": after,
                "answer": outcome, "seconds": took, "hwm_reset": reset})


# --- 2. /healthz during a slow-client flood ------------------------------------------------------------

def raise_own_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def time_healthz(api: str, timeout: float = 10.0) -> tuple[float, str]:
    """Seconds for one `/healthz` on a new connection, and what came back (200, 503, an error)."""
    started = time.monotonic()
    try:
        with httpx.Client(timeout=timeout) as client:
            answer = client.get(f"{api}/healthz")
        outcome = str(answer.status_code)
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.HTTPError as error:
        outcome = type(error).__name__
    return time.monotonic() - started, outcome


def summarise(samples: list[tuple[float, str]]) -> str:
    outcomes: dict[str, int] = {}
    for _, outcome in samples:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    seconds = [s for s, _ in samples]
    kinds = ", ".join(f"{count}x {outcome}" for outcome, count in sorted(outcomes.items()))
    return f"max {max(seconds) * 1000:,.0f} ms, median {statistics.median(seconds) * 1000:,.0f} ms ({kinds})"


def measure_flood(slowloris: int, past_cap: int, max_connections: int, header_timeout: float,
                  nofile: int | None) -> list[Row]:
    idle = max(0, max_connections - slowloris) + past_cap
    raise_own_fd_limit(slowloris + idle + 256)
    extra = (f'max_connections = {max_connections}\nheader_timeout = "{header_timeout:g}s"\n'
             f'keepalive_timeout = "{header_timeout:g}s"\nbody_timeout = "5s"')
    rows: list[Row] = []
    with running(extra, nofile=nofile) as daemon:
        before = [time_healthz(daemon.api) for _ in range(5)]
        rows.append(Row("/healthz, no flood", summarise(before), "", None))
        slow: list[socket.socket] = []
        held: list[socket.socket] = []
        failed_connects = 0
        flood_started = time.monotonic()
        for _ in range(slowloris):
            try:
                sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ioc\r\nX-Slow: ")
                sock.setblocking(False)
                slow.append(sock)
            except OSError:
                failed_connects += 1
        stop = threading.Event()
        closed_by_server: list[float] = []

        def drip() -> None:  # one more header byte on every slow connection every 0.5 s
            alive = list(slow)
            while alive and not stop.is_set():
                still = []
                for sock in alive:
                    try:
                        if sock.recv(4096) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed_by_server.append(time.monotonic() - flood_started)
                        continue
                    try:
                        sock.send(b"a")
                        still.append(sock)
                    except BlockingIOError:
                        still.append(sock)
                    except OSError:
                        closed_by_server.append(time.monotonic() - flood_started)
                alive = still
                stop.wait(0.5)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        for _ in range(idle):
            try:
                held.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=2))
            except OSError:
                failed_connects += 1
        opened = time.monotonic() - flood_started
        during = [time_healthz(daemon.api) for _ in range(5)]
        rows.append(Row(f"/healthz, {len(slow)} slowloris + {len(held)} idle connected "
                        f"(opened in {opened:.1f} s)", summarise(during), "an answer or a refusal, no hang",
                        all(seconds < 2 for seconds, _ in during), {"samples": during}))
        # Once every slow and idle client has had its header_timeout (they were all opened by now):
        wait = flood_started + opened + header_timeout + 0.5 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        recovered = time.monotonic()
        first_ok: float | None = None
        after = []
        for _ in range(10):
            sample = time_healthz(daemon.api)
            after.append(sample)
            if sample[1] == "200" and first_ok is None:
                first_ok = time.monotonic() - recovered
        stop.set()
        dripper.join()
        worst = max(seconds for seconds, _ in after)
        all_ok = all(outcome == "200" for _, outcome in after)
        rows.append(Row(f"/healthz, once slow clients timed out ({header_timeout:g} s)", summarise(after),
                        "<= 1 s, all 200", worst <= 1.0 and all_ok, {"samples": after}))
        closed = len(closed_by_server)
        rows.append(Row("slowloris closed by the daemon",
                        f"{closed} of {len(slow)}" + (f", the last after {max(closed_by_server):.1f} s"
                                                      if closed_by_server else ""),
                        f"all, within {header_timeout:g} s + drip interval", closed == len(slow), {}))
        for sock in slow + held:
            sock.close()
        log_lines = len(daemon.log().splitlines())
        rows.append(Row("log lines of the whole run", f"{log_lines:,} ({failed_connects} connects failed)",
                        "bounded", log_lines < 100, {}))
    return rows


# --- 3. the worst silence regex ----------------------------------------------------------------------------

def measure_regex_api(chars: int) -> Row:
    with running() as daemon:
        silence = httpx.post(f"{daemon.api}/api/v1/silences", headers=auth(OPERATOR_TOKEN), timeout=10, json={
            "matchers": [{"name": "station", "value": "(a+)+$", "op": "=~"}], "duration": "1h",
            "comment": "bench: catastrophic backtracking"})
        if silence.status_code != 201:
            return Row("silence (a+)+$ through the API", f"refused: {silence.status_code} {silence.text[:80]}",
                       "accepted (RE2 syntax)", False)
        near_miss = "a" * chars + "!"
        events = [event(0, value=200.0, tags={"station": near_miss}),
                  event(1, value=200.0, tags={"station": "a" * chars})]
        started = time.monotonic()
        try:
            posted = httpx.post(f"{daemon.api}/api/v1/events", headers=auth(VENDOR_TOKEN),
                                content=orjson.dumps(events), timeout=120)
            answer = str(posted.status_code)
        except httpx.HTTPError as error:
            answer = type(error).__name__
        samples = []
        listed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples.append(time_healthz(daemon.api, timeout=60))
            with contextlib.suppress(httpx.HTTPError, ValueError):
                alerts = httpx.get(f"{daemon.api}/api/v1/alerts", timeout=60).json()
                if len(alerts) >= 2:
                    listed = True
                    break
            time.sleep(0.05)
        took = time.monotonic() - started
    worst = max(seconds for seconds, _ in samples)
    return Row(f"/healthz while (a+)+$ meets a {chars + 1}-char label", summarise(samples)
               + f"; POST {answer}, alerts listed after {took:.2f} s" + ("" if listed else " (not listed)"),
               "<= 1 s", worst <= 1.0 and listed, {"samples": samples, "seconds": took})


def measure_regex_matcher(budget: float = 1.0) -> Row:
    from ioc.matchers import Matcher

    matcher = Matcher.create("station", "(a+)+$", "=~")
    results: list[tuple[int, float]] = []
    stopped = False
    for chars in [*range(10, 41), 100, 1000, 10_000, 100_000]:
        labels = {"station": "a" * chars + "!"}
        repeat = 1 if chars < 20 else 5
        started = time.perf_counter()
        for _ in range(repeat):
            matcher.matches(labels)
        took = (time.perf_counter() - started) / repeat
        results.append((chars, took))
        if took > budget:  # a backtracking engine: the next few would take minutes
            stopped = True
            break
    worst_chars, worst = max(results, key=lambda item: item[1])
    figure = f"worst {worst * 1000:,.3f} ms ({worst_chars + 1} chars)"
    if stopped:
        figure += f", stopped at {results[-1][0] + 1} chars"
    else:
        figure += f", {results[-1][1] * 1000:,.3f} ms at {results[-1][0] + 1:,} chars"
    return Row("Matcher (a+)+$ in process", figure, "<= 10 ms", worst <= 0.010 and not stopped,
               {"results": results})


# --- the table -----------------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    widths = [max(len(row.measurement) for row in rows), max(len(row.figure) for row in rows),
              max(len(row.target) for row in rows)]
    mark = {True: "ok", False: "MISSED", None: ""}
    print()
    print(f"{'measurement':<{widths[0]}} | {'figure':<{widths[1]}} | {'target':<{widths[2]}} | ")
    print(f"{'-' * widths[0]}-+-{'-' * widths[1]}-+-{'-' * widths[2]}-+-------")
    for row in rows:
        print(f"{row.measurement:<{widths[0]}} | {row.figure:<{widths[1]}} | {row.target:<{widths[2]}} | "
              f"{mark[row.ok]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--only", nargs="+", choices=("rss", "flood", "regex"), default=["rss", "flood", "regex"])
    parser.add_argument("--payloads", nargs="+", choices=PAYLOADS, default=list(PAYLOADS))
    parser.add_argument("--payload-size", default="8MiB", help="bytes of each payload (default the max_body, 8MiB)")
    parser.add_argument("--rss-cap", default="4GiB", help="kill the daemon past this RSS (default 4GiB)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the answer before RSS is read")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a payload's answer")
    parser.add_argument("--slowloris", type=int, default=500)
    parser.add_argument("--max-connections", type=int, default=1024)
    parser.add_argument("--past-cap", type=int, default=200, help="idle connections beyond max_connections")
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--daemon-nofile", type=int, default=None,
                        help="lower the daemon's file descriptor limit (reach it with fewer connections)")
    parser.add_argument("--regex-chars", type=int, default=30, help="a's before the '!' of the near miss")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "hostile.json")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    steps: list[tuple[str, Callable[[], list[Row]]]] = []
    if "rss" in args.only:
        def rss(kind: str) -> list[Row]:
            return [measure_payload(kind, parse_size(args.payload_size), settle=args.settle,
                                    rss_cap=parse_size(args.rss_cap), timeout=args.timeout)]

        steps += [(f"rss {kind}", functools.partial(rss, kind)) for kind in args.payloads]
    if "flood" in args.only:
        steps.append(("flood", lambda: measure_flood(args.slowloris, args.past_cap, args.max_connections,
                                                     args.header_timeout, args.daemon_nofile)))
    if "regex" in args.only:
        steps.append(("regex api", lambda: [measure_regex_api(args.regex_chars)]))
        steps.append(("regex matcher", lambda: [measure_regex_matcher()]))
    for name, step in steps:
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            rows += step()
        except Exception as error:  # noqa: BLE001 - one broken measurement must not hide the others
            rows.append(Row(name, f"failed: {type(error).__name__}: {error}"[:160], "", False))
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"date": now_iso(), "argv": sys.argv[1:], "rows": [
        {"measurement": row.measurement, "figure": row.figure, "target": row.target, "ok": row.ok,
         "data": row.data} for row in rows]}, indent=1, default=str))
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
