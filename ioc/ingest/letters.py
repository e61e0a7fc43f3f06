"""Rejected items to dead letters (docs/transports.md): one dead letter per message and source, counted
per source (`ioc_dead_letters_total`), sent to every target (the MQTT publisher of the assembly).

A message of 10,000 bad items costs one publish, not 10,000 (which the connector could not queue: it
would count them dropped). A target that fails is logged at most once per 10 s, whatever the flood.

In a cluster every node receives every MQTT message, so its dead letters are the cluster's and only the
leader publishes them (ioc/ingest/letter_gate.py); the HTTP intake's are the receiving node's alone (the
vendor got its answer from it, and the rejected items are not republished): it sends them inside
`node_local()`, which a gate reads with `node_local_letters()`.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import structlog
from prometheus_client.core import Metric

from ioc.logs import RepeatLimiter
from ioc.metrics import counter

log = structlog.get_logger("ioc.ingest")

_LETTER_REASONS = 20  # a dead letter of several items names this many (with their index), then counts

# A rejected item on its way to a dead letter: (its message's number, source, index in the message,
# reason, its bytes).
Letter = tuple[int, str, int, str, bytes]


_here = threading.local()  # `node_local`: set in the thread of an HTTP intake call while it runs


@contextmanager
def node_local() -> Iterator[None]:
    """Dead letters sent in this thread meanwhile are this node's alone (the HTTP intake's): a gate
    publishes them at once, leader or not."""
    previous = getattr(_here, "local", False)
    _here.local = True
    try:
        yield
    finally:
        _here.local = previous


def node_local_letters() -> bool:
    """Whether the dead letter being sent in this thread is this node's alone (see `node_local`)."""
    return getattr(_here, "local", False)


class DeadLetterTarget(Protocol):
    """Where rejected items go (the MQTT connector publishes them on `ioc/v1/deadletter/{source}`)."""

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None: ...


def several_rejected(group: Sequence[Letter]) -> str:
    """The reason of a dead letter for several rejected items of one message: how many (a count a reader
    can rely on: `N items rejected: `), then the first ones by their index in the message."""
    named = [f"[{index}] {reason}" for _, _, index, reason, _ in group[:_LETTER_REASONS]]
    more = f"; and {len(group) - _LETTER_REASONS} more" if len(group) > _LETTER_REASONS else ""
    return f"{len(group)} items rejected: " + "; ".join(named) + more


class DeadLetterOffice:
    """Sends rejected items to the targets as dead letters and counts them."""

    def __init__(self, targets: Sequence[DeadLetterTarget] = ()) -> None:
        self.targets: list[DeadLetterTarget] = list(targets)  # given by the assembly (app.py)
        self.counts: defaultdict[tuple[str], int] = defaultdict(int)
        self._failures = RepeatLimiter(10.0)

    def send(self, letters: list[Letter], messages: Sequence[tuple[int, bytes | None]] | None) -> None:
        """One dead letter per message and source: the item itself when it is the only one rejected,
        else the message with the rejected items' indexes and reasons. `messages` are (index of the first
        item, payload) of the messages the items came from; None when each item is a message of its own."""
        if messages is None:
            for _, source, _, reason, raw in letters:
                self.publish(source, reason, raw, 1)
            return
        starts = [start for start, _ in messages]
        groups: dict[tuple[int, str], list[Letter]] = {}
        for _, source, index, reason, raw in letters:
            number = bisect.bisect_right(starts, index) - 1 if len(starts) > 1 else 0
            groups.setdefault((number, source), []).append((number, source, index - starts[number], reason, raw))
        for (number, source), group in groups.items():
            if len(group) == 1:
                _, _, _, reason, raw = group[0]
                self.publish(source, reason, raw, 1)
                continue
            payload = messages[number][1]
            if payload is None:  # the caller did not say: the rejected items, one a line
                payload = b"\n".join(raw for _, _, _, _, raw in group)
            self.publish(source, several_rejected(group), payload, len(group))

    def publish(self, source: str, reason: str, payload: bytes, items: int = 1) -> None:
        """One dead letter to every target, standing for `items` rejected items."""
        self.counts[(source,)] += items
        for target in self.targets:
            try:
                target.publish_dead_letter(source, reason, payload)
            except Exception:  # per item of a flood: logged at most once per 10 s
                if (suppressed := self._failures.check("publish")) is not None:
                    log.exception("ingest.dead_letter_failed", source=source, suppressed=suppressed)

    def collect(self) -> Iterable[Metric]:
        yield counter("ioc_dead_letters", "Rejected items sent to the dead-letter topic.", ("source",),
                      self.counts.copy())
