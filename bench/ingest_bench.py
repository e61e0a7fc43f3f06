"""Intake benchmark (issue 3): the daemon's MQTT -> validate -> InfluxDB path against a bare paho baseline.

    python bench/ingest_bench.py                 # 200k events, 2 rounds, all measurements
    python bench/ingest_bench.py --events 50000 --rounds 1 --only qos0

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

from ioc.app import Daemon, tune_gc  # noqa: E402
from ioc.areas import AreaRegistry  # noqa: E402
from ioc.config import Settings, token_sha256  # noqa: E402
from tests.mqtt_tools import publish_all  # noqa: E402
from tests.servers import free_port, start_influxdb, start_mosquitto, wait_for_http  # noqa: E402

SOURCES = ["qtmt-aqi", "viettel-ran", "vnpt-ran", "dvc-binhthuan"]
# 120 communes of Lâm Đồng in use from 2025-07-01 (the events are dated 2025-11): codes the intake keeps
# as they are, as a province's live traffic does (a former code would be converted, a divided one refused).
AREAS = [area.code for area in AreaRegistry.default().children("68", date(2026, 1, 1))][:120]
METRICS = ["env.aqi", "env.pm25", "net.rssi", "portal.sessions"]
TOKEN = "bench-vendor-token"


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


def server_cpu() -> dict[str, float]:
    """CPU seconds each server process used so far (from /proc)."""
    used = {}
    for name, pid in SERVER_PIDS.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
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
                    http_port: int = 0) -> Settings:
    return Settings.model_validate({
        "http": {"listen": f"127.0.0.1:{http_port or free_port()}"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "client_id": client_id},
        "influx": {"url": influx_url, "database": database},
        "store": {"path": str(store)},
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


def http_ingest(mqtt_port: int, influx_url: str, workdir: Path, count: int, database: str, run: str) -> float:
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
[store]
path = "{workdir / f'http-{run}.db'}"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["qos0", "qos1", "http"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["qos0", "qos1", "http"])
    count = args.events
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)
        print(f"  {name:<34} {value:>10,.0f} events/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="ioc-bench-") as temp:
        workdir = Path(temp)
        # The bench broker queues QoS 0 for offline sessions, so QoS 0 can be preloaded like QoS 1.
        # No persistence: saving a queue of 200k messages every second would load the CPU under test.
        broker = start_mosquitto(workdir / "mosquitto", queue_qos0=True, persistence=False)
        influx = start_influxdb(workdir / "influxdb")
        SERVER_PIDS.update({"mosquitto": broker.process.pid, "influxd": influx.process.pid})
        try:
            for round_ in range(1, args.rounds + 1):
                print(f"round {round_}: {count:,} events", flush=True)
                events = make_events(count, f"r{round_}")
                if "qos0" in only:
                    preload(broker.port, f"base0-{round_}", events, 0, workdir)
                    record("a  baseline paho+orjson, QoS 0", drain_baseline(broker.port, f"base0-{round_}", count))
                    preload(broker.port, f"ioc0-{round_}", events, 0, workdir)
                    settings = daemon_settings(broker.port, influx.url, f"bench0_{round_}", f"ioc0-{round_}",
                                               workdir / f"ioc0-{round_}.db")
                    record("b  daemon MQTT->InfluxDB, QoS 0", drain_daemon(settings, count))
                if "qos1" in only:
                    record("   one paho publisher, QoS 1",
                           preload(broker.port, f"ioc1-{round_}", events, 1, workdir))
                    settings = daemon_settings(broker.port, influx.url, f"bench1_{round_}", f"ioc1-{round_}",
                                               workdir / f"ioc1-{round_}.db")
                    record("c  daemon MQTT->InfluxDB, QoS 1 acked", drain_daemon(settings, count))
                    left = left_in_queue(broker.port, f"ioc1-{round_}")
                    if left:
                        raise RuntimeError(f"{left} QoS 1 messages were never acknowledged")
                if "http" in only:
                    record("d  daemon HTTP NDJSON->InfluxDB", http_ingest(broker.port, influx.url, workdir,
                                                                         count, f"benchh_{round_}", f"r{round_}"))
        finally:
            influx.stop()
            broker.stop()

    def best(name: str) -> float:
        return max(results[name]) if name in results else float("nan")

    print("\nsummary (best of rounds; ratios within this run)")
    for name, values in results.items():
        print(f"  {name:<34} best {max(values):>10,.0f}  median {statistics.median(values):>10,.0f}")
    summary: dict[str, float] = {name: best(name) for name in results}
    if "qos0" in only:
        ratios = [b / a for a, b in zip(results["a  baseline paho+orjson, QoS 0"],
                                        results["b  daemon MQTT->InfluxDB, QoS 0"], strict=True)]
        summary["ratio_b_over_a_median"] = statistics.median(ratios)
        print(f"  ratio b/a (QoS 0, per round): {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}   target >= 0.80")
    if "qos1" in only and "qos0" in only:
        summary["ratio_c_over_b"] = best("c  daemon MQTT->InfluxDB, QoS 1 acked") / best(
            "b  daemon MQTT->InfluxDB, QoS 0")
        print(f"  ratio c/b (QoS 1 acked vs QoS 0): {summary['ratio_c_over_b']:.2f}   target >= 0.50")
    if "qos1" in only:
        print(f"  QoS 1 daemon vs one publisher: {best('c  daemon MQTT->InfluxDB, QoS 1 acked') / best('   one paho publisher, QoS 1'):.2f}   target >= 1.0")
    if "http" in only:
        print(f"  HTTP NDJSON: {best('d  daemon HTTP NDJSON->InfluxDB'):,.0f} events/s   target >= 30,000")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"events": count, "rounds": args.rounds, "results": results,
                                                 "summary": summary, "cpus": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
