"""One vendor's publisher for the live benchmarks: a process of its own, so it competes for the CPU as a
vendor's client on the same box would, and never shares a GIL with the consumer or the harness.

    python bench/publisher.py --port P --topic ioc/v1/events/SRC --payloads FILE [--qos 1] [--rate N]
                              [--times OUT]

Reads one payload a line from FILE, connects, prints `ready`, waits for a line on stdin (the harness
starts every publisher at once), publishes every payload to the topic and, at QoS 1, waits for every
PUBACK, keeping its own window of unacknowledged publishes (paho's in-flight limit rescans its table
on every ack: NOTES.md). `--rate` paces it (messages/s). `--times` writes the wall-clock time
(`time.time()`) of each publish as float64, for latency_bench. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from array import array
from pathlib import Path

import paho.mqtt.client as mqtt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--qos", type=int, default=1, choices=[0, 1])
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--times", type=Path)
    args = parser.parse_args()
    payloads = args.payloads.read_bytes().splitlines()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    window = threading.Semaphore(args.window)
    acked = [0]
    all_acked = threading.Event()
    total = len(payloads)

    def on_publish(*_: object) -> None:
        window.release()
        acked[0] += 1
        if acked[0] >= total:
            all_acked.set()

    client.on_publish = on_publish
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    if not connected.wait(30):
        raise SystemExit("publisher: no CONNACK")
    print("ready", flush=True)
    sys.stdin.readline()

    times = array("d")
    stamp = time.time
    publish = client.publish
    topic, qos, rate = args.topic, args.qos, args.rate
    started = time.monotonic()
    first = stamp()
    for sent, payload in enumerate(payloads, 1):
        if qos and not window.acquire(timeout=300):
            raise SystemExit("publisher: the broker stopped acknowledging")
        if args.times is not None:
            times.append(stamp())
        publish(topic, payload, qos=qos)
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    if qos and not all_acked.wait(300):
        raise SystemExit(f"publisher: {total - acked[0]} of {total} publishes not acknowledged")
    finished = stamp()
    client.disconnect()
    client.loop_stop()
    if args.times is not None:
        args.times.write_bytes(times.tobytes())
    print(json.dumps({"sent": total, "first": first, "finished": finished,
                      "rate": total / max(finished - first, 1e-9)}), flush=True)


if __name__ == "__main__":
    main()
