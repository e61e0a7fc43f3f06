"""Intake benchmark (issue 3): the daemon's MQTT -> validate -> InfluxDB path against a bare paho baseline.

    python bench/ingest_bench.py                 # 200k events, 2 rounds, all measurements
    python bench/ingest_bench.py --events 50000 --rounds 1 --only qos0
    python bench/ingest_bench.py --events 100000 --rounds 1 --batch-size 5000   # the sink's old batches
    python bench/ingest_bench.py --events 100000 --rounds 1 --store both   # PostgreSQL / SQLite (issue 11)

Method. For every measurement the broker is preloaded: a persistent session subscribes, goes away, the
events are published into its queue (`queue_qos0_messages true` for QoS 0), and then the consumer under
test connects and drains the queue. So the publisher's CPU never competes with the consumer's, and the
baseline and the daemon see exactly the same stream, in the same run, on the same servers:

  (a) baseline: a bare paho-mqtt subscriber that only does `orjson.loads` on each message;
  (b) the daemon's path: `ioc.app.Daemon` (MQTT connector -> pipeline -> InfluxDB sink, a real
      InfluxDB 1.x); the clock stops when the sink has written every point.
  (c) the same at QoS 1 with durable acknowledgements (acked only once the points are written),
      beside the rate one paho publisher reaches at QoS 1 (what the daemon must keep up with);
  (d) HTTP NDJSON ingest through `ioc run` (a subprocess) with 2 client threads, until all points are
      written.

`--store` picks the shared store of the daemon's runs (b, c, d): `sqlite` (the default, `[store] path`),
`postgresql` (a real PostgreSQL 15 started as the tests start it, `tests/postgres_server.py`: initdb +
pg_ctl on a free loopback port; each daemon run gets a fresh database through `[store] url`), or `both`:
each phase then runs once on each, in the same round on the same servers and stream (the order alternates
between rounds), and the ratio PostgreSQL / SQLite is printed per phase (issue 11: >= 0.8).

Figures swing with other load on a shared 2-core machine; compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ioc.app import Daemon, tune_gc
from ioc.areas import AreaRegistry
from ioc.config import Settings, token_sha256
from tests.mqtt_tools import publish_all
from tests.postgres_server import Postgres, start_postgres
from tests.servers import free_port, start_influxdb, start_mosquitto, wait_for_http

SOURCES = ["qtmt-aqi", "viettel-ran", "vnpt-ran", "dvc-binhthuan"]
# 120 communes of Lâm Đồng in use from 2025-07-01 (the events are dated 2025-11): codes the intake keeps
# as they are, as a province's live traffic does (a former code would be converted, a divided one refused).
AREAS = [area.code for area in AreaRegistry.default().children("68", date(2026, 1, 1))][:120]
METRICS = ["env.aqi", "env.pm25", "net.rssi", "portal.sessions"]
TOKEN = "bench-vendor-token"
STORES = ("sqlite", "postgresql")
PHASES = {"b": "b  daemon MQTT->InfluxDB, QoS 0", "c": "c  daemon MQTT->InfluxDB, QoS 1 acked",
          "d": "d  daemon HTTP NDJSON->InfluxDB"}


def make_events(count: int, run: str) -> list[tuple[str, bytes]]:
    """Telemetry in the contract's envelope, ~170 bytes each, spread over sources, areas and stations."""
    base = 1_764_000_000
    events = []
    for index in range(count):
        source = SOURCES[index % len(SOURCES)]
        seconds, micros = divmod(index, 1_000_000)
        body = {
            "id": f"{run}-{index}",
            "source": source,
            "type": "telemetry",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + seconds)) + f".{micros:06d}+00:00",
            "metric": METRICS[index % len(METRICS)],
            "value": (index * 7919) % 500 / 3,
            "area": AREAS[index % len(AREAS)],
            "tags": {"station": f"ST-{index % 300:03d}"},
        }
        events.append((f"ioc/v1/events/{source}", orjson.dumps(body)))
    return events


def session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 65535
    return properties


def open_session(port: int, client_id: str) -> None:
    """Create the persistent session (subscription) that the broker will queue for."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port, clean_start=False, properties=session_properties())
    client.loop_start()
    client.subscribe("ioc/v1/events/+", qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def preload(port: int, client_id: str, events: list[tuple[str, bytes]], qos: int, workdir: Path) -> float:
    """Queue `events` for the session; return the publishing rate (events/s)."""
    open_session(port, client_id)
    started = time.perf_counter()
    if qos == 0:
        # mosquitto_pub -l is the fastest QoS 0 publisher; one process per topic, in parallel.
        processes = []
        for source in SOURCES:
            path = workdir / f"{source}.ndjson"
            path.write_bytes(b"\n".join(p for t, p in events if t.endswith("/" + source)) + b"\n")
            processes.append(subprocess.Popen(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", f"ioc/v1/events/{source}",
                 "-q", "0", "-l"], stdin=path.open("rb")))
        for process in processes:
            process.wait()
    else:
        publish_all("127.0.0.1", port, events, qos=1, window=2000, timeout=300)
    elapsed = time.perf_counter() - started
    time.sleep(1.0)  # let the broker finish queueing what is still in its socket buffers
    return len(events) / elapsed


def drain_baseline(port: int, client_id: str, count: int) -> float:
    """(a) bare paho + orjson.loads; events/s from connect to the last message."""
    received = [0]
    done = threading.Event()
    loads = orjson.loads

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        loads(message.payload)
        received[0] += 1
        if received[0] >= count:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    cpu = start_cpu()
    started = time.perf_counter()
    client.connect("127.0.0.1", port, clean_start=False, properties=session_properties())
    client.loop_start()
    if not done.wait(600):
        raise RuntimeError(f"baseline received only {received[0]} of {count}")
    elapsed = time.perf_counter() - started
    report_cpu(cpu, count)
    client.disconnect()
    client.loop_stop()
    return count / elapsed


SERVER_PIDS: dict[str, int] = {}  # name -> pid of the servers, for their CPU use per phase
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def server_cpu() -> dict[str, float]:
    """CPU seconds each server process used so far (from /proc); PostgreSQL's with its live backends (a
    process per connection: the daemon's connections live as long as the daemon)."""
    used = {}
    for name, pid in SERVER_PIDS.items():
        total = 0.0
        for process in [pid, *(_children(pid) if name == "postgres" else [])]:
            try:
                total += _cpu(process)
            except (OSError, ValueError, IndexError):  # a backend that just exited
                pass
        used[name] = total
    return used


_phase_servers: dict[str, float] = {}


def start_cpu() -> float:
    _phase_servers.clear()
    _phase_servers.update(server_cpu())
    return time.process_time()


def report_cpu(since: float, count: int) -> None:
    """CPU per event of this process and of each server: steadier than wall time on a shared machine,
    and it shows what bounds the rate (on 2 cores, the consumer competes with the broker and InfluxDB)."""
    parts = [f"this process {(time.process_time() - since) / count * 1e6:6.1f}"]  # the clients, in d
    for name, used in server_cpu().items():
        parts.append(f"{name} {(used - _phase_servers.get(name, used)) / count * 1e6:5.1f}")
    print(f"     cpu µs/event: {', '.join(parts)}", flush=True)


def daemon_settings(mqtt_port: int, influx_url: str, database: str, client_id: str, store: Path,
                    http_port: int = 0, store_url: str = "", batch_size: int | None = None) -> Settings:
    influx: dict[str, object] = {"url": influx_url, "database": database}
    if batch_size:
        influx["batch_size"] = batch_size
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{http_port or free_port()}"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "client_id": client_id},
        "influx": influx,
        "store": {"path": str(store), "url": store_url},
        "vendors": [{"name": "bench", "token_sha256": token_sha256(TOKEN), "sources": SOURCES,
                     "rate": 10_000_000}],
    })


def written(daemon: Daemon) -> float:
    total = 0.0
    for sink in daemon.sinks:
        for family in sink.metrics()():
            if family.name == "ioc_sink_points":
                total += sum(s.value for s in family.samples if s.labels.get("outcome") == "written")
    return total


def drain_daemon(settings: Settings, count: int) -> float:
    """(b)/(c) the daemon's full path; events/s from connect until InfluxDB has every point."""
    daemon = Daemon(settings)
    tune_gc()  # as `ioc run` does
    # As `Daemon.run`: with PostgreSQL the node takes the lease first (a follower would record no alert).
    daemon.cluster.start()
    daemon.leadership.hot = True
    for sink in daemon.sinks:
        sink.start()
    # The aggregators and rules run as in `ioc run`: an acknowledgement waits for the evaluation too.
    daemon.evaluator.start()
    cpu = start_cpu()
    started = time.perf_counter()
    assert daemon.mqtt is not None
    daemon.mqtt.start()
    deadline = time.monotonic() + 900
    while written(daemon) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon wrote only {written(daemon)} of {count}")
        time.sleep(0.1)  # a scrape takes the sink's lock: polling harder would slow what it measures
    elapsed = time.perf_counter() - started
    report_cpu(cpu, count)
    accepted = sum(daemon.pipeline.accepted.values())
    daemon.mqtt.pause_intake()
    daemon._close()  # the same shutdown `ioc run` performs
    if accepted != count:
        raise RuntimeError(f"daemon accepted {accepted} of {count}")
    return count / elapsed


def left_in_queue(port: int, client_id: str, wait: float = 2.0) -> int:
    """How many messages the broker still holds for the session (0 if every one was acknowledged)."""
    received = [0]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = lambda *_: received.__setitem__(0, received[0] + 1)
    client.connect("127.0.0.1", port, clean_start=False, properties=session_properties())
    client.loop_start()
    time.sleep(wait)
    client.disconnect()
    client.loop_stop()
    return received[0]


def http_ingest(mqtt_port: int, influx_url: str, workdir: Path, count: int, database: str, run: str,
                store_url: str = "", batch_size: int | None = None) -> float:
    """(d) NDJSON over HTTP to `ioc run`, 2 client threads, 5000 events a request."""
    http_port = free_port()
    config = workdir / "http.toml"
    config.write_text(f"""
[http]
listen = "127.0.0.1:{http_port}"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "bench-http-{run}"  # a fresh session: an old one would hold the MQTT phases' events
[influx]
url = "{influx_url}"
database = "{database}"
{f"batch_size = {batch_size}" if batch_size else ""}
[store]
path = "{workdir / f'http-{run}.db'}"
url = "{store_url}"
[log]
level = "warning"
format = "json"
[[vendors]]
name = "bench"
token_sha256 = "{token_sha256(TOKEN)}"
sources = {json.dumps(SOURCES)}
rate = 10000000
""")
    process = subprocess.Popen([sys.executable, "-m", "ioc.cli", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=(workdir / "http.log").open("wb"))
    try:
        wait_for_http(f"http://127.0.0.1:{http_port}/readyz")
        events = make_events(count, f"http-{run}")
        bodies = [b"\n".join(p for _, p in events[i:i + 5000]) for i in range(0, count, 5000)]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
        accepted = [0]
        lock = threading.Lock()

        def client(chunk: list[bytes]) -> None:
            with httpx.Client(timeout=60) as session:
                for body in chunk:
                    response = session.post(f"http://127.0.0.1:{http_port}/api/v1/events", content=body,
                                            headers=headers)
                    response.raise_for_status()
                    with lock:
                        accepted[0] += response.json()["accepted"]

        SERVER_PIDS["ioc run"] = process.pid  # its CPU per event, beside the servers'
        cpu = start_cpu()
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(bodies[i::2],)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        report_cpu(cpu, count)
        SERVER_PIDS.pop("ioc run", None)
        if accepted[0] != count:
            raise RuntimeError(f"HTTP accepted {accepted[0]} of {count}")
        return count / elapsed
    finally:
        process.terminate()
        process.wait(60)


def phase_name(phase: str, store: str, stores: list[str]) -> str:
    """A daemon phase's row: its plain name with SQLite alone (as before `--store`), else with the store."""
    return PHASES[phase] if stores == ["sqlite"] else f"{PHASES[phase]} [{store}]"


class Stores:
    """Where each daemon run keeps its shared state: the SQLite file beside its node-local store, or a
    fresh database of one PostgreSQL server (started on first use)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.postgres: Postgres | None = None

    def url(self, store: str) -> str:
        if store == "sqlite":
            return ""  # `[store] path`'s file
        if self.postgres is None:
            self.postgres = start_postgres()
            pidfile = self.postgres.datadir / "postmaster.pid"
            SERVER_PIDS["postgres"] = int(pidfile.read_text().split()[0])
        return self.postgres.new_database("bench")

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["qos0", "qos1", "http"], action="append")
    parser.add_argument("--batch-size", type=int, help="the daemon's [influx] batch_size (default: its own)")
    parser.add_argument("--store", choices=[*STORES, "both"], action="append",
                        help="the daemon's shared store (repeatable; default sqlite)")
    args = parser.parse_args()
    only = set(args.only or ["qos0", "qos1", "http"])
    chosen = set(args.store or ["sqlite"])
    stores = [store for store in STORES if store in chosen or "both" in chosen]
    count = args.events
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name:<50} {value:>10,.0f} events/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="ioc-bench-") as temp:
        workdir = Path(temp)
        # The bench broker queues QoS 0 for offline sessions, so QoS 0 can be preloaded like QoS 1.
        # No persistence: saving a queue of 200k messages every second would load the CPU under test.
        broker = start_mosquitto(workdir / "mosquitto", queue_qos0=True, persistence=False)
        influx = start_influxdb(workdir / "influxdb")
        backends = Stores(workdir)
        SERVER_PIDS.update({"mosquitto": broker.process.pid, "influxd": influx.process.pid})
        try:
            for round_ in range(1, args.rounds + 1):
                print(f"round {round_}: {count:,} events", flush=True)
                events = make_events(count, f"r{round_}")
                order = stores if round_ % 2 else stores[::-1]  # neither store always runs first
                if "qos0" in only:
                    preload(broker.port, f"base0-{round_}", events, 0, workdir)
                    record("a  baseline paho+orjson, QoS 0", drain_baseline(broker.port, f"base0-{round_}", count))
                    for store in order:
                        client = f"ioc0-{store}-{round_}"
                        preload(broker.port, client, events, 0, workdir)
                        settings = daemon_settings(broker.port, influx.url, f"bench0_{store}_{round_}", client,
                                                   workdir / f"{client}.db", store_url=backends.url(store),
                                                   batch_size=args.batch_size)
                        record(phase_name("b", store, stores), drain_daemon(settings, count))
                if "qos1" in only:
                    for store in order:
                        client = f"ioc1-{store}-{round_}"
                        record(f"   one paho publisher, QoS 1 [{store}]" if len(stores) > 1
                               else "   one paho publisher, QoS 1", preload(broker.port, client, events, 1, workdir))
                        settings = daemon_settings(broker.port, influx.url, f"bench1_{store}_{round_}", client,
                                                   workdir / f"{client}.db", store_url=backends.url(store),
                                                   batch_size=args.batch_size)
                        record(phase_name("c", store, stores), drain_daemon(settings, count))
                        left = left_in_queue(broker.port, client)
                        if left:
                            raise RuntimeError(f"{left} QoS 1 messages were never acknowledged")
                if "http" in only:
                    for store in order:
                        record(phase_name("d", store, stores), http_ingest(
                            broker.port, influx.url, workdir, count, f"benchh_{store}_{round_}",
                            f"{store}-r{round_}", store_url=backends.url(store),
                            batch_size=args.batch_size))
        finally:
            backends.close()
            influx.stop()
            broker.stop()

    def best(name: str) -> float:
        return max(results[name]) if name in results else float("nan")

    print("\nsummary (best of rounds; ratios within this run)")
    for name, values in results.items():
        print(f"  {name:<50} best {max(values):>10,.0f}  median {statistics.median(values):>10,.0f}")
    summary: dict[str, float] = {name: best(name) for name in results}
    main_store = stores[0]  # SQLite when it was measured: the issues' targets are about it
    b, c, d = (phase_name(phase, main_store, stores) for phase in "bcd")
    if "qos0" in only:
        ratios = [b_ / a for a, b_ in zip(results["a  baseline paho+orjson, QoS 0"], results[b], strict=True)]
        summary["ratio_b_over_a_median"] = statistics.median(ratios)
        print(f"  ratio b/a (QoS 0, per round, {main_store}): {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}   target >= 0.80")
    if "qos1" in only and "qos0" in only:
        summary["ratio_c_over_b"] = best(c) / best(b)
        print(f"  ratio c/b (QoS 1 acked vs QoS 0): {summary['ratio_c_over_b']:.2f}   target >= 0.50")
    if "qos1" in only:
        publisher = [name for name in results if name.startswith("   one paho publisher")]
        print(f"  QoS 1 daemon vs one publisher: {best(c) / max(best(name) for name in publisher):.2f}   "
              "target >= 1.0")
    if "http" in only:
        print(f"  HTTP NDJSON: {best(d):,.0f} events/s   target >= 30,000")
    if len(stores) > 1:
        for phase in sorted({"qos0": "b", "qos1": "c", "http": "d"}[name] for name in only):
            sqlite, postgres = (results[phase_name(phase, store, stores)] for store in STORES)
            per_round = [p / s for s, p in zip(sqlite, postgres, strict=True)]
            summary[f"ratio_{phase}_postgresql_over_sqlite"] = statistics.median(per_round)
            print(f"  {phase}: PostgreSQL / SQLite per round {', '.join(f'{r:.2f}' for r in per_round)}; "
                  f"median {statistics.median(per_round):.2f}   target (issue 11) >= 0.80")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"events": count, "rounds": args.rounds, "stores": stores,
                                                 "results": results, "summary": summary,
                                                 "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
