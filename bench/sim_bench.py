"""Simulator benchmark (issue 5): how many events a second `ioc sim run` sends to a local Mosquitto.

    python bench/sim_bench.py                       # 200k events of province-day, QoS 0 and QoS 1
    python bench/sim_bench.py --events 50000 --scenario smoke

Method: a Mosquitto of its own (tests.servers.start_mosquitto, free port), a `mosquitto_sub` subscriber
(C, so it keeps up) that exits after receiving every event, and one simulator in this process: the
scenario's generation, JSON rendering and the MQTT publisher, exactly what `ioc sim run --speed 0`
does. The play is made to produce `--events` events by `--rate` (events per simulated second) and a
duration of events / rate, from a fixed start in office hours. Printed: the publisher's rate (until the
broker acknowledged everything) and the subscriber's (until it received everything), per QoS.
Figures swing with other load on a shared 2-core machine: compare within one run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ioc.simulators.play import Player, events, plan
from ioc.simulators.publish import MqttPublisher
from ioc.simulators.scenario import load_scenario, resolve

from tests.servers import find_binary, start_mosquitto

START = datetime.fromisoformat("2026-03-02T09:00:00+07:00")  # a Monday morning: every subsystem is busy


def measure(port: int, scenario: str, count: int, rate: float, qos: int) -> tuple[int, float, int, float]:
    """(sent, publisher events/s, received, subscriber events/s)."""
    loaded = load_scenario(resolve(scenario))
    how = plan(loaded, start=START, duration=count / rate, speed=0, rate=rate)
    expected = sum(1 for _ in events(loaded, how))
    subscriber = subprocess.Popen([find_binary("mosquitto_sub", "mosquitto-clients"), "-h", "127.0.0.1",
                                   "-p", str(port), "-t", "ioc/v1/events/#", "-q", str(qos), "-C",
                                   str(expected)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it subscribe
        publisher = MqttPublisher("127.0.0.1", port, qos=qos)
        began = time.perf_counter()
        player = Player(loaded, how, publisher.publish, publisher.idle)
        stats = player.run()
        publisher.close()
        published = time.perf_counter() - began
        received = 0
        assert subscriber.stdout is not None
        for _ in subscriber.stdout:
            received += 1
        subscriber.wait(60)
        drained = time.perf_counter() - began
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
    return stats.events, stats.events / published, received, received / drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per simulated second")
    parser.add_argument("--scenario", default="province-day")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as workdir:
        broker = start_mosquitto(Path(workdir) / "mosquitto")
        try:
            print(f"scenario {args.scenario}: {args.events} events, {args.rounds} rounds, one publisher process")
            for qos in (0, 1):
                for round_number in range(1, args.rounds + 1):
                    sent, rate, received, drained = measure(broker.port, args.scenario, args.events, args.rate, qos)
                    print(f"QoS {qos} round {round_number}: sent {sent} at {rate:,.0f} events/s; "
                          f"subscriber received {received} ({drained:,.0f} events/s)", flush=True)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
