"""The MQTT intake's in-flight journal: the cost of one burst's write + clear (it runs twice per burst on
the intake's hot path). Compare trees by pointing --tree at another checkout (e.g. `git worktree add
/tmp/old <rev>`, with ioc/rules, ioc/connectors, ioc/simulators linked to the top-level folders):

    python bench/journal_bench.py                 # this tree
    python bench/journal_bench.py --tree /tmp/old # another one, same process conditions
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", help="import ioc from this checkout instead of the installed one")
    parser.add_argument("--bursts", type=int, default=200_000)
    parser.add_argument("--ids", type=int, default=8, help="messages per burst")
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    from ioc.connectors.mqtt.poison import InflightJournal

    journal = InflightJournal(os.path.join(tempfile.mkdtemp(), "journal"))
    ids = list(range(1, args.ids + 1))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(args.bursts):
            journal.write(ids, alone=False)
            journal.clear()
        best = min(best, (time.perf_counter() - started) / args.bursts)
    print(f"{args.tree or 'this tree'}: {best * 1e6:.2f} us per burst (write + clear, best of 3)")


if __name__ == "__main__":
    main()
