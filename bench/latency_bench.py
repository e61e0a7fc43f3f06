"""Alert latency (issue 10): event published -> alert seen on SSE and on MQTT, at a steady event rate.

    python bench/latency_bench.py --rate 5000 --seconds 60     # the issue's figure (target p99 <= 50 ms)
    python bench/latency_bench.py --rate 5000 --seconds 10     # a smoke run
    python bench/latency_bench.py --rate 5000 --seconds 60 --batch-size 5000   # the sink's old batches
    python bench/latency_bench.py --rate 5000 --seconds 60 --gc --dump /tmp/lat.json   # where the tail comes from

Method. `ioc run` (the shipped rule packs plus `latency_rules.yaml`: `bench-latency`, a threshold rule
with no `for`, grouped by station) against the tests' Mosquitto and InfluxDB 1.6. Four publisher
processes (`publisher.py`, one per source, QoS 1) send telemetry at `--rate` events/s in all (each paced
at a quarter). In the `qtmt-aqi` stream one event in `--every` is a trigger: metric `bench.trigger` for
one of `--stations` stations, its value alternating 150 / 50 per station, so each trigger fires or
resolves that station's alert: one alert change per trigger (12.5 a second at the defaults). The
publisher records the wall-clock time of each publish (`time.time()`); this process listens on
`/api/v1/stream` (SSE) and on `ioc/v1/alerts/bench-latency` (MQTT, QoS 1) and stamps each alert change
when it is parsed. The n-th change of a station in a state is matched with the n-th trigger of that
station for that state; latency = seen - published (one clock: same machine). Triggers of the first
`--warmup` seconds are left out (connections, caches, the first flush). Prints p50 / p90 / p99 / max
per channel, and how many changes were missing, then the slowest triggers with their time into the run
(stalls that come back every 1 s, 5 s or 30 s show as such). `--gc` logs every garbage collection of `ioc
run` (a `sitecustomize` on its PYTHONPATH: generation, pause) and prints those made while publishing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import defaultdict, deque
from collections.abc import Iterator
from pathlib import Path

import httpx
import livekit  # before `tests.*` (first-party, sorted last): it puts the checkout on sys.path
import orjson
import paho.mqtt.client as mqtt
from livekit import SOURCES, percentile

from tests.servers import start_influxdb, start_mosquitto

HERE = Path(__file__).resolve().parent
# Loaded by `ioc run` (and only by it: the variable names the log) when `--gc` puts its folder first on the
# PYTHONPATH: one line per collection, "unix-time generation pause-seconds collected".
_GC_PROBE = """
import gc, os, time
_log = os.environ.get("IOC_BENCH_GC_LOG")
if _log:
    _out, _start = open(_log, "a", buffering=1), [0.0]
    def _probe(phase, info):
        if phase == "start":
            _start[0] = time.perf_counter()
        else:
            took = time.perf_counter() - _start[0]
            _out.write(f"{time.time():.4f} {info['generation']} {took:.6f} {info['collected']}\\n")
    gc.callbacks.append(_probe)
"""
RULE = "bench-latency"
TRIGGER_SOURCE = "qtmt-aqi"


def trigger_payload(run: str, number: int, stations: int, time_us: int, area: str) -> tuple[bytes, str, str]:
    """The `number`-th trigger: (payload, station, the state it moves the station's alert to)."""
    station = f"L{number % stations:03d}"
    firing = (number // stations) % 2 == 0  # each station: fire, resolve, fire, ...
    seconds, micros = divmod(time_us, 1_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}+00:00"
    body = {"id": f"{run}-trigger-{number}", "source": TRIGGER_SOURCE, "type": "telemetry", "time": stamp,
            "metric": "bench.trigger", "value": 150.0 if firing else 50.0, "area": area,
            "tags": {"station": station}}
    return orjson.dumps(body), station, "firing" if firing else "resolved"


class Seen:
    """Alert changes of the bench rule as they arrive on one channel: (station, state) -> times."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.ready = threading.Event()

    def add(self, alert: dict[str, object]) -> None:
        stamp = time.time()
        if alert.get("rule") != RULE:
            return
        labels = alert.get("labels") or {}
        assert isinstance(labels, dict)
        with self.lock:
            self.times[(str(labels.get("station")), str(alert.get("state")))].append(stamp)


def listen_sse(api: str, seen: Seen, stop: threading.Event) -> None:
    """Read `/api/v1/stream` until `stop`; every `alert` event's data goes to `seen`."""
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client, \
            client.stream("GET", f"{api}/api/v1/stream") as response:
        response.raise_for_status()
        seen.ready.set()
        event = ""
        for line in lines(response, stop):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "alert":
                seen.add(orjson.loads(line[5:]))
            elif not line:
                event = ""


def lines(response: httpx.Response, stop: threading.Event) -> Iterator[str]:
    """The stream's lines until `stop` (the daemon closing the stream then is the end, not an error)."""
    try:
        for line in response.iter_lines():
            if stop.is_set():
                return
            yield line
    except httpx.HTTPError:
        if not stop.is_set():
            raise


def listen_mqtt(port: int, seen: Seen) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = lambda _c, _u, message: seen.add(orjson.loads(message.payload))
    client.on_subscribe = lambda *_: seen.ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe(f"ioc/v1/alerts/{RULE}", qos=1)
    client.loop_start()
    return client


def latencies(triggers: list[tuple[float, str, str]], seen: Seen, after: float) -> tuple[list[float], int]:
    """Match the n-th trigger of (station, state) with the n-th change seen; the latencies (s) of the
    triggers published after `after`, and how many of those were never seen."""
    queues: dict[tuple[str, str], deque[float]] = {key: deque(times) for key, times in seen.times.items()}
    found, missing = [], 0
    for published, station, state in triggers:
        queue = queues.get((station, state))
        seen_at = queue.popleft() if queue else None
        if published < after:
            continue
        if seen_at is None:
            missing += 1
        else:
            found.append(seen_at - published)
    return found, missing


def by_fifths(triggers: list[tuple[float, str, str]], sse: Seen, over_mqtt: Seen,
              after: float) -> list[tuple[list[float], list[float]]]:
    """Latencies of each fifth of the run (a backlog that grows shows as rising figures)."""
    kept = [trigger for trigger in triggers if trigger[0] >= after]
    size = max(1, len(kept) // 5)
    out = []
    for start in range(0, len(kept), size):
        part = kept[start:start + size]
        earliest = part[0][0]
        out.append((latencies(triggers, sse, earliest)[0][:len(part)],
                    latencies(triggers, over_mqtt, earliest)[0][:len(part)]))
    return out[:5]


def install_gc_probe(workdir: Path) -> Path:
    """`--gc`: the probe as a `sitecustomize` on `ioc run`'s PYTHONPATH (the snapshot's folder with
    `--commit`, else one of its own); returns the log it writes."""
    folder = Path(livekit.IOC_ENV.get("PYTHONPATH") or workdir / "gc-probe")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_GC_PROBE)
    livekit.IOC_ENV.setdefault("PYTHONPATH", str(folder))
    log = workdir / "gc.log"
    os.environ["IOC_BENCH_GC_LOG"] = str(log)  # `ioc run` inherits it; this process has no probe
    return log


def report_gc(log: Path, start: float, end: float) -> None:
    """The collections `ioc run` made between `start` and `end` (Unix time): count, total and longest
    pause per generation, and the pauses over 5 ms with their time into the run."""
    rows = []
    for line in log.read_text().splitlines():
        stamp, generation, took, _ = line.split()
        if start <= float(stamp) <= end:
            rows.append((float(stamp) - start, int(generation), float(took) * 1000))
    parts = []
    for generation in (0, 1, 2):
        pauses = [took for _, g, took in rows if g == generation]
        if pauses:
            parts.append(f"gen{generation} {len(pauses)}x, {sum(pauses):.0f} ms in all, longest {max(pauses):.1f} ms")
    print(f"  GC of ioc run while publishing: {'; '.join(parts) or 'none'}")
    long = [f"{at:.1f}s gen{g} {took:.0f}ms" for at, g, took in rows if took > 5]
    if long:
        print(f"    pauses > 5 ms: {', '.join(long[:20])}{' ...' if len(long) > 20 else ''}")


def slowest(triggers: list[tuple[float, str, str]], seen: Seen, first: float, after: float,
            count: int = 8) -> str:
    """The `count` slowest triggers as `time into the run: latency`, in time order."""
    queues: dict[tuple[str, str], deque[float]] = {key: deque(times) for key, times in seen.times.items()}
    found = []
    for published, station, state in triggers:
        queue = queues.get((station, state))
        seen_at = queue.popleft() if queue else None
        if seen_at is not None and published >= after:
            found.append((seen_at - published, published - first))
    worst = sorted(sorted(found, reverse=True)[:count], key=lambda item: item[1])
    return ", ".join(f"{at:.1f}s {latency * 1000:.0f}ms" for latency, at in worst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s, all publishers together")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=100, help="one trigger in this many qtmt-aqi events")
    parser.add_argument("--stations", type=int, default=25)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--profile", type=Path,
                        help="py-spy raw stacks (wall clock, every thread) of `ioc run` while publishing")
    parser.add_argument("--dump", type=Path, help="write each trigger's publish time and latencies (JSON)")
    parser.add_argument("--commit", help="run `ioc run` from this commit (git archive), not the working tree")
    parser.add_argument("--batch-size", type=int,
                        help="the sink's [influx] batch_size (default: the daemon's); how it shapes the tail")
    parser.add_argument("--gc", action="store_true", help="log `ioc run`'s garbage collections and print them")
    args = parser.parse_args()
    livekit.exit_on_sigterm()
    per_source = int(args.rate * args.seconds / len(SOURCES))
    step_us = int(1_000_000 * len(SOURCES) / args.rate)  # each publisher's pace, also its events' spacing

    with tempfile.TemporaryDirectory(prefix="ioc-latency-") as temp:
        workdir = Path(temp)
        measured = livekit.use_commit(args.commit, workdir)
        gc_log = install_gc_probe(workdir) if args.gc else None
        areas = livekit.commune_codes()
        broker = start_mosquitto(workdir / "mosquitto", persistence=False)
        influx = start_influxdb(workdir / "influxdb")
        daemon = None
        stop = threading.Event()
        try:
            config, http_port = livekit.ioc_config(
                workdir, mqtt_port=broker.port, influx_url=influx.url, database="latency",
                client_id="ioc-latency",
                store=workdir / "ioc.db", rules=[str(HERE / "latency_rules.yaml")], batch_size=args.batch_size)
            daemon = livekit.start_ioc(config, http_port, workdir / "ioc.log")
            sse, over_mqtt = Seen(), Seen()
            threading.Thread(target=listen_sse, args=(daemon.api, sse, stop), daemon=True).start()
            subscriber = listen_mqtt(broker.port, over_mqtt)
            if not (sse.ready.wait(30) and over_mqtt.ready.wait(30)):
                raise RuntimeError("the SSE stream or the MQTT subscription did not start")

            run = f"lat{os.getpid()}"
            base_s = int(time.time()) + 5  # the events' times follow the pace from about when it starts
            triggers_at: dict[int, tuple[str, str]] = {}  # index in the qtmt-aqi stream -> station, state
            files = {}
            for number, source in enumerate(SOURCES):
                payloads = livekit.make_payloads(source, per_source, run, base_s, areas,
                                                 offset=number * per_source, step_us=step_us)
                if source == TRIGGER_SOURCE:
                    for count, index in enumerate(range(args.every - 1, per_source, args.every)):
                        time_us = base_s * 1_000_000 + (number * per_source + index) * step_us
                        payloads[index], station, state = trigger_payload(run, count, args.stations, time_us,
                                                                                 areas[0])
                        triggers_at[index] = (station, state)
                files[source] = workdir / f"{source}.ndjson"
                files[source].write_bytes(b"\n".join(payloads) + b"\n")
            times_path = workdir / "publish-times.f64"
            publishers = {source: subprocess.Popen(
                [sys.executable, str(HERE / "publisher.py"), "--port", str(broker.port),
                 "--topic", f"ioc/v1/events/{source}", "--payloads", str(path), "--qos", "1",
                 "--rate", str(args.rate / len(SOURCES)),
                 *(["--times", str(times_path)] if source == TRIGGER_SOURCE else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for source, path in files.items()}
            for publisher in publishers.values():
                assert publisher.stdout is not None
                if publisher.stdout.readline().strip() != b"ready":
                    raise RuntimeError("a publisher did not connect")
            print(f"ioc: {measured}; {args.rate:,.0f} ev/s for {args.seconds:g} s from {len(SOURCES)} "
                  f"publishers (QoS 1), {len(triggers_at)} triggers over {args.stations} stations",
                  flush=True)
            spy = None
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(daemon.process.pid), "--idle",
                                        "--threads", "--nonblocking", "--rate", "100", "--format", "raw",
                                        "--output",
                                        str(args.profile / "latency.txt")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
            cpu_before = livekit.cpu_seconds(daemon.process.pid)
            started = time.monotonic()
            for publisher in publishers.values():
                assert publisher.stdin is not None
                publisher.stdin.write(b"go\n")
                publisher.stdin.flush()
            rates = []
            for publisher in publishers.values():
                out, _ = publisher.communicate(timeout=args.seconds * 10 + 300)
                if publisher.returncode != 0:
                    raise RuntimeError(f"a publisher failed ({publisher.returncode})")
                rates.append(orjson.loads(out.decode().splitlines()[-1])["rate"])
            elapsed = time.monotonic() - started
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples on an interrupt
                spy.wait(60)
            cores = (livekit.cpu_seconds(daemon.process.pid) - cpu_before) / elapsed
            publish_times = array("d")
            publish_times.frombytes(times_path.read_bytes())
            triggers = [(publish_times[index], station, state)
                        for index, (station, state) in triggers_at.items()]
            first = publish_times[0]
            deadline = time.monotonic() + 30  # the last changes still on their way
            while time.monotonic() < deadline:
                if all(sum(map(len, seen.times.values())) >= len(triggers) for seen in (sse, over_mqtt)):
                    break
                time.sleep(0.2)
            subscriber.disconnect()
            subscriber.loop_stop()
            print(f"published {sum(rates):,.0f} ev/s in all ({', '.join(f'{r:,.0f}' for r in rates)}); "
                  f"ioc run at {cores:.2f} cores", flush=True)
            for name, seen in (("SSE /api/v1/stream", sse), (f"MQTT ioc/v1/alerts/{RULE}", over_mqtt)):
                found, missing = latencies(triggers, seen, first + args.warmup)
                print(f"  {name:<32} n={len(found):>5}  p50 {percentile(found, 50) * 1000:7.1f} ms  "
                      f"p90 {percentile(found, 90) * 1000:7.1f} ms  "
                      f"p99 {percentile(found, 99) * 1000:7.1f} ms  "
                      f"max {max(found, default=float('nan')) * 1000:7.1f} ms  missing {missing}", flush=True)
            print("  target (issue 10): p99 <= 50 ms")
            for name, seen in (("SSE", sse), ("MQTT", over_mqtt)):
                print(f"  slowest {name} (time into the run, latency): "
                      f"{slowest(triggers, seen, first, first + args.warmup)}")
            if gc_log is not None and gc_log.exists():
                report_gc(gc_log, first, max(publish_times))
            if args.dump is not None:
                args.dump.write_bytes(orjson.dumps({
                    "triggers": triggers, "sse": {"/".join(k): v for k, v in sse.times.items()},
                    "mqtt": {"/".join(k): v for k, v in over_mqtt.times.items()}}))
            print("  over the run (p50 of SSE / MQTT by fifths): " + ", ".join(
                f"{percentile(a, 50) * 1000:.0f}/{percentile(b, 50) * 1000:.0f}" for a, b in by_fifths(
                    triggers, sse, over_mqtt, first + args.warmup)) + " ms", flush=True)
        finally:
            stop.set()
            if daemon is not None:
                daemon.stop()
            influx.stop()
            broker.stop()


if __name__ == "__main__":
    main()
