"""The long profile: `python -m tests.chaos --minutes 30 [--seed N]`.

Plays the nemesis's faults, each kind in turn in a shuffled order, for `--minutes`, with the long
profile's rates (MQTT QoS 1 1000 events/s, HTTP 500 events/s in batches of 100), then heals, drains and
checks, and prints the table of faults injected and outcomes. Exit 0 when every check held, 1 otherwise
(the failures are listed under the table, with the seed to replay the schedule). `--short` plays the
short profile (every kind once), as `tests/chaos/test_chaos_short.py` does; `--two-nodes` the two-node
world on PostgreSQL (`cluster.py`) and its faults, with `--short` its short profile.

Last session's `--minutes 20 --seed 61` is replayed by `--minutes 20 --seed 61 --without
failpoint:evaluation.before_batch` (that failpoint came after it; the seed shuffles the list of kinds).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

from tests.chaos.runner import LONG, SHORT, TWO_NODES, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=LONG.minutes, help="how long to inject faults")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: random)")
    parser.add_argument("--short", action="store_true", help="the short profile: every fault kind once")
    parser.add_argument("--mqtt-rate", type=float, help="MQTT events/s")
    parser.add_argument("--http-rate", type=float, help="HTTP events/s")
    parser.add_argument("--rss-limit", type=float, help="the stated RSS bound, MiB")
    parser.add_argument("--poison-bytes", type=int, help="size of the poison payloads (default 8 MiB)")
    parser.add_argument("--workdir", type=Path, help="keep servers' data and logs here")
    parser.add_argument("--without", action="append", default=[], metavar="KIND",
                        help="leave a fault kind out of the schedule (to replay an older run's seed)")
    parser.add_argument("--only", action="append", default=[], metavar="KIND",
                        help="schedule only these kinds (repeatable), e.g. to play a pair of faults often")
    parser.add_argument("--two-nodes", action="store_true", help="the two-node world on PostgreSQL")
    args = parser.parse_args(argv)
    if args.two_nodes:
        profile = TWO_NODES if args.short else dataclasses.replace(TWO_NODES, name="two-node long",
                                                                   minutes=args.minutes)
    else:
        profile = SHORT if args.short else dataclasses.replace(LONG, minutes=args.minutes)
    overrides = {"mqtt_rate": args.mqtt_rate, "http_rate": args.http_rate, "rss_limit_mib": args.rss_limit,
                 "poison_bytes": args.poison_bytes, "without": tuple(args.without),
                 "only": tuple(args.only)}
    profile = dataclasses.replace(profile, **{key: value for key, value in overrides.items() if value})
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"chaos: {profile.name} profile, seed {seed}", flush=True)
    report = run(profile, seed, workdir=args.workdir, log=True)
    print()
    print(report.table())
    print()
    for injection in report.injections:
        print(f"  {injection.kind}: {injection.detail}")
    print(f"  HTTP answers seen by the generator: {report.http_statuses}")
    for note in report.notes:
        print(f"  note: {note}")
    failures = report.failures()
    if failures:
        print(f"\n{len(failures)} failures (seed {seed}, files in {report.workdir}):")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print("\nevery check held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
