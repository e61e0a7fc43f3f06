"""Restart with a big store (issue 10): `ioc run` over 1M open dossiers, until ready with KPIs served.

    python bench/restart_bench.py --dossiers 1000000           # the issue's figure (target <= 10 s)
    python bench/restart_bench.py --dossiers 50000             # a smoke run
    python bench/restart_bench.py --dossiers 1000000 --profile DIR   # py-spy of the start (raw stacks)

Method. The store is built by the daemon's own code, in a child process running the same tree as the
daemon then measured: `Daemon(settings)` from the same config, N dossier events `observe`d by its
dossier tracker (built with `model_construct`: validation is intake's cost, not the store's), spread
over the communes of the configured registry, received over the last 20 days, due from 2 days ago to
40 days ahead (about a tenth overdue), a twelfth in `supplement`, the rest `received` or `processing`;
then `advance(now)` and the daemon's own shutdown (`Daemon._close`): what a daemon that had taken
those events writes when it stops (the tracker's rows, the KPI board, the rule engine's state, the
alerts the dossier rules raised over those KPIs). No dedup keys or spool: dossiers accumulate over
months, dedup keys only over `dedup_window`.

Then `ioc run` is started against the tests' Mosquitto and InfluxDB 1.6, and the clock runs from the
process's spawn until `/readyz` answers 200 and `GET /api/v1/kpis` serves `kpi.dossier.open` summing
to N over the province level (polled every 20 ms). Both times are printed, with the daemon's peak RSS
and the CPU it used to get there; `--rounds` repeats the start (the OS page cache is warm after the
build, as after a service restart; a cold start after a reboot reads the file from disk first).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import livekit  # before `tests.*` (first-party, sorted last): it puts the checkout on sys.path

from tests.servers import start_influxdb, start_mosquitto

HERE = Path(__file__).resolve().parent


def build(config: Path, count: int, seed: int = 1) -> None:
    """(Child process, same tree as the daemon.) Fill the config's store with `count` open dossiers,
    through the daemon's own assembly: `Daemon(settings)` (MQTT off: nothing is received), its dossier
    tracker fed, then the shutdown `ioc run` performs (`Daemon._close`, as ingest_bench uses it), which
    writes the trackers' rows and the KPI board (and the rule engine's state) where the daemon keeps them."""
    os.environ["IOC_MQTT__ENABLED"] = "false"
    from ioc.app import Daemon
    from ioc.config import load_settings
    from ioc.envelope import DossierEvent
    from ioc.logs import configure_logging

    settings = load_settings(config)
    configure_logging(settings.log.level, settings.log.format)  # as `ioc run` does: warnings only
    daemon = Daemon(settings)
    now = datetime.now(UTC)
    communes = [area.code for area in daemon.areas.areas(now.date()) if area.level == "commune"]
    tracker = next(a for a in daemon.aggregators if getattr(a, "name", "") == "dossiers")
    rng = random.Random(seed)
    started = time.perf_counter()
    for index in range(count):
        received = now - timedelta(seconds=rng.randrange(3600, 20 * 86400))
        due = now + timedelta(seconds=rng.randrange(-2 * 86400, 40 * 86400)) if index % 20 else \
            now - timedelta(seconds=rng.randrange(60, 86400))
        due = max(due, received + timedelta(hours=1))
        status = "supplement" if index % 12 == 0 else ("received" if index % 3 == 0 else "processing")
        tracker.observe(DossierEvent.model_construct(
            id=f"d{index}", source="dvc-binhthuan", type="dossier", time=received, area=rng.choice(communes),
            tags=None, dossier_id=f"000.00.20.H10-{index:09d}", procedure="1.001612", status=status,
            received_at=received, due_at=due, finished_at=None,
            channel="online" if index % 4 else "counter", level="commune"))
    for aggregator in daemon.aggregators:
        aggregator.advance(time.time())  # KPIs emitted: the board the daemon saves at shutdown
    daemon._close()
    print(f"built {count:,} open dossiers over {len(communes):,} communes in "
          f"{time.perf_counter() - started:.1f} s; {len(daemon.kpis.latest()):,} KPI series saved", flush=True)


def served(api: str, expected: int) -> tuple[bool, bool]:
    """(/readyz is 200, /api/v1/kpis has kpi.dossier.open summing to `expected` at the province level)."""
    try:
        ready = httpx.get(f"{api}/readyz", timeout=2).status_code == 200
        response = httpx.get(f"{api}/api/v1/kpis", timeout=5)
    except httpx.HTTPError:
        return False, False
    if response.status_code != 200:
        return ready, False
    total = sum(kpi["value"] for kpi in response.json()
                if kpi["kpi"] == "kpi.dossier.open" and kpi["level"] == "province")
    return ready, total == expected


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_once(config: Path, http_port: int, workdir: Path, expected: int, profile: Path | None,
               round_: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "ioc.cli", "run", "--config", str(config)]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        argv = ["py-spy", "record", "--idle", "--threads", "--nonblocking", "--rate", "200",
                "--format", "raw",
                "--output", str(profile / f"restart-{round_}.txt"), "--", *argv]
    api = f"http://127.0.0.1:{http_port}"
    started = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=(workdir / "ioc.log").open("ab"),
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **livekit.IOC_ENV},
                               cwd=livekit.IOC_ENV.get("PYTHONPATH"))
    ready_at = kpis_at = None
    try:
        while time.monotonic() - started < 300:
            if process.poll() is not None:
                raise RuntimeError(f"ioc run exited with {process.returncode}:\n"
                                   f"{(workdir / 'ioc.log').read_text(errors='replace')[-3000:]}")
            ready, kpis = served(api, expected)
            now = time.monotonic()
            if ready and ready_at is None:
                ready_at = now
            if kpis and kpis_at is None:
                kpis_at = now
            if ready_at is not None and kpis_at is not None:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("ioc run was not ready with its KPIs after 300 s")
        daemon_pid = process.pid if profile is None else livekit.children(process.pid)[0]
        cpu = livekit.cpu_seconds(daemon_pid)
        rss = peak_rss_mib(daemon_pid)
    finally:
        if profile is not None and process.poll() is None:
            for child in livekit.children(process.pid):
                os.kill(child, 15)  # the daemon stops; py-spy then writes its samples and exits
            process.wait(120)
        elif process.poll() is None:
            process.terminate()
            process.wait(120)
    return {"ready_s": ready_at - started, "kpis_s": kpis_at - started,
            "both_s": max(ready_at, kpis_at) - started,
            "cpu_s": cpu, "peak_rss_mib": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dossiers", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="py-spy raw stacks of each start into this folder")
    parser.add_argument("--commit", help="run `ioc run` (and build its store) from this commit, not the "
                                         "working tree")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the child that builds the store
    args = parser.parse_args()
    if args.build is not None:
        build(args.build, args.dossiers)
        return

    livekit.exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="ioc-restart-") as temp:
        workdir = Path(temp)
        measured = livekit.use_commit(args.commit, workdir)
        broker = start_mosquitto(workdir / "mosquitto", persistence=False)
        influx = start_influxdb(workdir / "influxdb")
        try:
            config, http_port = livekit.ioc_config(
                workdir, mqtt_port=broker.port, influx_url=influx.url, database="restart",
                client_id="ioc-restart", store=workdir / "ioc.db")
            subprocess.run([sys.executable, str(HERE / "restart_bench.py"), "--build", str(config),
                            "--dossiers", str(args.dossiers)], check=True,
                           env={**os.environ, **livekit.IOC_ENV}, cwd=livekit.IOC_ENV.get("PYTHONPATH"))
            size = (workdir / "ioc.db").stat().st_size / 2**20
            print(f"ioc: {measured}; store {size:,.0f} MiB", flush=True)
            for round_ in range(1, args.rounds + 1):
                result = start_once(config, http_port, workdir, args.dossiers, args.profile, round_)
                print(f"  start {round_}: /readyz 200 after {result['ready_s']:.2f} s, KPIs served after "
                      f"{result['kpis_s']:.2f} s -> both {result['both_s']:.2f} s; "
                      f"{result['cpu_s']:.1f} s of CPU, peak RSS {result['peak_rss_mib']:,.0f} MiB",
                      flush=True)
            print("  target (issue 10): <= 10 s with 1M open dossiers")
        finally:
            influx.stop()
            broker.stop()


if __name__ == "__main__":
    main()
