"""Failover time of a two-node cluster (issue 11, CONTRACT §8: another node leads within `lease + 5 s`).

    python bench/failover_bench.py --kills 20 --lease 10s     # the issue's figure
    python bench/failover_bench.py --kills 3 --lease 3s       # a smoke run
    python bench/failover_bench.py --kills 20 --lease 10s --load demo --load-rate 200   # under load

Method. Two `ioc run` nodes (`[cluster] node` ioc-a / ioc-b, their own MQTT client ids) on one PostgreSQL,
Mosquitto and InfluxDB 1.6 of the tests' fixtures. Each round SIGKILLs the node that leads (asked on
`/readyz`) and measures, by polling the other's `/readyz` every 50 ms, the time from the kill to its
answer `"role": "leader"`; the killed node is started again (it comes back as a follower) before the next
round, and the round starts at a random moment of the lease's renewal cycle. Prints min / median / max.
The bound is lease (the lease runs out in PostgreSQL) + up to lease / 3 (the next attempt of the
follower); a graceful stop gives the lease up and is not measured here.

`--load SCENARIO` plays the scenario (`ioc sim run SCENARIO --to mqtt://... --rate N`, open-ended from now,
in real time) to the broker for the whole run, so both nodes ingest and evaluate while the leader dies;
the events it sent and had acknowledged are printed at the end.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import livekit  # noqa: F401 - before `tests.*`: it puts the checkout on sys.path

from ioc.config_types import parse_duration
from tests.e2e.daemon import DaemonProcess, make_daemon
from tests.postgres_server import start_postgres
from tests.servers import start_influxdb, start_mosquitto


def role(daemon: DaemonProcess) -> str | None:
    try:
        return httpx.get(f"{daemon.api}/readyz", timeout=2).json().get("role")
    except httpx.HTTPError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease", default="10s")
    parser.add_argument("--load", metavar="SCENARIO", help="play this scenario (e.g. demo) during the kills")
    parser.add_argument("--load-rate", type=float, default=100.0, help="its events per second, in all")
    args = parser.parse_args()
    lease = parse_duration(args.lease)
    with tempfile.TemporaryDirectory(prefix="ioc-failover-") as folder:
        work = Path(folder)
        mosquitto, influx, postgres = start_mosquitto(work / "mq"), start_influxdb(work / "influx"), start_postgres()
        postgres.psql("CREATE DATABASE failover")
        nodes: list[tuple[DaemonProcess, dict[str, str]]] = []
        load: subprocess.Popen[bytes] | None = None
        try:
            for name in ("ioc-a", "ioc-b"):
                (work / name).mkdir()
                daemon = make_daemon(work / name, mqtt_url=mosquitto.url, influx_url=influx.url, database="failover",
                                     client_id=name, extra=f'\n[cluster]\nlease = "{args.lease}"\n')
                env = {"IOC_STORE__URL": postgres.url("failover"), "IOC_CLUSTER__NODE": name}
                daemon.start(env=env)
                nodes.append((daemon, env))
            if args.load:
                load = subprocess.Popen([sys.executable, "-m", "ioc.simulators.cli", "run", args.load, "--to",
                                         mosquitto.url, "--rate", f"{args.load_rate:g}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            times: list[float] = []
            for round_ in range(args.kills):
                time.sleep(random.uniform(0.5, 0.5 + lease / 3))  # a random moment of the renewal cycle
                leaders = [node for node in nodes if role(node[0]) == "leader"]
                if len(leaders) != 1:
                    print(f"round {round_}: {len(leaders)} leaders, skipped", file=sys.stderr)
                    time.sleep(lease)
                    continue
                (dead, dead_env), (other, _) = leaders[0], next(node for node in nodes if node is not leaders[0])
                dead.kill()
                killed = time.monotonic()
                while role(other) != "leader":
                    if time.monotonic() - killed > 3 * lease + 30:
                        raise SystemExit(f"round {round_}: no new leader after {3 * lease + 30:g}s")
                    time.sleep(0.05)
                took = time.monotonic() - killed
                times.append(took)
                print(f"round {round_ + 1}: {took:.2f}s", flush=True)
                dead.start(env=dead_env)  # back as a follower
            print(f"\nfailover over {len(times)} kills, lease {lease:g}s (bound lease + 5 s = {lease + 5:g}s): "
                  f"min {min(times):.2f}s  median {statistics.median(times):.2f}s  max {max(times):.2f}s"
                  + (f"; under `ioc sim run {args.load} --rate {args.load_rate:g}`" if args.load else ""))
            if load is not None:
                load.send_signal(signal.SIGINT)  # stops after the acknowledgements; its summary on stderr
                _, err = load.communicate(timeout=120)
                print(err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else "load: no output")
                load = None
        finally:
            if load is not None:
                load.kill()
            for daemon, _ in nodes:
                daemon.stop()
            postgres.close()
            influx.stop()
            mosquitto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
