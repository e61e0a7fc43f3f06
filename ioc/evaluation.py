"""The evaluation thread: accepted events -> aggregators (KPIs) -> rule engine -> alerts.

The intake hands each admitted batch over (`offer`) and goes back to its broker or client; one thread
of its own then feeds the aggregators and the rule engine in arrival order, and once a second moves
their timers to the `EventClock` (overdue dossiers, `for`, windows, absence fire with no event). KPIs
the aggregators publish reach the rule engine through the `KpiBoard` listener installed by the daemon,
in this same thread, so the engine sees one ordered stream.

The queue is bounded (`max_events`): when it is full the intake waits (counted in
`ioc_evaluation_waits_total`), so KPIs and alerts never silently miss an event; the waits show that the
rules need a faster machine or fewer rules.

Acknowledged means evaluated: a batch handed over with an `on_done` callback (someone waits for
durability: MQTT QoS 1, HTTP) is called back only once the batch's alert changes are committed
(`around_batch`) and the trackers' rows are written (`persist`). A crash between the sinks' durability and
the evaluation then leaves the event unacknowledged, so the broker or the vendor sends it again, instead
of an event stored but never seen by the rules. (The rule engine's own timers and windows are saved every
RULE_STATE_EVERY seconds by the daemon, not per batch: see the README.)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import structlog
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.clock import EventClock
from ioc.envelope import AnyEvent, event_time_ns
from ioc.metrics import MetricSource, counter, gauge

log = structlog.get_logger("ioc.evaluation")

TICK_INTERVAL = 1.0  # seconds between timer runs
DEFAULT_MAX_EVENTS = 200_000


class Stage(Protocol):
    """What the evaluation thread drives: the aggregators and the rule engine both look like this."""

    def observe(self, event: AnyEvent) -> None: ...

    def advance(self, now: float) -> None: ...


class Evaluator:
    def __init__(self, stages: Sequence[Stage], clock: EventClock, *, on_tick: Sequence[Callable[[], None]] = (),
                 around_batch: Callable[[], AbstractContextManager[None]] = nullcontext,
                 persist: Sequence[Callable[[], None]] = (),
                 max_events: int = DEFAULT_MAX_EVENTS, tick_interval: float = TICK_INTERVAL) -> None:
        self.stages = list(stages)
        # Entered around each batch of events and each tick (the alert manager stores a batch's
        # changes in one transaction).
        self.around_batch = around_batch
        self.on_tick = list(on_tick)  # wall-clock housekeeping run in this thread (the alert manager's)
        # Write the stages' buffered state (the trackers' rows) before a waiting batch is called back.
        self.persist = list(persist)
        self.clock = clock
        self._max_events = max_events
        self._tick_interval = tick_interval
        self._queue: deque[AnyEvent] = deque()
        self._waiting: list[Callable[[], None]] = []  # on_done of the queued batches
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._processed = 0
        self._waits = 0
        self._errors: dict[tuple[str], int] = {}
        self._ticks = 0

    # --- the intake's side ---------------------------------------------------------------------------

    def offer(self, events: Sequence[AnyEvent], on_done: Callable[[], None] | None = None) -> None:
        """Queue accepted events (the pipeline's `Evaluation`); waits while the queue is full. `on_done`
        runs in this thread once the events are evaluated and their effects stored."""
        with self._cond:
            if len(self._queue) + len(events) > self._max_events and not self._closing:
                self._waits += 1
                self._cond.wait_for(lambda: len(self._queue) < self._max_events or self._closing)
            self._queue.extend(events)
            if on_done is not None:
                self._waiting.append(on_done)
            self._cond.notify_all()

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="evaluation", daemon=True)
        self._thread.start()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event has been evaluated (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Evaluate what is queued (up to `timeout`), run the timers once more, stop the thread."""
        self.drain(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._closing,
                                    max(0.0, next_tick - time.monotonic()))
                if self._closing and not self._queue:
                    break
                batch = list(self._queue)
                self._queue.clear()
                waiting, self._waiting = self._waiting, []
                self._busy = bool(batch)
                self._cond.notify_all()  # room again for a waiting intake
            if failpoints.ACTIVE and batch:
                failpoints.hit("evaluation.before_batch")
            with self._guarded_batch():
                for event in batch:
                    self.evaluate(event)
                if time.monotonic() >= next_tick:
                    self.tick()
                    next_tick = time.monotonic() + self._tick_interval
            if waiting:
                self._release(waiting)
        with self._guarded_batch():
            self.tick()

    def _release(self, waiting: list[Callable[[], None]]) -> None:
        """The batch's alert changes are committed (`around_batch` has exited): write the trackers' rows,
        then call back whoever waits (acknowledgements, 202s)."""
        for persist in self.persist:
            try:
                persist()
            except Exception:  # a failed write is the tracker's to report; the events were evaluated
                self._failed(persist, "persist")
        for on_done in waiting:
            try:
                on_done()
            except Exception:
                self._failed(on_done, "on_done")

    def _guarded_batch(self) -> AbstractContextManager[None]:
        try:
            return self.around_batch()
        except Exception:  # a broken hook must not stop the evaluation
            self._failed(self.around_batch, "batch")
            return nullcontext()

    def evaluate(self, event: AnyEvent) -> None:
        """One event through every stage, in order (the thread's work; also for tests and tools)."""
        self.clock.observe(event_time_ns(event.time) / 1e9)
        for stage in self.stages:
            try:
                stage.observe(event)
            except Exception:  # a stage's bug costs that stage this event, never the others
                self._failed(stage, "observe")
        self._processed += 1

    def tick(self) -> None:
        """Move every stage's timers to the clock's now (when it is known), then run `on_tick`."""
        now = self.clock.now()
        if now is not None:
            for stage in self.stages:
                try:
                    stage.advance(now)
                except Exception:
                    self._failed(stage, "advance")
        for housekeeping in self.on_tick:
            try:
                housekeeping()
            except Exception:
                self._failed(housekeeping, "tick")
        self._ticks += 1

    def _failed(self, stage: object, step: str) -> None:
        name = getattr(stage, "__qualname__", None) or type(stage).__name__
        key = (name,)
        first = key not in self._errors
        self._errors[key] = self._errors.get(key, 0) + 1
        if first or self._errors[key] % 1000 == 0:
            log.exception("evaluation.stage_failed", stage=name, step=step, errors=self._errors[key])

    # --- metrics -------------------------------------------------------------------------------------

    def metrics(self) -> MetricSource:
        return self._collect

    def _collect(self) -> Iterable[Metric]:
        yield gauge("ioc_evaluation_queue_events", "Accepted events waiting for aggregators and rules.", (),
                    {(): float(len(self._queue))})
        yield counter("ioc_evaluation_events", "Events evaluated by aggregators and rules.", (),
                      {(): float(self._processed)})
        yield counter("ioc_evaluation_waits", "Times the intake waited for room in the evaluation queue.", (),
                      {(): float(self._waits)})
        yield counter("ioc_evaluation_errors", "Stage failures (the event still went to the other stages).",
                      ("stage",), dict(self._errors))
