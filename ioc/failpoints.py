"""Failpoints: faults triggered on purpose at named points of the event path (docs/operations.md).

As etcd's gofail and TiKV's fail-rs do, a failpoint is a named place in the code where a test can make the
daemon crash, stall or fail, by environment, without a special build:

    IOC_FAILPOINTS="spool.after_write=abort,sink.before_write=sleep(200),spool.write=2*error"

An action is `abort` (the process kills itself with SIGKILL: no cleanup, no flush, as a crash),
`sleep(MS)` (the calling thread stalls), `error` (raises `FailpointError`, an `OSError`, as a failed disk
or socket would) or `off`; `N*action` fires on the first N hits only, then the point is off again.

Free when off: call sites test the module-level `ACTIVE` dict before calling `hit`, so a daemon run
without `IOC_FAILPOINTS` pays one dict truthiness check per point:

    if failpoints.ACTIVE:
        failpoints.hit("spool.after_write")

The names are listed in `NAMES` (and docs/operations.md); an unknown name in `IOC_FAILPOINTS` is a start error.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
import time
from dataclasses import dataclass

from ioc.errors import ConfigError

ENV = "IOC_FAILPOINTS"

# Every failpoint of the daemon, with where it sits (docs/operations.md lists the same; a test checks it).
NAMES: dict[str, str] = {
    "intake.after_decode": "a payload is decoded, before its items are checked, deduplicated and admitted",
    "sink.before_write": "a batch is about to be sent to InfluxDB",
    "spool.write": "a batch is written to the disk spool (error: the write fails as on a full disk)",
    "spool.after_write": "a batch is in the spool, before its events are acknowledged",
    "mqtt.before_ack": "points are durable, before the MQTT acknowledgements go out",
    "http.before_reply": "points are durable, before the HTTP 202 goes out",
    "mqtt.handle": "an MQTT burst is about to be handed to the pipeline, before it is journaled (a crash "
                   "here is not charged to its messages)",
    "mqtt.poison": "an MQTT burst holding a message with the bytes IOC-FAILPOINT-POISON is being handled "
                   "(a poison message: quarantined after [intake] max_deliveries crashes)",
    "alerts.before_notify": "an alert change is stored, before the notifiers are called",
    "evaluation.before_batch": "the evaluation thread took a batch of accepted events, before the aggregators "
                               "and rules see it (its points may already be durable; it is not acknowledged)",
}

_ACTION = re.compile(r"^(?:(\d+)\*)?(abort|error|off|sleep\((\d+)\))$")


class FailpointError(OSError):
    """What an `error` failpoint raises: an I/O error, so the call site's own error handling runs."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EIO, f"failpoint {name}")
        self.name = name


@dataclass(slots=True)
class _Action:
    kind: str  # abort | error | sleep
    sleep_ms: int = 0
    remaining: int | None = None  # hits left before the point turns off; None: every hit


# name -> action; empty when no failpoint is set (the fast path checks its truthiness).
ACTIVE: dict[str, _Action] = {}
_lock = threading.Lock()
_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, _Action]:
    """`name=action[,name=action...]` -> actions; ConfigError naming each bad part."""
    actions: dict[str, _Action] = {}
    problems: list[str] = []
    for part in (part.strip() for part in spec.split(",")):
        if not part:
            continue
        name, sep, text = part.partition("=")
        name, text = name.strip(), text.strip()
        match = _ACTION.match(text)
        if not sep or name not in NAMES:
            problems.append(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(sorted(NAMES))})")
            continue
        if match is None:
            problems.append(f"{ENV}: {name}: {text!r} is not abort, error, off, sleep(MS) or N*action")
            continue
        count, kind, sleep_ms = match.group(1), match.group(2), match.group(3)
        if kind == "off":
            continue
        actions[name] = _Action("sleep" if sleep_ms else kind, int(sleep_ms or 0),
                                int(count) if count else None)
    if problems:
        raise ConfigError(problems)
    return actions


def configure(spec: str | None = None) -> None:
    """Set the failpoints from `spec` (default: the environment). An empty spec turns them all off."""
    actions = parse(os.environ.get(ENV, "") if spec is None else spec)
    with _lock:
        ACTIVE.clear()
        ACTIVE.update(actions)
        _hits.clear()


def hits(name: str) -> int:
    """How many times the point fired (for tests)."""
    with _lock:
        return _hits.get(name, 0)


def hit(name: str) -> None:
    """Run the action set for `name`, if any. Call only behind `if failpoints.ACTIVE:`."""
    with _lock:
        action = ACTIVE.get(name)
        if action is None:
            return
        if action.remaining is not None:
            action.remaining -= 1
            if action.remaining <= 0:
                del ACTIVE[name]
        _hits[name] = _hits.get(name, 0) + 1
    if action.kind == "abort":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is delivered asynchronously; never go on past an abort
    elif action.kind == "sleep":
        time.sleep(action.sleep_ms / 1000)
    elif action.kind == "error":
        raise FailpointError(name)
