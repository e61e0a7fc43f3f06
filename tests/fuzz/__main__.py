"""The long fuzzing profile: `python -m tests.fuzz --cases 100000`.

Starts its own Mosquitto and InfluxDB (tests/servers.py) and two `ioc run` daemons in turn: one for every
HTTP route (read from its OpenAPI document), then a fresh one for MQTT, so the MQTT counters start at
zero. Cases are spread over the targets by weight; each target runs the `fuzz-long` hypothesis profile
(generation only, seed printed) in chunks, recording every finding instead of stopping at the first.
Prints a table per target (cases, 2xx, 4xx by status, 5xx, crashes; MQTT accepted, duplicates,
dead-lettered, missing) and the shortest examples of each finding. Exit status 1 when anything broke.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given, seed, settings
from hypothesis import strategies as st

import tests.fuzz  # noqa: F401 - registers the profiles
from tests.e2e.daemon import DaemonProcess
from tests.fuzz.harness import (
    HttpFuzzer,
    MqttFuzzer,
    Tally,
    load_case,
    make_daemon,
    print_table,
    running,
    seed_daemon,
    settle_counts,
)
from tests.fuzz.routes import EVENTS_PATH, SILENCES_PATH, Known, Route, raw_requests, route_cases, stray_cases
from tests.fuzz.strategies import mqtt_messages
from tests.servers import start_influxdb, start_mosquitto

CHUNK = 2_000  # examples per hypothesis run: its data tree grows with every example it keeps
MQTT_BURST = 100  # messages published before their outcomes are checked together
WEIGHTS = {f"POST {EVENTS_PATH}": 30.0, f"POST {SILENCES_PATH}": 12.0, "stray": 6.0, "raw requests": 4.0}
OTHER_ROUTE_WEIGHT = 2.5


def explore(strategy: st.SearchStrategy[Any], body: Callable[[Any], None], cases: int, first_seed: int) -> None:
    """Draw `cases` examples from `strategy` into `body`, in chunks, each with its own seed."""
    done, chunk = 0, 0
    while done < cases:
        count = min(CHUNK, cases - done)

        @seed(first_seed + chunk)
        @settings(settings.get_profile("fuzz-long"), max_examples=count)
        @given(strategy)
        def run(value: Any) -> None:
            body(value)

        run()
        done += count
        chunk += 1


def split(total: int, weights: dict[str, float]) -> dict[str, int]:
    scale = sum(weights.values())
    counts = {name: max(1, int(total * weight / scale)) for name, weight in weights.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())
    return counts


def http_phase(workdir: Path, mqtt_url: str, influx_url: str, cases: int, first_seed: int,
               log: Callable[[str], None], only: re.Pattern[str] | None = None,
               replay: list[Path] | None = None, public_read: bool = True) -> list[Tally]:
    """Every route by weight (or `replay`'s saved cases) against a daemon of its own; with
    `public_read=False` reads need a token too, and the targets are named `closed: ...`."""
    name = "long-http" if public_read else "long-closed"
    daemon = make_daemon(workdir / name, mqtt_url=mqtt_url, influx_url=influx_url, name=name,
                         public_read=public_read)
    with running(daemon):
        known = Known()
        seed_daemon(daemon, known)
        fuzzer = HttpFuzzer(daemon, strict=False, prefix="" if public_read else "closed: ")
        try:
            routes = fuzzer.routes()
            by_name: dict[str, Route] = {route.name: route for route in routes}
            if replay:
                for path in replay:
                    case = load_case(path)
                    fuzzer.send_raw(case) if isinstance(case, bytes) else fuzzer.send(case)
                fuzzer.checkpoint(fuzzer.tally("replay"))
                return [fuzzer.tallies[name] for name in sorted(fuzzer.tallies)]
            # With reads closed the token check runs first on every route: all weigh the same there.
            weights = {name: WEIGHTS.get(name, OTHER_ROUTE_WEIGHT) if public_read else 1.0 for name in by_name}
            weights.update({"stray": WEIGHTS["stray"], "raw requests": WEIGHTS["raw requests"]} if public_read
                           else {"stray": 1.0})
            if only is not None:
                weights = {target: weight for target, weight in weights.items()
                           if only.search(fuzzer.prefix + target)}
            if not weights:
                return []
            plan = split(cases, weights)
            for target, count in sorted(plan.items(), key=lambda item: -item[1]):  # the same seed with --only
                started = time.monotonic()
                target_seed = first_seed + zlib.crc32((fuzzer.prefix + target).encode()) % 1_000_000
                if target == "stray":
                    explore(stray_cases(tuple(routes), known), fuzzer.send, count, target_seed)
                elif target == "raw requests":
                    explore(raw_requests(known), fuzzer.send_raw, count, target_seed)
                else:
                    explore(route_cases(by_name[target], known), fuzzer.send, count, target_seed)
                fuzzer.checkpoint(fuzzer.tally(target))
                tally = fuzzer.tally(target)
                log(f"  {tally.target}: {tally.cases} cases in {time.monotonic() - started:.0f} s, "
                    f"5xx {tally.server_errors}, crashes {tally.crashes} (seed {target_seed})")
            if public_read:  # (the harness scrapes /metrics without a token)
                check_counts(daemon, fuzzer.tally("counts and sinks (HTTP daemon)"), log)
            return [fuzzer.tallies[name] for name in sorted(fuzzer.tallies)]
        finally:
            fuzzer.close()


def mqtt_phase(workdir: Path, mqtt_url: str, influx_url: str, cases: int, first_seed: int,
               log: Callable[[str], None]) -> Tally:
    daemon = make_daemon(workdir / "mqtt", mqtt_url=mqtt_url, influx_url=influx_url, name="long-mqtt")
    address = urlsplit(mqtt_url)
    with running(daemon):
        fuzzer = MqttFuzzer(daemon, address.hostname or "127.0.0.1", address.port or 1883, strict=False)
        burst: list[tuple[str, bytes]] = []
        started = time.monotonic()

        def take(message: tuple[str, bytes]) -> None:
            burst.append(message)
            if len(burst) >= MQTT_BURST:
                fuzzer.run(burst[:])
                burst.clear()

        try:
            explore(mqtt_messages(), take, cases, first_seed)
            if burst:
                fuzzer.run(burst)
            fuzzer.checkpoint()
            check_counts(daemon, fuzzer.tally, log)
        finally:
            fuzzer.close()
        log(f"  MQTT: {fuzzer.tally.cases} messages in {time.monotonic() - started:.0f} s (seed {first_seed})")
        return fuzzer.tally


def check_counts(daemon: DaemonProcess, tally: Tally, log: Callable[[str], None]) -> None:
    """After a phase: the counting rule holds and no accepted point was dead-lettered by a sink."""
    problems, outcomes = settle_counts(daemon)
    log(f"  sink points: {', '.join(f'{k} {v:.0f}' for k, v in sorted(outcomes.items()))}; counting rule "
        f"{'held' if not problems else 'BROKEN'}")
    for problem in problems:
        tally.keep("counts", problem)


def report(tallies: list[Tally], out: Callable[[str], None]) -> bool:
    """The table, then each finding's shortest examples; True when nothing broke."""
    print_table(tallies, out)
    broken = False
    for tally in tallies:
        for kind, examples in tally.failures.items():
            broken = True
            out(f"\nFINDING {tally.target}: {kind}")
            for example in examples:
                out(f"  {example[:1500]}")
    notes = [(t.target, kind, examples) for t in tallies for kind, examples in t.shapes.items()]
    if notes:
        out("\nNotes (not failures):")
        for target, kind, examples in notes:
            out(f"  {target}: {kind}: {examples[0][:300]}")
    return not broken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="HTTP and MQTT cases in all (default 100000)")
    parser.add_argument("--mqtt-share", type=float, default=0.25, help="the share of MQTT messages (0.25)")
    parser.add_argument("--closed-share", type=float, default=0.1,
                        help="the share of HTTP cases against a daemon with [http] public_read = false (0.1)")
    parser.add_argument("--seed", type=int, default=None, help="the first seed (default: random, printed)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="keep servers' and daemons' files here")
    parser.add_argument("--only", type=re.compile, default=None,
                        help="fuzz only the targets whose name matches this regular expression ('MQTT' for MQTT)")
    parser.add_argument("--replay", type=Path, nargs="+", default=None,
                        help="send these saved HTTP cases (findings/http-*.json) instead of fuzzing")
    args = parser.parse_args(argv)
    # Stopped by a signal, still stop the servers and daemons (`finally` blocks): a background job
    # started by a shell ignores SIGINT, so SIGTERM does the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    first_seed = args.seed if args.seed is not None else random.randrange(2**31)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ioc-fuzz-"))
    mqtt_cases = round(args.cases * args.mqtt_share)
    if args.only is not None and not args.only.search("MQTT ioc/v1/events/{source}"):
        mqtt_cases = 0
    if args.replay:
        mqtt_cases = 0
    log(f"fuzzing: {args.cases - mqtt_cases} HTTP cases ({args.closed_share:.0%} with reads closed), "
        f"{mqtt_cases} MQTT messages, seed {first_seed}, files in {workdir}")
    mosquitto = start_mosquitto(workdir / "mosquitto")
    influxdb = start_influxdb(workdir / "influxdb")
    started = time.monotonic()
    try:
        http_cases = args.cases - mqtt_cases
        closed_cases = 0 if args.replay else round(http_cases * args.closed_share)
        tallies = http_phase(workdir, mosquitto.url, influxdb.url, http_cases - closed_cases, first_seed, log,
                             args.only, args.replay)
        if closed_cases:
            tallies += http_phase(workdir, mosquitto.url, influxdb.url, closed_cases, first_seed, log, args.only,
                                  public_read=False)
        if mqtt_cases:
            tallies.append(mqtt_phase(workdir, mosquitto.url, influxdb.url, mqtt_cases, first_seed + 7, log))
    finally:
        influxdb.stop()
        mosquitto.stop()
    log(f"\n{sum(t.cases for t in tallies)} cases in {time.monotonic() - started:.0f} s, seed {first_seed}\n")
    ok = report(tallies, log)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
