"""The InfluxDB sink: a bounded queue, one writer thread, a disk spool for outages.

Flow of a point: `submit` appends it to an in-memory queue (a list extend under a lock: the MQTT thread
calls it for every message). The writer thread cuts batches of `batch_size` points, or whatever is queued
`flush_interval` after the first of them, and POSTs each batch. Once a batch is handled for good (written,
spooled, dead-lettered or dropped) the callbacks submitted with and before its points run, in submission
order, in the writer thread.

Failures:
- The server refuses points (400, 413, 422, InfluxDB 1.x `partial write`): the batch is split in halves
  and rewritten (a rewrite of the same series and timestamp is idempotent); a single point still refused is
  dead-lettered through `on_refused`, so one bad point never blocks the queue.
- Anything else (unreachable, timeout, 5xx, 429, and also 401/403 and other 4xx, since a configuration
  mistake must not lose data): the batch goes to the spool and the sink enters *outage* mode, where every
  new batch is appended to the spool behind it (to keep order) and a probe retries the oldest spooled batch
  with jittered exponential backoff, or after the server's Retry-After. A successful probe drains the spool
  oldest first, then the sink writes directly again.
- The spool full: `spool_on_full = "block"` stops taking from the queue (so `submit` blocks: back-pressure
  to intake), `"drop"` drops new batches and counts them as `dropped{reason="spool_full"}`.
- The spool's disk failing (an I/O error, a full or read-only disk, SQLite refusing the write): whatever the
  policy, the batch is held in memory, unacknowledged (its events are durable nowhere yet), and the writer
  takes nothing more from the queue (back-pressure, as for a full spool); each probe retries the held
  batch into InfluxDB, then into the spool, until one takes it. `problems()` names the failure meanwhile.

Counting rule (docs/metrics.md), true at every instant a scrape sees under the lock: handed = written +
dead_lettered + dropped + queue + spool, where the queue gauge includes the batch being written.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.config import InfluxSettings
from ioc.errors import SinkFull
from ioc.metrics import MetricSource, counter, gauge
from ioc.sinks.base import DurableCallback
from ioc.sinks.influx.spool import Spool, SpooledBatch
from ioc.sinks.influx.writers import WriteError, Writer, make_writer

log = structlog.get_logger("ioc.sinks.influx")

RefusedCallback = Callable[[str, str], None]
ERROR_KINDS = ("timeout", "connection", "http_5xx", "http_429", "http_4xx", "auth")
_MIN_BACKOFF = 0.01  # seconds; a zero retry_min must not become a busy loop
_Source = Literal["queue", "spool"]


class InfluxSink:
    """A `Sink` writing line protocol to InfluxDB (1.x `/write` or the v2 API), spooling to SQLite
    while the server cannot take the points. Build it, `start()` it, `close()` it once."""

    def __init__(self, settings: InfluxSettings, *, spool_path: str | Path, name: str = "influx",
                 on_refused: RefusedCallback | None = None) -> None:
        self.name = name
        self._settings = settings
        self._on_refused = on_refused
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._queue_max = settings.queue_max_points
        self._drop_when_full = settings.spool_on_full == "drop"
        self._writer: Writer = make_writer(settings)
        self._spool = Spool(spool_path, sink=name, max_points=settings.spool_max_points)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for points or a deadline
        self._room = threading.Condition(self._lock)  # submitters wait here for room in the queue
        self._queue: list[str] = []
        self._first_at = 0.0  # when the oldest queued point arrived (monotonic)
        # Positions in the stream of points ever queued: a callback is due once `_durable` reaches its own.
        self._seq = 0
        self._taken = 0
        self._durable = 0
        self._callbacks: deque[tuple[int, DurableCallback]] = deque()
        self._closing = False
        self._close_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()

        # Counters; all under `_lock`, so a scrape sees them consistent. Points an earlier run spooled
        # count as handed to this one, which will write them.
        self._handed = self._spool.points
        self._written = 0
        self._dead_lettered = 0
        self._dropped: dict[str, int] = {"spool_full": 0}
        self._inflight = 0  # taken from the queue, not yet handled
        self._spooled = self._spool.points  # spooled and not yet handled (the spool's rows minus replayed)
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._batches_written = 0
        self._write_seconds = 0.0

        # Outage state, owned by the writer thread (other threads only read it).
        self._outage = self._spool.points > 0  # replay what an earlier run left in the spool
        self._outage_since = time.monotonic()
        self._replayed = 0
        self._attempt = 0
        self._next_probe = 0.0
        self._held: list[str] | None = None  # a failed batch the spool could not take: retried from memory
        self._spool_error: str | None = None  # why the spool's disk refused the held batch (None: it was full)
        self._held_end = 0
        self._blocked = False  # the spool is full and the policy is to block
        self._spool_full = False
        self._config_problem: str | None = None  # a failure that will not heal by itself (401, 404...)
        self._last_error: str | None = None
        self._spool_full_logged = False
        self._probed_last = False

    # --- the Sink protocol ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (idempotent). Points spooled by an earlier run are replayed first."""
        with self._lock:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        if self._outage:
            log.info("sink.spool_replay", sink=self.name, points=self._spool.points)
        self._thread.start()

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None:
        """Queue `points` (may be empty, to order `on_durable` behind earlier points). Blocks while the
        queue is full, up to `timeout` seconds (None: as long as it takes), then raises SinkFull.

        Cost: a lock, a list extend and a few integer updates (~1 µs for a one-point submit, measured by
        tests/integration/test_influx_sink.py::test_submit_cost), whatever the number of points."""
        count = len(points)
        with self._lock:
            if self._closing:
                raise SinkFull(f"{self.name}: closed")
            queue = self._queue
            if queue and len(queue) + count > self._queue_max:
                self._wait_for_room(count, timeout)
                queue = self._queue  # the writer may have swapped the list while we waited
            wake = False
            if count:
                if not queue:
                    self._first_at = time.monotonic()
                    wake = True  # the writer learns the batch deadline
                queue.extend(points)
                self._seq += count
                self._handed += count
                if len(queue) >= self._batch_size > len(queue) - count:
                    wake = True
            if on_durable is not None:
                self._callbacks.append((self._seq, on_durable))
                wake = wake or not count
            if wake:
                self._wake.notify()

    def has_room(self, points: int) -> bool:
        """Whether `points` more would be queued now without waiting (false while the spool is full and
        the policy is to block, or once closed)."""
        with self._lock:
            if self._closing or self._blocked:
                return False
            return not self._queue or len(self._queue) + points <= self._queue_max

    def problems(self) -> list[str]:
        """Failing readiness checks: a full spool, a closed or dead sink, a failure that needs a person
        (authentication, a wrong URL). An outage alone is not one: the spool takes the points."""
        found: list[str] = []
        with self._lock:
            spooled = self._spooled
            if self._closing:
                found.append(f"{self.name}: closed")
            elif self._thread is not None and not self._thread.is_alive():
                found.append(f"{self.name}: writer thread stopped")
            if self._spool_full:
                found.append(f"{self.name}: spool full ({spooled} points)")
            if self._spool_error is not None:
                held = len(self._held or ())
                found.append(f"{self.name}: spool write failed ({self._spool_error}), holding {held} points")
            if self._config_problem is not None:
                found.append(f"{self.name}: {self._config_problem}, spooling ({spooled} points)")
        return found

    def metrics(self) -> MetricSource:
        """The sink's metric families, labelled `sink=name` (see the module docstring for the rule)."""
        return self._collect

    def close(self, timeout: float) -> None:
        """Stop taking points, write or spool what is queued, run the remaining callbacks, stop the
        thread; give up waiting after `timeout` seconds (points left are still counted as queued).
        Safe to call more than once."""
        with self._lock:
            first = not self._closing
            if first:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
            self._wake.notify()
            self._room.notify_all()
            thread = self._thread
        if thread is None:
            if first:
                self._run()  # never started: flush in the caller's thread, within the deadline
            else:
                self._finished.wait(timeout)
            return
        if thread is threading.current_thread():
            return  # called from a callback: the writer finishes by itself
        thread.join(timeout)
        if thread.is_alive():
            log.warning("sink.close_timeout", sink=self.name, queued=len(self._queue) + self._inflight,
                        spooled=self._spooled)

    # --- state for logs and status --------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        """Whether new points go to the spool because the server cannot take them."""
        return self._outage

    @property
    def last_error(self) -> str | None:
        """The last write failure (not cleared by a success, for logs and status pages)."""
        return self._last_error

    def status(self) -> dict[str, object]:
        """A snapshot for logs and status pages."""
        with self._lock:
            return {"sink": self.name, "outage": self._outage, "last_error": self._last_error,
                    "queued": len(self._queue) + self._inflight, "spooled": self._spooled,
                    "spool_full": self._spool_full}

    # --- submit helpers -------------------------------------------------------------------------------

    def _wait_for_room(self, count: int, timeout: float | None) -> None:
        """Wait (holding the lock's condition) until `count` points fit; raise SinkFull at the deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue and len(self._queue) + count > self._queue_max:
            if self._closing:
                raise SinkFull(f"{self.name}: closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise SinkFull(f"{self.name}: queue full ({len(self._queue)} points)")
            self._room.wait(remaining)

    # --- the writer thread ----------------------------------------------------------------------------

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
            self._writer.close()
            self._finished.set()

    def _step(self) -> bool:
        """Do the next thing: run due callbacks, probe, or handle a batch. False when done (closing)."""
        if self._fire_due():
            return True
        action, batch, end = self._next_action()
        if action == "done":
            return False
        if action == "probe":
            self._probe()
        elif action == "spool":
            self._park(batch, end, "queue")
        elif action == "write":
            self._deliver(batch, end)
        return True

    def _next_action(self) -> tuple[str, list[str], int]:
        """Wait for something to do: ("write" | "spool", batch, end position), ("probe", ...),
        ("again", ...) when callbacks are due, ("done", ...) when closed and flushed or out of time."""
        with self._lock:
            while True:
                now = time.monotonic()
                if self._callbacks and self._callbacks[0][0] <= self._durable:
                    return "again", [], 0
                if self._closing and now >= self._close_deadline:
                    return "done", [], 0
                # While closing, probe only when that is the way to make room for what is queued.
                probe = self._outage and now >= self._next_probe and (
                    not self._closing or self._held is not None or self._blocked)
                queue = self._queue
                wait: float | None = None
                if queue:
                    due = self._first_at + self._flush_interval
                    if len(queue) >= self._batch_size or self._closing or now >= due:
                        count = min(self._batch_size, len(queue))
                        # Spooling new batches and replaying old ones take turns, so a long replay
                        # never stops the queue from moving and a busy queue never stops the replay.
                        if self._can_take(count) and not (probe and not self._probed_last):
                            batch, end = self._take(count, now)
                            self._blocked = False
                            self._probed_last = False
                            return ("spool" if self._outage else "write"), batch, end
                        if self._held is None and not self._drop_when_full and not self._can_take(count):
                            self._note_spool_full()
                    else:
                        wait = due - now
                elif self._closing:
                    return "done", [], 0
                if probe:
                    self._probed_last = True
                    return "probe", [], 0
                if self._outage:
                    probe_in = max(0.0, self._next_probe - now)
                    wait = probe_in if wait is None else min(wait, probe_in)
                if self._closing:
                    until_deadline = max(0.0, self._close_deadline - now)
                    wait = until_deadline if wait is None else min(wait, until_deadline)
                self._wake.wait(wait)

    def _can_take(self, count: int) -> bool:
        """Whether the next batch has somewhere to go (called under the lock)."""
        if self._held is not None:
            return False
        return not self._outage or self._spool.has_room(count) or self._drop_when_full

    def _take(self, count: int, now: float) -> tuple[list[str], int]:
        """Cut the next batch from the queue (under the lock)."""
        queue = self._queue
        if count == len(queue):
            batch = queue
            self._queue = []
        else:
            batch = queue[:count]
            del queue[:count]
            self._first_at = now  # the rest arrived later; this bounds their wait by flush_interval
        self._taken += count
        self._inflight += count
        self._room.notify_all()
        return batch, self._taken

    def _note_spool_full(self) -> None:
        """The spool cannot take the next batch and the policy is to block (under the lock)."""
        self._blocked = True
        self._spool_full = True
        if not self._spool_full_logged:
            self._spool_full_logged = True
            log.warning("sink.spool_full", sink=self.name, policy="block", spooled=self._spooled,
                        max_points=self._spool.max_points)

    def _fire_due(self) -> bool:
        """Run the callbacks whose points are all handled, in submission order. True if any ran."""
        with self._lock:
            durable, callbacks = self._durable, self._callbacks
            due: list[DurableCallback] = []
            while callbacks and callbacks[0][0] <= durable:
                due.append(callbacks.popleft()[1])
        for callback in due:
            try:
                callback()
            except Exception:
                log.exception("sink.callback_failed", sink=self.name)
        return bool(due)

    def _deliver(self, batch: list[str], end: int) -> None:
        """Write a batch in direct mode; on failure, spool what was not written and start an outage."""
        remainder, error = self._write(batch, "queue")
        if error is None:
            with self._lock:
                self._durable = end
                self._spool_full = False
                self._spool_full_logged = False
            return
        self._start_outage(error)
        self._park(remainder, end, "queue")

    def _park(self, points: list[str], end: int, source: _Source) -> None:
        """Put in-flight points in the spool; when it is full, drop them or hold them in memory; when its
        disk fails, hold them in memory (never drop: nothing was acknowledged, nothing may be)."""
        count = len(points)
        if self._spool.has_room(count):
            if not self._spool_points(points, end):
                self._hold(points, end)
            return
        if self._drop_when_full:
            reason = "spool_full"
            with self._lock:
                self._inflight -= count
                self._dropped[reason] = self._dropped.get(reason, 0) + count
                self._durable = end
                self._spool_full = True
                first = not self._spool_full_logged
                self._spool_full_logged = True
            if first:
                log.warning("sink.spool_full", sink=self.name, policy="drop", spooled=self._spooled,
                            max_points=self._spool.max_points, dropped=count)
            return
        self._hold(points, end)

    def _spool_points(self, points: list[str], end: int) -> bool:
        """Append in-flight points (ending at position `end`) to the spool and count them durable. False,
        with nothing changed, when the disk refuses the write (an OSError is what a full or failing disk
        raises through SQLite's VFS and what the `spool.write` failpoint raises)."""
        try:
            self._spool.append(points)
        except (sqlite3.Error, OSError) as error:
            first = self._spool_error is None
            self._spool_error = f"{type(error).__name__}: {error}"
            if first:  # one line per episode; each probe's retry is counted by sink.write_failed
                log.error("sink.spool_failed", sink=self.name, error=self._spool_error, points=len(points),
                          effect="held in memory, unacknowledged, retried")
            return False
        if failpoints.ACTIVE:
            failpoints.hit("spool.after_write")
        if self._spool_error is not None:
            log.info("sink.spool_recovered", sink=self.name)
        count = len(points)
        with self._lock:
            self._spool_error = None
            self._inflight -= count
            self._spooled += count
            self._durable = end
            self._spool_full = False
            self._spool_full_logged = False
        return True

    def _hold(self, points: list[str], end: int) -> None:
        """Keep a batch nobody could take in memory, unacknowledged, and retry it before anything else;
        the writer takes nothing more from the queue meanwhile (back-pressure up to intake)."""
        with self._lock:
            self._held, self._held_end = points, end
            self._blocked = True
            if self._spool_error is None:
                self._note_spool_full()

    def _probe(self) -> None:
        """In an outage: retry the held batch or the oldest spooled one; on success keep draining."""
        spooled: SpooledBatch | None = None
        source: _Source = "queue"
        if self._held is not None:
            points = self._held
        else:
            spooled = self._spool.peek(self._batch_size)
            if spooled is None:
                self._end_outage()
                return
            points, source = spooled.points, "spool"
        remainder, error = self._write(points, source)
        if spooled is None:
            if error is None:
                with self._lock:
                    self._held = None
                    self._durable = self._held_end
                    self._blocked = False
            elif self._spool_error is not None and remainder and self._spool.has_room(len(remainder)) \
                    and self._spool_points(remainder, self._held_end):
                with self._lock:  # the disk took it back: spooled and durable, the outage goes on
                    self._held = None
                    self._blocked = False
            else:
                self._held = remainder
        elif error is None:
            self._spool.delete(spooled)
        else:
            self._spool.replace(spooled, remainder)
        if error is not None:
            self._retry_later(error)
            return
        self._replayed += len(points)
        self._attempt = 0
        self._next_probe = 0.0  # keep draining
        self._config_problem = None
        with self._lock:
            if self._spool_full and self._spool.has_room(self._batch_size):
                self._spool_full = False
                self._spool_full_logged = False
                self._blocked = False
        if self._held is None and self._spool.points == 0:
            self._end_outage()

    def _write(self, points: list[str], source: _Source) -> tuple[list[str], WriteError | None]:
        """Write `points`, splitting on refusals and dead-lettering single refused points. Returns the
        points not handled (in order) and the error that stopped it, or ([], None)."""
        pending = [points]  # a stack: the next segment to write is on top
        while pending:
            segment = pending.pop()
            try:
                self._write_once(segment)
            except WriteError as error:
                if not error.splittable:
                    return list(itertools.chain(segment, *reversed(pending))), error
                if len(segment) == 1:
                    self._refuse(segment[0], str(error), source)
                else:
                    middle = len(segment) // 2
                    pending.append(segment[middle:])
                    pending.append(segment[:middle])
                continue
            with self._lock:
                self._written += len(segment)
                if source == "queue":
                    self._inflight -= len(segment)
                else:
                    self._spooled -= len(segment)
        return [], None

    def _write_once(self, points: list[str]) -> None:
        """One POST, timed and counted; an unexpected exception becomes a retryable WriteError."""
        started = time.monotonic()
        try:
            if failpoints.ACTIVE:
                failpoints.hit("sink.before_write")
            self._writer.write(points)
        except WriteError as error:
            failure = error
        except failpoints.FailpointError as error:  # as a socket error would: no traceback for it
            failure = WriteError(str(error), kind="connection", retryable=True)
        except Exception as error:  # a bug in a library must not lose the batch: retry it later
            log.exception("sink.writer_unexpected", sink=self.name)
            failure = WriteError(f"unexpected: {type(error).__name__}: {error}", kind="connection",
                                 retryable=True)
        else:
            with self._lock:
                self._write_seconds += time.monotonic() - started
                self._batches_written += 1
            return
        with self._lock:
            self._write_seconds += time.monotonic() - started
            self._errors[failure.kind] = self._errors.get(failure.kind, 0) + 1
        self._last_error = str(failure)
        raise failure

    def _refuse(self, point: str, reason: str, source: _Source) -> None:
        """A single point the server refuses for good: dead-letter it."""
        with self._lock:
            self._dead_lettered += 1
            if source == "queue":
                self._inflight -= 1
            else:
                self._spooled -= 1
        log.warning("sink.point_refused", sink=self.name, reason=reason, point=point[:500])
        if self._on_refused is not None:
            try:
                self._on_refused(reason, point)
            except Exception:
                log.exception("sink.on_refused_failed", sink=self.name)

    # --- outage ---------------------------------------------------------------------------------------

    def _start_outage(self, error: WriteError) -> None:
        self._outage = True
        self._outage_since = time.monotonic()
        self._replayed = 0
        self._attempt = 0
        log.warning("sink.outage_started", sink=self.name, kind=error.kind, status=error.status,
                    error=str(error))
        self._retry_later(error)

    def _retry_later(self, error: WriteError) -> None:
        delay = self._backoff(error)
        if error.kind == "auth" or not error.retryable:
            self._config_problem = str(error)
        log.warning("sink.write_failed", sink=self.name, kind=error.kind, status=error.status,
                    error=str(error), attempt=self._attempt + 1, retry_in=round(delay, 3),
                    spooled=self._spooled)
        self._attempt += 1
        self._next_probe = time.monotonic() + delay

    def _backoff(self, error: WriteError) -> float:
        """Seconds before the next probe: the server's Retry-After, else exponential from retry_min to
        retry_max with equal jitter (so daemons restarted together do not knock at the same instant)."""
        if error.retry_after is not None:
            return error.retry_after
        low = max(self._settings.retry_min, _MIN_BACKOFF)
        high = max(self._settings.retry_max, low)
        cap = min(high, low * 2.0 ** min(self._attempt, 62))
        return max(low, random.uniform(cap / 2.0, cap))

    def _end_outage(self) -> None:
        if self._outage:
            log.info("sink.outage_ended", sink=self.name, points_replayed=self._replayed,
                     duration=round(time.monotonic() - self._outage_since, 3))
        self._config_problem = None
        self._attempt = 0
        with self._lock:
            self._spool_error = None  # the spool is not needed now; its next write will tell
            self._blocked = False
            self._spool_full = False
            self._spool_full_logged = False
            self._outage = False  # last: a reader seeing it false sees everything above settled

    # --- metrics --------------------------------------------------------------------------------------

    def _collect(self) -> Iterable[Metric]:
        with self._lock:
            handed, written, dead = self._handed, self._written, self._dead_lettered
            dropped = dict(self._dropped)
            queued = len(self._queue) + self._inflight
            spooled, spool_bytes = self._spooled, self._spool.bytes
            errors = dict(self._errors)
            batches, seconds = self._batches_written, self._write_seconds
            outage = self._outage
        sink = self.name
        points: dict[tuple[str, ...], float] = {(sink, "written", ""): float(written), (sink, "dead_lettered", ""): float(dead)}
        for reason, count in dropped.items():
            points[(sink, "dropped", reason)] = float(count)
        yield counter("ioc_sink_points_handed", "Points handed to the sink.", ("sink",),
                      {(sink,): float(handed)})
        yield counter("ioc_sink_points", "Points handled for good, by outcome (and reason when dropped).",
                      ("sink", "outcome", "reason"), points)
        yield gauge("ioc_sink_queue_points", "Points in memory: queued or being written.", ("sink",),
                    {(sink,): float(queued)})
        yield gauge("ioc_sink_spool_points", "Points in the disk spool, waiting for the database.",
                    ("sink",), {(sink,): float(spooled)})
        yield gauge("ioc_sink_spool_bytes", "Bytes of points in the disk spool.", ("sink",),
                    {(sink,): float(spool_bytes)})
        yield counter("ioc_sink_write_errors", "Failed write requests, by kind.", ("sink", "kind"),
                      {(sink, kind): float(count) for kind, count in errors.items()})
        yield counter("ioc_sink_batches_written", "Write requests that succeeded.", ("sink",),
                      {(sink,): float(batches)})
        yield counter("ioc_sink_write_seconds", "Seconds spent in write requests.", ("sink",),
                      {(sink,): seconds})
        yield gauge("ioc_sink_outage", "1 while the database cannot take points and they are spooled.",
                    ("sink",), {(sink,): 1.0 if outage else 0.0})
