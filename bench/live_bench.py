"""Live end-to-end intake (issue 10): vendors publish while the consumer runs, until InfluxDB has it all.

    python bench/live_bench.py --events 300000                 # the issue's size; the three consumers
    python bench/live_bench.py --events 20000 --only paho,ioc  # a smoke run
    python bench/live_bench.py --events 300000 --profile DIR   # also py-spy on `ioc run` (raw stacks)
    python bench/live_bench.py --events 300000 --only ioc --profile DIR --gil   # where the GIL goes
    python bench/live_bench.py --events 300000 --publisher paho  # vendors' paho clients on this box

Method. One Mosquitto and one InfluxDB 1.6 (the tests' servers, `tests/servers.py`) for the whole run.
The same stream for every consumer: N telemetry events of ~240 B (`livekit.make_payloads`), N/4 from
each of 4 sources, published at **QoS 1** by 4 publisher processes (`publisher.py`, a window of 1000
unacknowledged publishes each, unpaced: as fast as the broker acknowledges). By default they are the raw
load generator (`--client raw`: packets encoded up front, ~6 µs of CPU an event), as vendors publish from
machines of their own; `--publisher paho` makes them ordinary paho clients (~45 µs an event), which on a
2-core box take a third of the machine from the consumer and bound every consumer alike. Each consumer
subscribes at QoS 1 and writes to a fresh database of its own:

  (a) paho: bare paho-mqtt + orjson -> batched /write, acknowledging after the write (`paho_consumer.py`);
  (b) node-red: Node-RED 4 with node-red-contrib-influxdb, mqtt in -> json -> join -> influxdb batch
      (`nodered.py`; it acknowledges on receipt);
  (c) ioc: `ioc run` with the shipped rule packs, acknowledging once the points are written.

For each: the consumer is started and proven end to end by one warm-up event (queryable in its
database); then the 4 publishers, already connected, are released at once; the clock runs from that
moment until a count query shows all N + 1 points queryable (polled every 50 ms once the publishers
are done, not before; a full count only once each source's last event is queryable, since counting
every point costs InfluxDB CPU that the consumer under test would miss). CPU
(utime + stime from /proc) of the consumer, the broker, InfluxDB and the publishers is taken over the
same interval. Figures swing with other load on a shared 2-core machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import livekit  # before `tests.*` (first-party, sorted last): it puts the checkout on sys.path
import nodered
import orjson
from livekit import SOURCES, cpu_seconds, influx_points, influx_post, tree_cpu_seconds
from paho_consumer import to_line

from tests.mqtt_tools import publish_all
from tests.servers import free_port, start_influxdb, start_mosquitto

HERE = Path(__file__).resolve().parent
CONSUMERS = ("paho", "node-red", "ioc")


class Consumer:
    """A consumer under test: started against a database, its pid for CPU, stopped."""

    name = ""

    def __init__(self, workdir: Path, mqtt_port: int, influx_url: str, database: str) -> None:
        self.workdir, self.mqtt_port = workdir, mqtt_port
        self.influx_url, self.database = influx_url, database
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def refused(self) -> str:
        """Why events were refused, if the consumer says so (then the count can never be reached)."""
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class PahoConsumer(Consumer):
    name = "paho"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "paho_consumer.py"), "--port", str(self.mqtt_port),
             "--influx", self.influx_url, "--database", self.database],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(self.workdir / "paho.log").open("ab"))
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"paho consumer did not start: {(self.workdir / 'paho.log').read_text()}")


class NodeRedConsumer(Consumer):
    name = "node-red"

    def start(self) -> None:
        red = nodered.install()
        influx_port = int(self.influx_url.rsplit(":", 1)[1])
        user_dir = self.workdir / f"node-red-{self.database}"
        settings = nodered.write_flow(user_dir, http_port=free_port(), mqtt_port=self.mqtt_port,
                                      influx_port=influx_port, database=self.database)
        self.process = nodered.start(red, user_dir, settings, self.workdir / "node-red.log")


class IocConsumer(Consumer):
    name = "ioc"

    def start(self) -> None:
        config, http_port = livekit.ioc_config(
            self.workdir, mqtt_port=self.mqtt_port, influx_url=self.influx_url, database=self.database,
            client_id=f"ioc-{self.database}", store=self.workdir / f"{self.database}.db")
        self.daemon = livekit.start_ioc(config, http_port, self.workdir / "ioc.log")
        self.process = self.daemon.process

    def refused(self) -> str:
        reasons = {f"{sample.labels.get('reason')}: {sample.value:.0f}" for sample in self._samples()
                   if sample.name == "ioc_events_rejected_total" and sample.value}
        return ", ".join(sorted(reasons))

    def _samples(self) -> list[Any]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.daemon.api}/metrics", timeout=10).text
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def accepted(self) -> float:
        return sum(sample.value for sample in self._samples() if sample.name == "ioc_events_accepted_total")


def warm_up(consumer: Consumer, mqtt_port: int, base_s: int, run: str, areas: list[str],
            timeout: float = 120.0) -> None:
    """One event through the whole path, so the clock starts with the consumer subscribed and its
    InfluxDB connection open (Node-RED gives no other sign that its flow is deployed and connected)."""
    payload = livekit.make_payloads("qtmt-aqi", 1, f"{run}-warmup", base_s - 60, areas)[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer.process is not None and consumer.process.poll() is not None:
            raise RuntimeError(f"{consumer.name} exited with {consumer.process.returncode}")
        publish_all("127.0.0.1", mqtt_port, [("ioc/v1/events/qtmt-aqi", payload)], qos=1)
        for _ in range(20):
            if influx_points(consumer.influx_url, consumer.database, list(SOURCES.values())) >= 1:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{consumer.name}: the warm-up event never became queryable")


def children_cpu() -> float:
    """CPU of the child processes reaped so far: between the go and the publishers' exit, only they are."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def last_times(files: dict[str, Path]) -> dict[str, str]:
    """Each source's last event time (RFC 3339, UTC), for `tails_written`."""
    out = {}
    for source, path in files.items():
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - 4096))
            last = orjson.loads(stream.read().rstrip().rsplit(b"\n", 1)[-1])
        out[source] = datetime.fromisoformat(last["time"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def tails_written(url: str, database: str, lasts: dict[str, str]) -> bool:
    """Whether the last event of each source's stream is queryable (a cheap query: one time range)."""
    for source, since in lasts.items():
        query = f"SELECT count(\"value\") FROM \"{SOURCES[source]}\" WHERE time >= '{since}'"
        params = urllib.parse.urlencode({"db": database, "q": query})
        with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as response:
            result = orjson.loads(response.read())["results"][0]
        if not result.get("series"):
            return False
    return True


def warm_influxdb(url: str, files: dict[str, Path]) -> None:
    """Write the stream once into a scratch database before the first consumer, so the first consumer
    measured does not pay InfluxDB's first shard, WAL and index start-up alone."""
    influx_post(url, 'CREATE DATABASE "warmup"')
    for path in files.values():
        lines = [to_line(payload) for payload in path.read_bytes().splitlines()]
        for start in range(0, len(lines), 5000):
            body = "\n".join(lines[start:start + 5000]).encode()
            request = urllib.request.Request(f"{url}/write?db=warmup&precision=ns", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
    influx_post(url, 'DROP DATABASE "warmup"')


def run_one(consumer: Consumer, files: dict[str, Path], count: int, servers: dict[str, int], base_s: int,
            run: str, areas: list[str], profile: Path | None, client: str, gil: bool) -> dict[str, float]:
    influx_post(consumer.influx_url, f'CREATE DATABASE "{consumer.database}"')
    lasts = last_times(files)
    consumer.start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        warm_up(consumer, servers["mqtt_port"], base_s, run, areas)
        publishers = [subprocess.Popen(
            [sys.executable, str(HERE / "publisher.py"), "--port", str(servers["mqtt_port"]),
             "--topic", f"ioc/v1/events/{source}", "--payloads", str(path), "--qos", "1", "--client", client],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE) for source, path in files.items()]
        for publisher in publishers:
            assert publisher.stdout is not None
            if publisher.stdout.readline().strip() != b"ready":
                raise RuntimeError("a publisher did not connect")
        if profile is not None and consumer.name == "ioc":
            profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(consumer.pid), "--threads",
                                    "--gil" if gil else "--idle",
                                    "--nonblocking", "--rate", "200", "--format", "raw",
                                    "--output", str(profile / f"ioc-{run}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        cpu_before = {"consumer": consumer.cpu(), "mosquitto": cpu_seconds(servers["mosquitto"]),
                      "influxd": cpu_seconds(servers["influxd"]), "publishers": children_cpu()}
        started = time.monotonic()
        for publisher in publishers:
            assert publisher.stdin is not None
            publisher.stdin.write(b"go\n")
            publisher.stdin.flush()
        reports = []
        for publisher in publishers:
            out, _ = publisher.communicate(timeout=900)
            if publisher.returncode != 0:
                raise RuntimeError(f"a publisher failed ({publisher.returncode})")
            reports.append(json.loads(out.decode().splitlines()[-1]))
        published = time.monotonic()
        expected = count + 1
        deadline = time.monotonic() + 900
        seen, asked = 0, time.monotonic()
        while True:
            # The cheap check first (each source's last event, a query over the newest points only);
            # the full count, which reads every point, once it passes.
            if tails_written(consumer.influx_url, consumer.database, lasts):
                seen = influx_points(consumer.influx_url, consumer.database, list(SOURCES.values()))
                if seen >= expected:
                    break
            if time.monotonic() > deadline or consumer.process.poll() is not None:
                raise RuntimeError(f"{consumer.name}: {seen} of {expected} points queryable")
            if time.monotonic() - asked > 2.0:  # a scrape costs the daemon: seldom
                asked = time.monotonic()
                refused = consumer.refused()
                if refused:
                    raise RuntimeError(f"{consumer.name} refused events of the stream ({refused})")
            time.sleep(0.05)
        finished = time.monotonic()
        elapsed = finished - started
        used = {"consumer": consumer.cpu() - cpu_before["consumer"],
                "mosquitto": cpu_seconds(servers["mosquitto"]) - cpu_before["mosquitto"],
                "influxd": cpu_seconds(servers["influxd"]) - cpu_before["influxd"]}
        publishers_cpu = children_cpu() - cpu_before["publishers"]
        if seen != expected:
            raise RuntimeError(f"{consumer.name}: {seen} points for {expected} events (lost or duplicated)")
        result = {"events_per_s": count / elapsed, "seconds": elapsed,
                  "publish_s": published - started,
                  "publish_rate": sum(r["sent"] for r in reports) / (max(r["finished"] for r in reports)
                                                                        - min(r["first"] for r in reports)),
                  "consumer_cores": used["consumer"] / elapsed,
                  "consumer_us_per_event": used["consumer"] / count * 1e6,
                  "mosquitto_us_per_event": used["mosquitto"] / count * 1e6,
                  "influxd_us_per_event": used["influxd"] / count * 1e6,
                  "publishers_us_per_event": publishers_cpu / count * 1e6}
        if isinstance(consumer, IocConsumer):
            result["ioc_accepted"] = consumer.accepted()
        return result
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples on an interrupt
            spy.wait(60)
        consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default=",".join(CONSUMERS),
                        help=f"comma-separated, in the order run: {', '.join(CONSUMERS)}")
    parser.add_argument("--commit", help="run `ioc run` from this commit (git archive), not the working tree")
    parser.add_argument("--profile", type=Path, help="py-spy raw stacks of `ioc run` into this folder")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: only the thread holding the GIL (where a GIL-bound daemon's time "
                             "goes), not every thread's waits")
    parser.add_argument("--publisher", choices=["raw", "paho"], default="raw",
                        help="the publishers' client (publisher.py --client): raw, a cheap load generator, "
                             "or paho, a vendor's ordinary client that takes a third of a 2-core box")
    args = parser.parse_args()
    livekit.exit_on_sigterm()
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(names) - set(CONSUMERS)
    if unknown:
        parser.error(f"unknown consumers {sorted(unknown)}")
    count = args.events - args.events % len(SOURCES)
    kinds = {"paho": PahoConsumer, "node-red": NodeRedConsumer, "ioc": IocConsumer}
    if "node-red" in names:
        nodered.install()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ioc-live-") as temp:
        workdir = Path(temp)
        measured = livekit.use_commit(args.commit, workdir)
        areas = livekit.commune_codes()
        print(f"ioc: {measured}; areas: {len(areas)} communes of its registry", flush=True)
        # No persistence: saving queued messages every second would load the CPU under test.
        broker = start_mosquitto(workdir / "mosquitto", persistence=False)
        influx = start_influxdb(workdir / "influxdb")
        servers = {"mqtt_port": broker.port, "mosquitto": broker.process.pid, "influxd": influx.process.pid}
        try:
            for round_ in range(1, args.rounds + 1):
                run = f"r{round_}-{os.getpid()}"
                base_s = int(time.time()) - 3600
                files = {}
                for number, source in enumerate(SOURCES):
                    path = workdir / f"{source}.ndjson"
                    path.write_bytes(b"\n".join(livekit.make_payloads(
                        source, count // len(SOURCES), run, base_s, areas, offset=number * count)) + b"\n")
                    files[source] = path
                if round_ == 1:
                    warm_influxdb(influx.url, files)
                print(f"round {round_}: {count:,} events of ~240 B from {len(SOURCES)} publishers at QoS 1 "
                      f"({args.publisher} client)", flush=True)
                for name in names:
                    database = f"live_{name.replace('-', '_')}_{round_}"
                    consumer = kinds[name](workdir, broker.port, influx.url, database)
                    result = run_one(consumer, files, count, servers, base_s, run, areas, args.profile,
                                     args.publisher, args.gil)
                    results.setdefault(name, []).append(result)
                    print(f"  {name:<9} {result['events_per_s']:>9,.0f} ev/s  ({result['seconds']:.2f} s; "
                          f"publishers done after {result['publish_s']:.2f} s at "
                          f"{result['publish_rate']:,.0f}/s)  consumer {result['consumer_cores']:.2f} cores "
                          f"= {result['consumer_us_per_event']:.1f} µs/ev; mosquitto "
                          f"{result['mosquitto_us_per_event']:.1f}, "
                          f"influxd {result['influxd_us_per_event']:.1f}, "
                          f"publishers {result['publishers_us_per_event']:.1f} µs/ev", flush=True)
        finally:
            influx.stop()
            broker.stop()

    print("\nsummary (ratios within this run, per round)")
    for name, rounds in results.items():
        ratios = ""
        if "paho" in results and name != "paho":
            ratios = "; x paho " + " / ".join(
                f"{r['events_per_s'] / p['events_per_s']:.2f}"
                for r, p in zip(rounds, results["paho"], strict=True))
        if "node-red" in results and name == "ioc":
            ratios += "; x node-red " + " / ".join(
                f"{r['events_per_s'] / n['events_per_s']:.2f}" for r, n in zip(rounds, results["node-red"],
                                                                                strict=True))
        print(f"  {name:<9} " + " / ".join(f"{r['events_per_s']:,.0f}" for r in rounds) + " ev/s" + ratios
              + "; cores " + " / ".join(f"{r['consumer_cores']:.2f}" for r in rounds)
              + "; CPU µs/ev " + " / ".join(f"{r['consumer_us_per_event']:.1f}" for r in rounds))
    print("  targets (issue 10): ioc >= 0.9 x paho, >= 1.8 x node-red (events/s). CPU per event is the\n"
          "  steadier figure on a loaded box: a consumer given less CPU than it wants shows it in events/s.")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "live.json").write_bytes(orjson.dumps({"events": count, "ioc": measured, "publisher": args.publisher,
                                                  "node_red": nodered.version(),
                                                  "results": results, "cpus": os.cpu_count()},
                                                 option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
