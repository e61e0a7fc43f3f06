"""What the alert manager costs: `apply()` per change (one SQLite transaction each), and the re-muting
of every active alert when a silence is made or an inhibiting alert fires.

    python bench/alerts_bench.py [--alerts 5000] [--silences 50] [--store-url postgresql://USER@HOST:PORT/DB]

Prints figures; asserts nothing (the tests own correctness). The store is a file in a temp folder, as in
the daemon (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

from ioc.rules.updates import AlertUpdate

from ioc.alerts.config import AlertsSettings
from ioc.alerts.manager import AlertManager
from ioc.alerts.silence import SilenceRequest
from ioc.alerts.store import AlertStore


class Areas:
    """Province 60 over every commune code used below."""

    def is_within(self, code: str, ancestor: str, at: date | None = None) -> bool:
        return code == ancestor or ancestor == "60"


def update(rule: str, area: str, state: str, at: float, entity: str = "") -> AlertUpdate:
    labels = {"area": area, **({"entity": entity} if entity else {})}
    return AlertUpdate(rule=rule, labels=labels, severity="warning", state=state,  # type: ignore[arg-type]
                       summary="", value=1.0, at=at)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--silences", type=int, default=50)
    parser.add_argument("--store-url", default="",
                        help="the shared store's URL (e.g. an empty PostgreSQL database) instead of a SQLite file")
    args = parser.parse_args()
    settings = AlertsSettings.model_validate({"inhibit": [{
        "source_matchers": ["rule = coverage-outage"], "target_matchers": ["rule = cell-down"],
        "within_area": True}]})
    with tempfile.TemporaryDirectory() as folder:
        store = args.store_url or Path(folder) / "ioc.db"
        manager = AlertManager(AlertStore(store), settings=settings, areas=Areas())
        n = args.alerts
        started = time.perf_counter()
        for index in range(n):
            manager.apply(update("cell-down", f"2{index % 100:04d}", "pending", 0.0, entity=f"BTN{index}"))
        for index in range(n):
            manager.apply(update("cell-down", f"2{index % 100:04d}", "firing", 1.0, entity=f"BTN{index}"))
        per_change = (time.perf_counter() - started) / (2 * n) * 1e6
        print(f"apply: {per_change:.0f} us a change ({2 * n} changes, {n} active alerts, "
              f"{'PostgreSQL' if args.store_url else 'SQLite file'})")

        started = time.perf_counter()
        for index in range(args.silences):
            manager.create_silence(SilenceRequest.parse({
                "matchers": [{"name": "entity", "value": f"NOPE{index}.*", "op": "=~"}], "duration": "1h"}),
                actor="bench")
        per_silence = (time.perf_counter() - started) / args.silences * 1e3
        print(f"create_silence: {per_silence:.1f} ms each with {n} active alerts "
              f"(re-muting all; up to {args.silences} silences)")

        started = time.perf_counter()
        manager.apply(update("coverage-outage", "60", "firing", 2.0))
        muting = (time.perf_counter() - started) * 1e3
        muted = sum(1 for alert in manager.active() if alert.inhibited)
        print(f"inhibiting source fires: {muting:.1f} ms to mute {muted} of {n} alerts "
              f"({args.silences} silences)")
        manager.close()


if __name__ == "__main__":
    main()
