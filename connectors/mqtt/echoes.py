"""A cluster node's own HTTP republish coming back to it, on MQTT 3.1.1 (CONTRACT §8).

A node publishes what it accepted over HTTP to `ioc/v1/events/{source}` on its own session
(ioc.api.cluster.Republisher) and, subscribed to `ioc/v1/events/#`, receives it again. It has counted those
events already (accepted or duplicate), so the echo would count each a second time as received and
duplicate: the counting rule holds, the counts are inflated. MQTT 5 subscribes with No Local and the
broker sends no echo; MQTT 3.1.1 has no such option, so the republisher tells `Echoes` what it is about to
publish (source and bytes) and the intake recognises the first message with the same source and bytes:
acknowledged, counted as `ioc_cluster_echoes_total{outcome="recognised"}`, handed to nothing.

Recognising a vendor's identical message instead of the echo (same bytes, same moment) changes no count:
both are the same (source, id), which this node has counted, so the one left is a duplicate either way.
An echo that has not come back within `expiry`, or that is pushed out by the bounds, is forgotten
(`expired`, `evicted`): if it comes later it is counted as a duplicate, as before.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from prometheus_client.core import Metric

from ioc.metrics import counter, gauge

DEFAULT_EXPIRY = 60.0  # seconds an echo is awaited; it usually comes back within milliseconds
MAX_ECHOES = 50_000
MAX_ECHO_BYTES = 32 * 1024 * 1024

Key = tuple[str, bytes]  # (source, the message's bytes)


class Echoes:
    """The messages this node published and expects back once each, oldest first, bounded by count, bytes
    and age. Thread-safe: `expect` is called by the HTTP intake, `take` by the MQTT intake."""

    def __init__(self, *, expiry: float = DEFAULT_EXPIRY, max_echoes: int = MAX_ECHOES,
                 max_bytes: int = MAX_ECHO_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.expiry = expiry
        self.max_echoes = max_echoes
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._by_seq: OrderedDict[int, tuple[float, Key]] = OrderedDict()  # awaited, oldest first
        self._by_key: dict[Key, deque[int]] = {}  # each key's awaited ones, oldest first
        self._seq = 0
        self.bytes = 0
        # How many are awaited: read without the lock on the MQTT intake's hot path (zero costs nothing).
        self.waiting = 0
        self.recognised = 0
        self.expired = 0
        self.evicted = 0

    def expect(self, source: str, payload: bytes) -> None:
        """This node is about to publish `payload` to `ioc/v1/events/{source}`: its echo is awaited."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._seq += 1
            key = (source, payload)
            self._by_seq[self._seq] = (now, key)
            self._by_key.setdefault(key, deque()).append(self._seq)
            self.bytes += len(payload)
            while len(self._by_seq) > self.max_echoes or self.bytes > self.max_bytes:
                self._forget_oldest()
                self.evicted += 1
            self.waiting = len(self._by_seq)

    def take(self, source: str, payload: bytes) -> bool:
        """Whether the message received is an awaited echo (then it is awaited no more)."""
        with self._lock:
            self._expire(self._clock())
            seqs = self._by_key.get((source, payload))
            if not seqs:
                return False
            del self._by_seq[seqs.popleft()]
            if not seqs:
                del self._by_key[(source, payload)]
            self.bytes -= len(payload)
            self.recognised += 1
            self.waiting = len(self._by_seq)
            return True

    def _expire(self, now: float) -> None:
        by_seq = self._by_seq
        while by_seq and next(iter(by_seq.values()))[0] + self.expiry <= now:
            self._forget_oldest()
            self.expired += 1
        self.waiting = len(by_seq)

    def _forget_oldest(self) -> None:
        _, (_, key) = self._by_seq.popitem(last=False)
        seqs = self._by_key[key]
        seqs.popleft()  # the oldest of its key too
        if not seqs:
            del self._by_key[key]
        self.bytes -= len(key[1])

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            outcomes = {("recognised",): float(self.recognised), ("expired",): float(self.expired),
                        ("evicted",): float(self.evicted)}
            waiting = float(len(self._by_seq))
        yield counter("ioc_cluster_echoes", "In a cluster on MQTT 3.1.1: this node's own HTTP republish received "
                      "back, by outcome: recognised (acknowledged, not counted as received again), expired or "
                      "evicted (not back in time: counted as a duplicate if it comes).", ("outcome",), outcomes)
        yield gauge("ioc_cluster_echoes_awaited", "Republished messages whose echo this node awaits.", (),
                    {(): waiting})
