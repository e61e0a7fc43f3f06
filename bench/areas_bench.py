"""The national area registry's cost (CONTRACT §10, issue 13): start-up time, memory, and the intake's.

    python bench/areas_bench.py                # 3 start-ups of each registry, 200k intake events
    python bench/areas_bench.py --events 50000 --runs 1

Start-up: in a fresh interpreter for each run (nothing cached), everything the daemon imports first, then
the clock and the resident set size (VmRSS) around building the registry `[areas]` names and the first
answers the daemon needs of it (every unit of today, the province's children): the whole country, one
province (`provinces = ["68"]`), and no registry at all (a CSV of one unit) as the floor.

Intake: `Pipeline.ingest` of one-event payloads into a sink that only counts, without the conversion,
with it for codes in use (every event: one dict lookup), and with it for former codes (each converted).
Figures swing with other load on a shared machine; compare the ratios of one run. The budget (issue 13):
the whole country <= 1 s extra start-up and <= 50 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_STARTUP = r"""
import json, sys, time
from pathlib import Path
from ioc.config import AreasSettings
import ioc.app  # everything the daemon imports before it builds the registry

def rss_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0

from ioc.areas import registry_from_settings
kind = sys.argv[1]
if kind == "none":
    path = Path(sys.argv[2])
    path.write_text("code,name,level,parent\n1,X,province,\n", encoding="utf-8")
    load = lambda: __import__("ioc.areas", fromlist=["AreaRegistry"]).AreaRegistry.load(path)
else:
    settings = AreasSettings() if kind == "country" else AreasSettings(provinces=[kind])
    load = lambda: registry_from_settings(settings)
before, start = rss_kib(), time.perf_counter()
registry = load()
units = len(registry.areas())
children = len(registry.children("68"))
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "rss_mb": (rss_kib() - before) / 1024, "units": units,
                  "children_68": children, "former": len(registry.former)}))
"""


def startup(kind: str, runs: int, scratch: Path) -> dict[str, float]:
    found = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", _STARTUP, kind, str(scratch / "one.csv")], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        found.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": statistics.median(f["seconds"] for f in found),
            "rss_mb": statistics.median(f["rss_mb"] for f in found),
            "units_today": found[0]["units"], "former_codes": found[0]["former"]}


class _CountingSink:
    name = "count"

    def __init__(self) -> None:
        self.points = 0

    def start(self) -> None: ...

    def submit(self, points: list[str], on_durable: object = None, *args: object, **kwargs: object) -> None:
        self.points += len(points)

    def has_room(self, points: int) -> bool:
        return True

    def problems(self) -> list[str]:
        return []

    def metrics(self) -> Callable[[], Iterable[Any]]:
        return list

    def close(self, timeout: float) -> None: ...


def intake(events: int, codes: list[str], convert: bool) -> float:
    """CPU microseconds per one-event payload through Pipeline.ingest."""
    import orjson

    from ioc.areas import REFORM_NS, AreaRegistry
    from ioc.ingest.dedup import DedupIndex
    from ioc.ingest.pipeline import Pipeline

    now = time.time()
    sink = _CountingSink()
    dedup = DedupIndex(None, window=3600, max_keys=events + 10, clock=lambda: now)
    pipeline = Pipeline(sinks=[sink], dedup=dedup, max_bytes=1 << 20, max_future=300, clock=lambda: now)
    if convert:
        pipeline.convert_areas(AreaRegistry.default().former, REFORM_NS)
    payloads = [orjson.dumps({"id": f"e{i}", "source": "qtmt-aqi", "type": "telemetry",
                              "time": f"2026-03-02T08:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 999_999:06d}+07:00",
                              "metric": "env.aqi", "value": i % 500, "area": codes[i % len(codes)],
                              "tags": {"station": f"ST-{i % 300:03d}"}}) for i in range(events)]
    start = time.process_time()  # this process's CPU: less swayed by other load than the wall clock
    for payload in payloads:
        pipeline.ingest(payload)
    elapsed = time.process_time() - start
    assert sink.points == events, (sink.points, events)
    return elapsed / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="start-ups of each registry and intake rounds (median)")
    parser.add_argument("--events", type=int, default=200_000, help="intake events per measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import tempfile

    from ioc.areas import AreaRegistry

    with tempfile.TemporaryDirectory() as scratch:
        figures = {kind: startup(kind, args.runs, Path(scratch)) for kind in ("none", "68", "country")}
    for kind, figure in figures.items():
        extra = figure["seconds"] - figures["none"]["seconds"]
        print(f"start-up {kind:>8}: {figure['seconds'] * 1000:7.1f} ms (+{extra * 1000:.1f} ms over none), "
              f"+{figure['rss_mb']:.1f} MB RSS, {figure['units_today']} units today, "
              f"{figure['former_codes']} former codes converted")
    registry = AreaRegistry.default()
    in_use = [a.code for a in registry.children("68")]
    former = [code for code, moved in registry.former.items() if not moved.divided][:500]
    intake(args.events // 10, in_use, convert=True)  # warm-up: imports, caches, the allocator
    rounds: dict[str, list[float]] = {"plain": [], "kept": [], "moved": []}
    for _ in range(args.runs):  # interleaved, so that a burst of other load hits every mode alike
        rounds["plain"].append(intake(args.events, in_use, convert=False))
        rounds["kept"].append(intake(args.events, in_use, convert=True))
        rounds["moved"].append(intake(args.events, former, convert=True))
    # The best round of each: what the code costs, with the least of other processes' interference in it.
    plain, kept, moved = (min(rounds[mode]) for mode in ("plain", "kept", "moved"))
    print(f"intake: {plain:.2f} us/event without the conversion, {kept:.2f} with it for codes in use "
          f"({(kept / plain - 1) * 100:+.1f} %), {moved:.2f} for former codes ({(moved / plain - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
