"""Dossier tracker at scale: 1M open dossiers in memory, and one clock sweep that flips ~10% overdue.

Target (issue): 1M open dossiers in <= 1 GB RSS and the overdue sweep <= 1 s. The dossiers are fed
through `observe` as the daemon would (events built without validation, which is intake's cost, not the
tracker's), spread over the communes of the shipped registry; 10% are due within the next hour, the rest
in 10-60 days. Then `advance(t0 + 1h)` is timed, and a second tracker reloads the SQLite file (restart).

    python bench/dossier_bench.py [--count 1000000] [--store DIR] [--store-url postgresql://USER@HOST:PORT/DB]

`--store-url` puts the tracker's rows in that shared store (`[store] url`, e.g. PostgreSQL) instead of the
SQLite file; the database should be empty (a fresh one: `createdb`).

Prints the figures; nothing is asserted (timings swing with the load of a shared machine).
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ioc.aggregators import DossierTracker, WorkCalendar
from ioc.aggregators.calendar import default_holidays_path, load_holidays
from ioc.areas import AreaRegistry
from ioc.envelope import DossierEvent

ZONE = timezone(timedelta(hours=7))
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=ZONE)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def events(count: int, communes: list[str], seed: int = 1):
    rng = random.Random(seed)
    for index in range(count):
        if index % 10 == 0:
            due = T0 + timedelta(seconds=rng.randrange(1, 3600))
        else:
            due = T0 + timedelta(days=rng.randrange(10, 60), seconds=rng.randrange(0, 86400))
        yield DossierEvent.model_construct(
            id=f"e{index}", source="dvc-binhthuan", type="dossier", time=T0, area=rng.choice(communes),
            tags=None, dossier_id=f"000.00.20.H10-260302-{index:07d}", procedure="1.001612",
            status="processing" if index % 3 else "received", received_at=T0 - timedelta(days=1), due_at=due,
            finished_at=None, channel="online" if index % 4 else "counter", level="commune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, default=None,
                        help="folder for the SQLite file (default: a new temporary folder)")
    parser.add_argument("--store-url", default="", help="the shared store's URL instead of the SQLite file")
    args = parser.parse_args()
    folder = args.store or Path(tempfile.mkdtemp(prefix="dossier-bench-"))
    path = folder / "bench.db"
    path.unlink(missing_ok=True)
    areas = AreaRegistry.default()
    communes = [a.code for a in areas.areas(T0.date()) if a.level == "commune"]
    calendar = WorkCalendar(load_holidays(default_holidays_path()), 1)
    emitted = [0]

    def on_kpi(_kpi: object) -> None:
        emitted[0] += 1

    base_rss = rss_mib()
    store = args.store_url or path
    tracker = DossierTracker(areas, calendar, store, on_kpi)
    started = time.perf_counter()
    for event in events(args.count, communes):
        tracker.observe(event)
    tracker.advance(T0.timestamp())  # writes what is buffered
    load_s = time.perf_counter() - started
    gc.collect()
    loaded_rss = rss_mib()
    open_before = tracker._counts.overdue[tracker._nodes.codes.index("68")]

    emitted[0] = 0
    started = time.perf_counter()
    tracker.advance((T0 + timedelta(hours=1)).timestamp())
    sweep_s = time.perf_counter() - started
    province = tracker._nodes.codes.index("68")
    flipped = tracker._counts.overdue[province] - open_before
    tracker.close()

    started = time.perf_counter()
    reloaded = DossierTracker(areas, calendar, store, on_kpi)
    reload_s = time.perf_counter() - started
    reloaded_overdue = reloaded._counts.overdue[reloaded._nodes.codes.index("68")]
    reloaded.close()

    size = f"{path.stat().st_size / 2**20:.0f} MiB" if not args.store_url else "PostgreSQL"
    print(f"dossiers: {args.count} open over {len(communes)} communes; store {args.store_url or path} ({size})")
    print(f"load via observe(): {load_s:.1f} s ({load_s / args.count * 1e6:.1f} us a dossier, rows written)")
    print(f"RSS: {loaded_rss:.0f} MiB with {args.count} open ({base_rss:.0f} MiB before the tracker; "
          f"{(loaded_rss - base_rss) * 2**20 / args.count:.0f} B a dossier)")
    print(f"sweep advance(+1h): {sweep_s * 1000:.0f} ms, {flipped} flipped to overdue, "
          f"{emitted[0]} KPIs emitted")
    print(f"restart: reload from the store {reload_s:.1f} s, overdue at the province {reloaded_overdue}")


if __name__ == "__main__":
    main()
