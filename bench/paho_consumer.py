"""The live baseline: a minimal honest consumer, bare paho-mqtt + orjson -> batched InfluxDB 1.x /write.

    python bench/paho_consumer.py --port P --influx URL --database DB [--batch 1000] [--flush 1.0]

Subscribes to `ioc/v1/events/+` at QoS 1 with manual acknowledgement (paho 2's `manual_ack`), turns each
event into one line of the schema of CONTRACT §4 (measurement = metric; tags source, area and the
event's tags, escaped; field `value`; the event time in ns), batches 1000 lines or 1 s (the daemon's
defaults), POSTs each batch to `/write` from a writer thread and acknowledges a batch's messages only
after InfluxDB answered 204: what the daemon promises at QoS 1, with none of its validation, dedup,
dead letters, spool, rules or API. Prints `ready` once subscribed; runs until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import threading
import time
import urllib.parse
from datetime import datetime

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def to_line(payload: bytes) -> str:
    event = orjson.loads(payload)
    tags = [f"source={event['source'].translate(_TAG_ESCAPES)}"]
    if "area" in event:
        tags.append(f"area={event['area'].translate(_TAG_ESCAPES)}")
    for key, value in sorted((event.get("tags") or {}).items()):
        tags.append(f"{key.translate(_TAG_ESCAPES)}={value.translate(_TAG_ESCAPES)}")
    delta = datetime.fromisoformat(event["time"]) - _EPOCH
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    measurement = event["metric"].translate(_TAG_ESCAPES)
    return f"{measurement},{','.join(tags)} value={float(event['value'])!r} {nanos}"


class Writer(threading.Thread):
    """Takes (line, mid) pairs, writes them in batches and acknowledges each batch once written."""

    def __init__(self, client: mqtt.Client, url: str, database: str, batch: int, flush: float) -> None:
        super().__init__(daemon=True, name="writer")
        self.client = client
        parsed = urllib.parse.urlsplit(url)
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        self.path = f"/write?db={urllib.parse.quote(database)}&precision=ns"
        self.batch, self.flush = batch, flush
        self.lines: list[str] = []
        self.mids: list[int] = []
        self.ready = threading.Condition()

    def add(self, line: str, mid: int) -> None:
        with self.ready:
            self.lines.append(line)
            self.mids.append(mid)
            if len(self.lines) >= self.batch:
                self.ready.notify()

    def run(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: len(self.lines) >= self.batch, timeout=self.flush)
                lines, mids = self.lines[:self.batch], self.mids[:self.batch]
                del self.lines[:self.batch], self.mids[:self.batch]
            if not lines:
                continue
            body = ("\n".join(lines)).encode()
            while True:
                try:
                    self.connection.request("POST", self.path, body)
                    response = self.connection.getresponse()
                    response.read()
                    if response.status == 204:
                        break
                    print(f"write answered {response.status}", file=sys.stderr, flush=True)
                except OSError as error:
                    print(f"write failed: {error}", file=sys.stderr, flush=True)
                    self.connection.close()
                time.sleep(0.5)
            for mid in mids:
                self.client.ack(mid, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--influx", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--flush", type=float, default=1.0)
    args = parser.parse_args()

    influx = urllib.parse.urlsplit(args.influx)
    setup = http.client.HTTPConnection(influx.hostname, influx.port, timeout=30)
    setup.request("POST", "/query?" + urllib.parse.urlencode({"q": f'CREATE DATABASE "{args.database}"'}))
    setup.getresponse().read()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    writer = Writer(client, args.influx, args.database, args.batch, args.flush)
    add = writer.add

    def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        add(to_line(message.payload), message.mid)

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = 65535  # as the daemon asks: the broker may send this many unacked
    client.connect("127.0.0.1", args.port, properties=properties)
    client.subscribe("ioc/v1/events/+", qos=1)
    writer.start()
    client.loop_start()
    if not subscribed.wait(30):
        raise SystemExit("paho_consumer: no SUBACK")
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
