"""The daemon's broker link as its own log tells it, for the record of the faults that touch it (issue 9's
open finding: a poison fault right after a broker black hole saw neither a crash nor a dead letter).

The daemon logs JSON lines (`[log] format = "json"`); `LinkLog` reads its log file as it grows and keeps
the events that say where the link and the poison guard were: `daemon.started`, `mqtt.connected` (with
`session_present`), `mqtt.disconnected`, `mqtt.reconnecting`, `mqtt.crash_recovery` and
`mqtt.poison_quarantined`. Times are moved onto the monotonic clock the rest of the suite uses.

`mqtt.disconnected` is a warning, and a repeated warning is written at most once per 10 s (docs/operations.md,
bounded logs): a second disconnect within 10 s shows in the log only as the next one's `repeated=N`.
`mqtt.connected` and `mqtt.reconnecting` are info lines, never held back, so every reconnect is there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

LINK_EVENTS = frozenset({"daemon.started", "mqtt.connected", "mqtt.disconnected", "mqtt.reconnecting",
                         "mqtt.crash_recovery", "mqtt.poison_quarantined"})
_SHORT = {"daemon.started": "started", "mqtt.connected": "connected", "mqtt.disconnected": "disconnected",
          "mqtt.reconnecting": "reconnecting", "mqtt.crash_recovery": "crash recovery",
          "mqtt.poison_quarantined": "poison quarantined"}


@dataclass(frozen=True)
class LinkEvent:
    at: float  # monotonic
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


def parse_line(line: bytes, wall_minus_monotonic: float) -> LinkEvent | None:
    """One log line as a link event, or None (another event, a line that is not JSON)."""
    if not line.startswith(b"{"):
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("event") not in LINK_EVENTS:
        return None
    try:
        wall = datetime.fromisoformat(str(record["timestamp"])).timestamp()
    except (KeyError, ValueError):
        return None
    fields = {key: value for key, value in record.items() if key not in ("event", "timestamp", "level")}
    return LinkEvent(wall - wall_minus_monotonic, str(record["event"]), fields)


class LinkLog:
    """The link events of one daemon's log file (appended by each of its runs), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[LinkEvent] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self) -> list[LinkEvent]:
        """Take the lines written since the last read; every event so far."""
        with self._lock:
            try:
                with open(self.path, "rb") as log:
                    log.seek(self._offset)
                    data = log.read()
            except FileNotFoundError:
                return list(self.events)
            end = data.rfind(b"\n") + 1  # a line being written is taken next time
            self._offset += end
            offset = time.time() - time.monotonic()
            for line in data[:end].splitlines():
                event = parse_line(line, offset)
                if event is not None:
                    self.events.append(event)
            return list(self.events)

    def between(self, start: float, end: float = float("inf")) -> list[LinkEvent]:
        return [event for event in self.read() if start <= event.at < end]

    def first(self, event: str, after: float) -> LinkEvent | None:
        return next((found for found in self.between(after) if found.event == event), None)


def describe(events: list[LinkEvent], origin: float) -> str:
    """The events as `name +s` relative to `origin` (a run of reconnect attempts as one entry with its
    count), e.g. `disconnected -12.1s, reconnecting x7 -12.1s..-3.0s, connected -2.9s (session)`."""
    parts: list[str] = []
    index = 0
    while index < len(events):
        event = events[index]
        if event.event == "mqtt.reconnecting":
            last = index
            while last + 1 < len(events) and events[last + 1].event == "mqtt.reconnecting":
                last += 1
            count = last - index + 1
            span = f"{event.at - origin:+.1f}s" + (f"..{events[last].at - origin:+.1f}s" if count > 1 else "")
            parts.append(f"reconnecting x{count} {span}")
            index = last + 1
            continue
        text = f"{_SHORT[event.event]} {event.at - origin:+.1f}s"
        if event.event == "mqtt.connected":
            text += " (session)" if event.fields.get("session_present") else " (NO session)"
        elif event.event == "mqtt.disconnected" and event.fields.get("repeated"):
            text += f" (after {event.fields['repeated']} more held back)"
        elif event.event == "mqtt.crash_recovery":
            text += f" ({event.fields.get('in_flight')} in flight)"
        parts.append(text)
        index += 1
    return ", ".join(parts) or "nothing logged"
