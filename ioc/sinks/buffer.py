"""Where points wait: the `Buffer` protocol and the memory buffer (the disk spool is in `spool.py`).

A buffer is a FIFO of points read by transactions, as Telegraf's buffers are: `begin(n)` hands out the
oldest points (at most n) as a `Batch`, `end(batch, handled)` says how many of them, from the front, got an
outcome; the rest stays first in line for the next `begin`. The memory buffer is also the intake's side of
the sink: `add` is `Sink.submit` (back-pressure when full), and the `on_durable` callbacks are ordered by
positions in the stream of points it ever took.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ioc.errors import SinkFull
from ioc.sinks.base import DurableCallback
from ioc.sinks.ledger import Ledger


@dataclass(slots=True)
class Batch:
    """Points read from a buffer, in order, with the origin key of each (None: none known)."""

    lines: list[str]
    origins: list[str | None]
    end: int = 0  # memory: the stream position after the last point
    rows: tuple[int, int, int] = field(default=(0, 0, 0))  # spool: first row id, last row id, bytes

    def __len__(self) -> int:
        return len(self.lines)


class Buffer(Protocol):
    """A FIFO of points read by transactions."""

    @property
    def points(self) -> int:
        """Points in the buffer (those of an open transaction included)."""

    def has_room(self, count: int) -> bool:
        """Whether `count` more points fit."""

    def begin(self, max_points: int) -> Batch | None:
        """The oldest points, at most `max_points` (a spool returns at least one whole stored batch),
        or None when empty."""

    def end(self, batch: Batch, handled: int) -> None:
        """The first `handled` points of `batch` are done with; the rest stays first in line."""


class MemoryBuffer:
    """The sink's in-memory queue: submitted points, bounded, with their callbacks.

    `add` costs a lock, two list extends and a few integer updates (~1-2 µs a one-point submit), whatever
    the number of points. Positions count points ever queued: a callback is due once `durable` (every
    point before it has an outcome, or is put back to be retried) reaches its own position."""

    def __init__(self, ledger: Ledger, *, max_points: int, batch_size: int, name: str) -> None:
        self.max_points = max_points
        self.batch_size = batch_size
        self.name = name
        self._ledger = ledger
        self.lock = ledger.lock
        self.wake = threading.Condition(self.lock)  # the batching loop waits here for points or a deadline
        self._room = threading.Condition(self.lock)  # submitters wait here for room
        self._lines: list[str] = []
        self._origins: list[str | None] = []
        self.first_at = 0.0  # when the oldest queued point arrived (monotonic)
        self._seq = 0  # points ever queued
        self._taken = 0  # points ever handed out by `begin` (less those put back)
        self._durable = 0
        self._callbacks: deque[tuple[int, DurableCallback]] = deque()
        self.closed = False

    # --- intake side ---------------------------------------------------------------------------------

    def add(self, lines: list[str], origins: list[str] | None, on_durable: DurableCallback | None,
            timeout: float | None) -> None:
        """Queue points (maybe none, to order a callback); wait for room up to `timeout`, then SinkFull."""
        count = len(lines)
        with self.lock:
            if self.closed:
                raise SinkFull(f"{self.name}: closed")
            queue = self._lines
            if queue and len(queue) + count > self.max_points:
                self._wait_for_room(count, timeout)
                queue = self._lines  # `begin` may have swapped the list while we waited
            wake = False
            if count:
                if not queue:
                    self.first_at = time.monotonic()
                    wake = True  # the loop learns the batch's deadline
                queue.extend(lines)
                self._origins.extend(origins if origins is not None else [None] * count)
                self._seq += count
                self._ledger.handed += count
                if len(queue) >= self.batch_size > len(queue) - count:
                    wake = True  # a full batch is ready
            if on_durable is not None:
                self._callbacks.append((self._seq, on_durable))
                wake = wake or not count
            if wake:
                self.wake.notify()

    def _wait_for_room(self, count: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._lines and len(self._lines) + count > self.max_points:
            if self.closed:
                raise SinkFull(f"{self.name}: closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise SinkFull(f"{self.name}: queue full ({len(self._lines)} points)")
            self._room.wait(remaining)

    def has_room(self, count: int) -> bool:
        with self.lock:
            return not self.closed and (not self._lines or len(self._lines) + count <= self.max_points)

    def close(self) -> None:
        """Take no more points; wake every waiter."""
        with self.lock:
            self.closed = True
            self.wake.notify_all()
            self._room.notify_all()

    # --- the loop's side (`queued`, `ready_in` and `has_due` under the lock; the rest take it) --------

    @property
    def points(self) -> int:
        return len(self._lines) + self._ledger.in_flight

    def queued(self) -> int:
        """Points waiting, not yet handed out (call under the lock)."""
        return len(self._lines)

    def ready_in(self, now: float, interval: float, flush: bool) -> float | None:
        """Seconds until the next batch is due (0: now), None when nothing is queued (under the lock)."""
        if not self._lines:
            return None
        if flush or len(self._lines) >= self.batch_size:
            return 0.0
        return max(0.0, self.first_at + interval - now)

    def begin(self, max_points: int) -> Batch | None:
        with self.lock:
            queue = self._lines
            if not queue:
                return None
            count = min(max_points, len(queue))
            if count == len(queue):
                lines, origins = queue, self._origins
                self._lines, self._origins = [], []
            else:
                lines, origins = queue[:count], self._origins[:count]
                del queue[:count], self._origins[:count]
                self.first_at = time.monotonic()  # the rest arrived later: bounds their wait by the interval
            self._taken += count
            self._ledger.in_flight += count
            self._room.notify_all()
            return Batch(lines, origins, end=self._taken)

    def end(self, batch: Batch, handled: int) -> None:
        """Points without an outcome go back to the front (unacknowledged: their callbacks wait)."""
        with self.lock:
            rest = len(batch) - handled
            if rest:
                self._lines[:0] = batch.lines[handled:]
                self._origins[:0] = batch.origins[handled:]
                self._ledger.in_flight -= rest
                self._taken -= rest
                if len(self._lines) == rest:
                    self.first_at = time.monotonic()
            self._durable = batch.end - rest

    def due(self) -> list[DurableCallback]:
        """The callbacks whose points all have an outcome, in submission order, removed."""
        with self.lock:
            durable, callbacks = self._durable, self._callbacks
            found: list[DurableCallback] = []
            while callbacks and callbacks[0][0] <= durable:
                found.append(callbacks.popleft()[1])
            return found

    def has_due(self) -> bool:
        """Whether a callback is due (under the lock)."""
        return bool(self._callbacks) and self._callbacks[0][0] <= self._durable
