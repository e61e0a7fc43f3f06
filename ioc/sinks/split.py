"""Accept / split / reject: one batch through a `Writer`, as the batching loop hands it over.

The whole batch is one request. When the server refuses points themselves (400, 413, 422, InfluxDB 1.x
`partial write`) the batch is split in halves and each half rewritten, recursively, and a single point
still refused is dead-lettered (counted, logged, and given to `on_refused` with its origin), so one bad
point never blocks the queue. Rewriting is safe: a point rewritten is the same series and timestamp. Any
other failure stops the batch: the points from there on are the caller's to spool or hold.
"""

from __future__ import annotations

import time

import structlog

from ioc import failpoints
from ioc.sinks.base import Origin, RefusedCallback
from ioc.sinks.buffer import Batch
from ioc.sinks.ledger import Held, Ledger
from ioc.sinks.writer import WriteError, Writer

log = structlog.get_logger("ioc.sinks")


class SplittingWriter:
    def __init__(self, name: str, writer: Writer, ledger: Ledger, on_refused: RefusedCallback | None) -> None:
        self.name = name
        self._writer = writer
        self._ledger = ledger
        self._on_refused = on_refused

    def write(self, batch: Batch, held: Held) -> tuple[int, WriteError | None]:
        """Write the batch, splitting on refusals and dead-lettering single refused points. Returns how
        many points from the front have an outcome, and the error that stopped it (None: all)."""
        lines = batch.lines
        pending = [(0, len(lines))]  # a stack of [start, end) segments; the next to write is on top
        while pending:
            start, end = pending.pop()
            try:
                self._write_once(lines if end - start == len(lines) else lines[start:end])
            except WriteError as error:
                if not error.splittable:
                    return start, error
                if end - start == 1:
                    self._refuse(batch, start, str(error), held)
                else:
                    middle = (start + end) // 2
                    pending += [(middle, end), (start, middle)]
                continue
            self._ledger.settle(held, "written", end - start)
        return len(lines), None

    def _write_once(self, points: list[str]) -> None:
        """One request, timed and counted; an unexpected exception becomes a retryable WriteError."""
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
            self._ledger.request(time.monotonic() - started, None)
            return
        self._ledger.request(time.monotonic() - started, failure.kind)
        raise failure

    def _refuse(self, batch: Batch, index: int, reason: str, held: Held) -> None:
        """A single point the database refuses for good: dead-letter it to its origin."""
        self._ledger.settle(held, "dead_lettered", 1)
        point, origin = batch.lines[index], Origin.of(batch.origins[index])
        log.warning("sink.point_refused", sink=self.name, reason=reason, point=point[:500],
                    source=origin.source if origin else None, event_id=origin.event_id if origin else None)
        if self._on_refused is not None:
            try:
                self._on_refused(reason, point, origin)
            except Exception:
                log.exception("sink.on_refused_failed", sink=self.name)

    def close(self) -> None:
        self._writer.close()
