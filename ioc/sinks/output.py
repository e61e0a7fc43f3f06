"""The batching loop every sink shares (Telegraf's RunningOutput): batch -> write -> accept / split / reject.

    submit ──> MemoryBuffer ──batch──> SplittingWriter ──ok──────────> written, callbacks run
                                           │ refused (400, 413, 422, partial write): split in halves,
                                           │   a single point still refused is dead-lettered
                                           └ failed (down, 5xx, 429, 401...) ──> Spool (Outage: SPOOLING)
                                                          probes replay it ──> SplittingWriter

One thread cuts batches of `batch_size` points, or whatever is queued `flush_interval` after the first
of them, and hands each to the backend's `Writer` (through `SplittingWriter`, `split.py`). Once a batch's points all have an outcome (written,
spooled, dead-lettered, dropped) the callbacks submitted with and before them run, in submission order,
in this thread. Where a batch goes when the database fails is the `Outage` state machine's call; the
counts are the `Ledger`'s; the spool and the memory queue are `Buffer`s. A rewrite of a point is
idempotent (same series and timestamp), which is what makes splitting and replaying safe.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import structlog
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.metrics import MetricSource
from ioc.sinks.base import DurableCallback, RefusedCallback, origins_of
from ioc.sinks.buffer import Batch, Buffer, MemoryBuffer
from ioc.sinks.ledger import Held, Ledger
from ioc.sinks.outage import Outage
from ioc.sinks.split import SplittingWriter
from ioc.sinks.writer import Writer

log = structlog.get_logger("ioc.sinks")


class SpoolBuffer(Buffer, Protocol):
    """A `Buffer` on disk that batches can be appended to (`Spool`, or `NoSpool`)."""

    max_points: int
    bytes: int

    def append(self, batch: Batch) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """How a sink batches and retries (the `[influx]` keys of the same names)."""

    batch_size: int
    flush_interval: float
    queue_max_points: int
    drop_when_full: bool  # `spool_on_full = "drop"`
    retry_min: float
    retry_max: float


class _Next(Enum):
    AGAIN = "again"  # callbacks are due
    TAKE = "take"  # a batch from the memory queue
    PROBE = "probe"  # retry in an outage
    DONE = "done"  # closed and flushed, or out of time


class BatchingOutput:
    """A `Sink` over one `Writer`: build it, `start()` it, `close()` it once."""

    def __init__(self, name: str, writer: Writer, spool: SpoolBuffer, policy: Policy, *,
                 on_refused: RefusedCallback | None = None) -> None:
        self.name = name
        self._spool = spool
        self._policy = policy
        self._ledger = Ledger(spooled=spool.points)
        self._writing = SplittingWriter(name, writer, self._ledger, on_refused)
        self._memory = MemoryBuffer(self._ledger, max_points=policy.queue_max_points,
                                    batch_size=policy.batch_size, name=name)
        self._outage = Outage(name, retry_min=policy.retry_min, retry_max=policy.retry_max, spooled=spool.points)
        self._close_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._probed_last = False

    # --- the Sink protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's thread (idempotent). Points spooled by an earlier run are replayed first."""
        with self._memory.lock:
            if self._thread is not None or self._memory.closed:
                return
            self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        if self._outage.active:
            log.info("sink.spool_replay", sink=self.name, points=self._spool.points)
        self._thread.start()

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        """Queue `points` (a `Points` carries their origins). See `Sink.submit`."""
        self._memory.add(points, origins_of(points), on_durable, timeout)

    def has_room(self, points: int) -> bool:
        """False while a batch is held (nowhere to put it) or once closed."""
        return not self._outage.holding and self._memory.has_room(points)

    def problems(self) -> list[str]:
        """A closed or dead sink, a full spool, a failing spool disk, a failure that needs a person. An
        outage alone is not one: the spool takes the points."""
        found: list[str] = []
        if self._memory.closed:
            found.append(f"{self.name}: closed")
        elif self._thread is not None and not self._thread.is_alive():
            found.append(f"{self.name}: writer thread stopped")
        return found + self._outage.problems(spooled=self._ledger.spooled, held=self._memory.points,
                                             spool_max=self._spool.max_points)

    def metrics(self) -> MetricSource:
        return self._collect

    def _collect(self) -> Iterable[Metric]:
        return self._ledger.collect(self.name, self._memory.queued, lambda: self._spool.bytes,
                                    self._outage.metrics)

    def close(self, timeout: float) -> None:
        """Stop taking points, write or spool what is queued, run the callbacks, stop the thread; give
        up after `timeout` seconds (what is left stays counted as queued, its callbacks do not run)."""
        with self._memory.lock:
            first = not self._memory.closed
            if first:
                self._close_deadline = time.monotonic() + timeout
            thread = self._thread
        self._memory.close()
        if thread is None:
            if first:
                self._run()  # never started: flush in the caller's thread, within the deadline
            else:
                self._finished.wait(timeout)
            return
        if thread is threading.current_thread():
            return  # called from a callback: the loop finishes by itself
        thread.join(timeout)
        if thread.is_alive():
            log.warning("sink.close_timeout", sink=self.name, queued=self._memory.points,
                        spooled=self._ledger.spooled)

    # --- the loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._step():
                        break
                except Exception:
                    # A bug must not silently stop the sink; the points it held stay counted as queued.
                    log.exception("sink.writer_error", sink=self.name)
                    time.sleep(1.0)
        finally:
            self._fire_due()
            self._spool.close()
            self._writing.close()
            self._finished.set()

    def _step(self) -> bool:
        self._fire_due()
        action = self._next()
        if action is _Next.PROBE:
            self._probe()
        elif action is _Next.TAKE:
            batch = self._memory.begin(self._policy.batch_size)
            if batch is not None:
                self._handle(batch)
        return action is not _Next.DONE

    def _next(self) -> _Next:
        """Wait for the next thing to do."""
        memory, outage = self._memory, self._outage
        with memory.lock:
            while True:
                now = time.monotonic()
                if memory.has_due():
                    return _Next.AGAIN
                closing = memory.closed
                if closing and now >= self._close_deadline:
                    return _Next.DONE
                # While closing, probe only when that is the way to make room for what is queued.
                probe = outage.active and now >= outage.next_probe and (not closing or outage.holding)
                ready = None if outage.holding else memory.ready_in(now, self._policy.flush_interval, closing)
                # Spooling new batches and replaying old ones take turns, so a long replay never stops
                # the queue from moving and a busy queue never stops the replay.
                if ready == 0.0 and not (probe and not self._probed_last):
                    self._probed_last = False
                    return _Next.TAKE
                if closing and not memory.queued():
                    return _Next.DONE
                if probe:
                    self._probed_last = True
                    return _Next.PROBE
                waits = [ready] if ready is not None else []
                if outage.active:
                    waits.append(outage.next_probe - now)
                if closing:
                    waits.append(self._close_deadline - now)
                memory.wake.wait(max(0.0, min(waits)) if waits else None)

    def _handle(self, batch: Batch) -> None:
        """A new batch from the memory queue: written, or spooled in an outage."""
        handled = 0
        if not self._outage.active:
            handled, error = self._writing.write(batch, Held.MEMORY)
            if error is None:
                self._memory.end(batch, handled)
                return
            self._outage.write_failed(error, spooled=self._ledger.spooled)
        self._park(batch, handled)

    def _park(self, batch: Batch, handled: int) -> None:
        """Spool the points of a memory batch from `handled` on; when the spool is full, drop them
        (policy `drop`) or hold them; when its disk fails, hold them (never drop: nothing was
        acknowledged, nothing may be). Held points go back to the front of the memory queue."""
        count, spool, outage = len(batch) - handled, self._spool, self._outage
        sizes = {"points": count, "spooled": self._ledger.spooled, "max_points": spool.max_points}
        if spool.has_room(count):
            rest = batch if not handled else Batch(batch.lines[handled:], batch.origins[handled:])
            try:
                spool.append(rest)
            except (sqlite3.Error, OSError) as error:  # what a full or failing disk raises through SQLite
                outage.spool_refused(f"{type(error).__name__}: {error}", **sizes)
                self._memory.end(batch, handled)
                return
            if failpoints.ACTIVE:
                failpoints.hit("spool.after_write")
            self._ledger.spooled_from_memory(count)
            outage.spool_took()
        elif self._policy.drop_when_full:
            self._ledger.settle(Held.MEMORY, "dropped", count, reason="spool_full")
            outage.dropping(**sizes)
        else:
            outage.spool_refused(None, **sizes)
            self._memory.end(batch, handled)
            return
        self._memory.end(batch, len(batch))

    def _probe(self) -> None:
        """In an outage: retry the held batch or the oldest spooled one (see `Outage`)."""
        outage, spool = self._outage, self._spool
        source: Buffer = spool
        held = Held.SPOOL
        if outage.holding and (outage.spool_error is not None or not spool.points):
            source, held = self._memory, Held.MEMORY
        batch = source.begin(self._policy.batch_size)
        if batch is None:  # nothing left to replay
            outage.ended()
            return
        handled, error = self._writing.write(batch, held)
        if error is not None:
            outage.write_failed(error, spooled=self._ledger.spooled)
            if held is Held.MEMORY:
                self._park(batch, handled)  # perhaps the spool takes it now
            else:
                spool.end(batch, handled)
            return
        source.end(batch, handled)
        outage.probe_succeeded(len(batch), spool_empty=not spool.points,
                               spool_has_room=spool.has_room(self._policy.batch_size))

    def _fire_due(self) -> None:
        """Run the callbacks whose points all have an outcome, in submission order."""
        for callback in self._memory.due():
            try:
                callback()
            except Exception:
                log.exception("sink.callback_failed", sink=self.name)
