"""Dead letters in a cluster (CONTRACT §8): a bad MQTT message is dead-lettered once, by the leader.

Every node receives every MQTT message and rejects a bad one alike, so each would publish the same dead
letter. `LeaderGate`, in front of the node's publisher, lets the leader publish. A follower counts the
letter as any node does (`ioc_dead_letters_total` is the node's own truth) and holds it: promoted within
`hold` seconds, it publishes what it holds, since the old leader may have died before publishing them.
So a letter is published at least once, never zero; a repeat around a failover carries the same `id`
(ioc/ingest/deadletter.py), by which a reader drops it.

`hold` is `2 × lease + 5 s` in the assembly, not `lease + 5 s`: the leader may receive a message later
than a follower (its intake behind by a burst or a sink's wait), and the follower takes the lease at its
next round after the old one lapsed (every `lease / 3`); a longer hold only costs a few more repeats on
a promotion. While the node cannot reach the shared store (`settled` false) nobody may lead, so nothing it
holds expires until `hold` after the store answers again. What is held is bounded by count and bytes
(a flood of bad messages must not grow a follower's memory): past them the oldest go first, counted.

Letters of the HTTP intake (sent inside `ioc.ingest.letters.node_local`) are the receiving node's alone
(the vendor got its answer from it; the rejected items are not republished): they pass at once. A single
node (SQLite) has no gate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog
from prometheus_client.core import Metric

from ioc.ingest.deadletter import dead_letter_body
from ioc.ingest.letters import node_local_letters
from ioc.logs import RepeatLimiter
from ioc.metrics import counter, gauge

log = structlog.get_logger("ioc.ingest")

MAX_HELD_LETTERS = 10_000
MAX_HELD_BYTES = 16 * 1024 * 1024  # a dead letter's body is at most ~90 KB (64 KiB of payload, base64)


class BodyTarget(Protocol):
    """Where a dead letter's finished body goes (the MQTT publisher, on `ioc/v1/deadletter/{source}`)."""

    def publish_dead_letter_body(self, source: str, body: bytes) -> None: ...


class HeldLetters:
    """Dead letters held for `hold` seconds, oldest first, at most `max_letters` and `max_bytes` (pure
    logic: the caller locks). A letter expires `hold` after it was held or after the last `unsettled`
    moment, whichever is later."""

    def __init__(self, *, hold: float, max_letters: int = MAX_HELD_LETTERS, max_bytes: int = MAX_HELD_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold = hold
        self.max_letters = max_letters
        self.max_bytes = max_bytes
        self._clock = clock
        self._letters: deque[tuple[float, str, bytes]] = deque()  # (held at, source, body)
        self._floor = float("-inf")  # the last moment nobody could be known to lead
        self.bytes = 0
        self.held = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._letters)

    def unsettled(self) -> None:
        """Nobody may lead now (the store is away): what is held keeps until `hold` after this."""
        self._floor = self._clock()

    def add(self, source: str, body: bytes) -> None:
        now = self._clock()
        self._expire(now)
        letters = self._letters
        letters.append((now, source, body))
        self.bytes += len(body)
        self.held += 1
        while len(letters) > self.max_letters or self.bytes > self.max_bytes:
            self.bytes -= len(letters.popleft()[2])
            self.evicted += 1

    def take(self) -> list[tuple[str, bytes]]:
        """Everything still held, oldest first; the holder is empty afterwards."""
        self._expire(self._clock())
        taken = [(source, body) for _, source, body in self._letters]
        self._letters.clear()
        self.bytes = 0
        return taken

    def _expire(self, now: float) -> None:
        letters = self._letters
        while letters and max(letters[0][0], self._floor) + self.hold <= now:
            self.bytes -= len(letters.popleft()[2])
            self.expired += 1


class LeaderGate:
    """The pipeline's dead-letter target in a cluster: publishes through `target` while `leader()`, holds
    otherwise; `role_changed` (the cluster node's listener) releases what is held on a promotion."""

    def __init__(self, target: BodyTarget, *, leader: Callable[[], bool], hold: float,
                 settled: Callable[[], bool] = lambda: True, max_letters: int = MAX_HELD_LETTERS,
                 max_bytes: int = MAX_HELD_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self._leader = leader
        self._settled = settled
        self._lock = threading.Lock()
        self._held = HeldLetters(hold=hold, max_letters=max_letters, max_bytes=max_bytes, clock=clock)
        self.released = 0
        self._failures = RepeatLimiter(10.0)

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        body = dead_letter_body(reason, payload, source=source)
        if node_local_letters() or self._leader():
            self.target.publish_dead_letter_body(source, body)
            return
        with self._lock:
            if not self._settled():
                self._held.unsettled()
            self._held.add(source, body)
        if self._leader():  # promoted meanwhile, its release perhaps done before this letter was held
            self.release()

    def role_changed(self, leading: bool) -> None:
        if leading:
            self.release()

    def release(self) -> None:
        """Publish what is held (a promotion: the old leader may have died before publishing them)."""
        with self._lock:
            letters = self._held.take()
        if not letters:
            return
        log.info("cluster.dead_letters_released", letters=len(letters),
                 effect="published once more if the old leader had published them (same id)")
        for source, body in letters:
            try:
                self.target.publish_dead_letter_body(source, body)
            except Exception:  # one failing publish must not keep the others back
                if (suppressed := self._failures.check("release")) is not None:
                    log.exception("ingest.dead_letter_failed", source=source, suppressed=suppressed)
        with self._lock:
            self.released += len(letters)

    @property
    def held(self) -> int:
        return len(self._held)

    def metrics(self) -> Iterable[Metric]:
        with self._lock:
            held = self._held
            outcomes = {("held",): float(held.held), ("released",): float(self.released),
                        ("expired",): float(held.expired), ("evicted",): float(held.evicted)}
            now_held = float(len(held))
        yield counter("ioc_cluster_dead_letters", "Dead letters a follower held instead of publishing (CONTRACT "
                      "§8: the leader publishes them), by outcome: held, released (published on a promotion), "
                      "expired, evicted (over the bounds).", ("outcome",), outcomes)
        yield gauge("ioc_cluster_dead_letters_held", "Dead letters a follower holds now, for a promotion.", (),
                    {(): now_held})
