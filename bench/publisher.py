"""One vendor's publisher for the live benchmarks: a process of its own, so it competes for the CPU as a
vendor's client on the same box would, and never shares a GIL with the consumer or the harness.

    python bench/publisher.py --port P --topic ioc/v1/events/SRC --payloads FILE [--qos 1] [--rate N]
                              [--times OUT] [--client paho|raw]

Reads one payload a line from FILE, connects, prints `ready`, waits for a line on stdin (the harness
starts every publisher at once), publishes every payload to the topic and, at QoS 1, waits for every
PUBACK, keeping its own window of unacknowledged publishes (paho's in-flight limit rescans its table
on every ack: NOTES.md). `--rate` paces it (messages/s). `--times` writes the wall-clock time
(`time.time()`) of each publish as float64, for latency_bench. Prints one JSON line at the end.

`--client paho` (the default) is a vendor's ordinary Python client: about 45 µs of CPU a message at QoS 1,
as much as the consumer under test spends, so on a 2-core box the publishers take a third of the machine.
`--client raw` is a load generator: every PUBLISH packet (MQTT 3.1.1) is encoded before the start and
written to the socket in runs, PUBACKs are counted as they come back, with the same window, pacing and
`--times`; a few µs a message. Vendors publish from their own machines; `raw` leaves the box to the
broker, InfluxDB and the consumer, so the benchmark measures the consumer.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
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
    parser.add_argument("--client", choices=["paho", "raw"], default="paho")
    args = parser.parse_args()
    payloads = args.payloads.read_bytes().splitlines()
    if args.client == "raw":
        publish_raw(args, payloads)
        return

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


def _remaining_length(size: int) -> bytes:
    out = bytearray()
    while True:
        size, digit = divmod(size, 128)
        out.append(digit | (0x80 if size else 0))
        if not size:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _remaining_length(len(body)) + body


def _string(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


def encode_publishes(topic: str, payloads: list[bytes], qos: int) -> list[bytes]:
    """One PUBLISH packet per payload; at QoS 1 packet ids 1..65535 in turn (the window is smaller)."""
    name = _string(topic.encode())
    if not qos:
        return [_packet(0x30, name + payload) for payload in payloads]
    return [_packet(0x32, name + struct.pack("!H", number % 65535 + 1) + payload)
            for number, payload in enumerate(payloads)]


def publish_raw(args: argparse.Namespace, payloads: list[bytes]) -> None:
    """`--client raw`: the packets encoded up front, written in runs of up to RUN, PUBACKs counted."""
    if args.window >= 65535:
        raise SystemExit("publisher: --window must stay under 65535 (packet ids would repeat)")
    packets = encode_publishes(args.topic, payloads, args.qos)
    sock = socket.create_connection(("127.0.0.1", args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"bench-raw-{time.monotonic_ns()}".encode()
    # CONNECT: "MQTT" level 4, clean session, keep alive 0 (off: no PINGREQ, so only PUBACKs come back)
    sock.sendall(_packet(0x10, _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)))
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        raise SystemExit(f"publisher: CONNACK refused: {connack!r}")
    print("ready", flush=True)
    sys.stdin.readline()

    total, qos, rate, window = len(packets), args.qos, args.rate, args.window
    run = 64
    times = array("d")
    stamp, now = time.time, time.monotonic
    sent = acked = 0
    pending = b""  # the start of a PUBACK cut by a read
    first = stamp()
    started = now()
    while sent < total or (qos and acked < total):
        room = total - sent
        if qos:
            room = min(room, window - (sent - acked))
        wait = 1.0
        if rate and room > 0:
            due = int((now() - started) * rate) + 1 - sent
            if due <= 0:
                wait = (sent + 1) / rate - (now() - started)
            room = min(room, max(due, 0))
        if room > 0:
            count = min(room, run)
            if args.times is not None:
                times.extend([stamp()] * count)
            sock.sendall(b"".join(packets[sent:sent + count]))
            sent += count
            wait = 0.0
        if not qos:
            if room <= 0 and sent < total:
                time.sleep(max(wait, 0.0))
            continue
        readable, _, _ = select.select([sock], [], [], max(wait, 0.0))
        if readable:
            data = pending + sock.recv(262144)
            if not data:
                raise SystemExit("publisher: the broker closed the connection")
            whole = len(data) - len(data) % 4
            if data[0:whole:4].count(0x40) != whole // 4:
                raise SystemExit(f"publisher: a packet other than PUBACK came back: {data[:16]!r}")
            acked += whole // 4
            pending = data[whole:]
    finished = stamp()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    if args.times is not None:
        args.times.write_bytes(times.tobytes())
    print(json.dumps({"sent": total, "first": first, "finished": finished,
                      "rate": total / max(finished - first, 1e-9)}), flush=True)


if __name__ == "__main__":
    main()
