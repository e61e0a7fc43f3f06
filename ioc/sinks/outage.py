"""The outage of a sink, as one state machine: where the next batch goes, when to probe, what is wrong.

    WRITING  --write failed-------------------------> SPOOLING   (sink.outage_started)
    WRITING  --points left in the spool at start----> SPOOLING   (sink.spool_replay)
    SPOOLING --the spool cannot take a batch--------> HOLDING    (full and `block`, or its disk failed)
    HOLDING  --the spool took it / a probe wrote----> SPOOLING
    SPOOLING, HOLDING --a probe wrote, spool empty--> WRITING    (sink.outage_ended)

- WRITING: batches go straight to the database.
- SPOOLING: the database fails; new batches go to the spool behind the older ones (order kept), and a
  probe replays the oldest spooled batch after the daemon's one backoff (`ioc.retry.Backoff`: jittered,
  doubling from retry_min to retry_max; the server's Retry-After honoured up to retry_max). With `spool_on_full = "drop"` a batch the spool cannot take
  is dropped (counted) and the state stays SPOOLING, with `spool_full` set.
- HOLDING: a batch could be neither written nor spooled. It waits at the front of the memory queue,
  unacknowledged (its events are durable nowhere yet), nothing more is taken (back-pressure up to
  intake), and probes retry: the spool's oldest batch first when the spool is full (to make room), the
  held batch first when the spool's disk failed.

Only the sink's batching loop changes the state; other threads read it (readiness, metrics).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import Enum

import structlog
from prometheus_client.core import Metric

from ioc.metrics import counter, gauge
from ioc.retry import Backoff
from ioc.sinks.writer import WriteError

log = structlog.get_logger("ioc.sinks")


class State(Enum):
    WRITING = "writing"
    SPOOLING = "spooling"
    HOLDING = "holding"


class Outage:
    def __init__(self, sink: str, *, retry_min: float, retry_max: float, spooled: int) -> None:
        self.sink = sink
        self._backoff = Backoff(retry_min, retry_max)
        self.state = State.SPOOLING if spooled else State.WRITING  # replay what an earlier run left
        self.next_probe = 0.0
        self.spool_full = False  # the spool could not take the last batch that did not fit
        self.spool_error: str | None = None  # HOLDING because the spool's disk refused the batch
        self.problem: str | None = None  # a failure a person must fix (401, a wrong URL...)
        self.outages = 0
        self._since = time.monotonic()
        self._replayed = 0
        self._full_logged = False

    @property
    def active(self) -> bool:
        return self.state is not State.WRITING

    @property
    def holding(self) -> bool:
        return self.state is State.HOLDING

    # --- transitions -------------------------------------------------------------------------------

    def write_failed(self, error: WriteError, *, spooled: int) -> None:
        """A write (direct or a probe's) failed: start the outage, or schedule the next probe."""
        if self.state is State.WRITING:
            self.state = State.SPOOLING
            self.outages += 1
            self._since = time.monotonic()
            self._replayed = 0
            self._backoff.reset()
            log.warning("sink.outage_started", sink=self.sink, kind=error.kind, status=error.status,
                        error=str(error))
        delay = self._backoff.failed(error.retry_after)
        if error.needs_a_person:
            self.problem = str(error)
        log.warning("sink.write_failed", sink=self.sink, kind=error.kind, status=error.status, error=str(error),
                    attempt=self._backoff.failures, retry_in=round(delay, 3), spooled=spooled)
        self.next_probe = time.monotonic() + delay

    def spool_refused(self, disk_error: str | None, *, points: int, spooled: int, max_points: int) -> None:
        """The spool could not take a batch: it is full (`disk_error` None, policy `block`) or its disk
        failed. The batch is held in memory."""
        self.state = State.HOLDING
        if disk_error is not None:
            if self.spool_error is None:  # one line per episode; each retry is counted by write_failed
                log.error("sink.spool_failed", sink=self.sink, error=disk_error, points=points,
                          effect="held in memory, unacknowledged, retried")
            self.spool_error = disk_error
        else:
            self._note_full("block", spooled, max_points, points)

    def dropping(self, *, points: int, spooled: int, max_points: int) -> None:
        """The spool is full and the policy is `drop`: the batch was dropped (the state stays)."""
        self._note_full("drop", spooled, max_points, points)

    def spool_took(self) -> None:
        """The spool took a batch: a held batch is durable, the outage goes on spooling."""
        if self.spool_error is not None:
            log.info("sink.spool_recovered", sink=self.sink)
        self.spool_error = None
        self.spool_full = self._full_logged = False
        if self.state is State.HOLDING:
            self.state = State.SPOOLING

    def probe_succeeded(self, points: int, *, spool_empty: bool, spool_has_room: bool) -> None:
        """A probe wrote `points`: keep going at once; once the spool is empty the outage is over."""
        self._replayed += points
        self._backoff.reset()
        self.next_probe = 0.0
        self.problem = None
        if self.spool_full and spool_has_room:
            self.spool_full = self._full_logged = False
        if spool_empty:
            self.ended()
        elif self.state is State.HOLDING:
            self.state = State.SPOOLING  # the loop offers the held batch to the spool again

    def ended(self) -> None:
        """Nothing left to replay: write directly again."""
        if self.state is not State.WRITING:
            log.info("sink.outage_ended", sink=self.sink, points_replayed=self._replayed,
                     duration=round(time.monotonic() - self._since, 3))
        self.problem = self.spool_error = None
        self.spool_full = self._full_logged = False
        self._backoff.reset()
        self.state = State.WRITING

    # --- helpers -----------------------------------------------------------------------------------

    def _note_full(self, policy: str, spooled: int, max_points: int, points: int) -> None:
        self.spool_full = True
        if not self._full_logged:
            self._full_logged = True
            log.warning("sink.spool_full", sink=self.sink, policy=policy, spooled=spooled, max_points=max_points,
                        points=points)

    def problems(self, *, spooled: int, held: int, spool_max: int) -> list[str]:
        found = []
        if self.spool_full and not spool_max:
            found.append(f"{self.sink}: cannot write, no spool: holding {held} points in memory")
        elif self.spool_full:
            found.append(f"{self.sink}: spool full ({spooled} points)")
        if self.spool_error is not None:
            found.append(f"{self.sink}: spool write failed ({self.spool_error}), holding {held} points")
        if self.problem is not None:
            found.append(f"{self.sink}: {self.problem}, spooling ({spooled} points)")
        return found

    def metrics(self) -> Iterable[Metric]:
        sink, state = self.sink, self.state
        yield gauge("ioc_sink_outage", "1 while the database cannot take points and they are spooled.",
                    ("sink",), {(sink,): 1.0 if state is not State.WRITING else 0.0})
        yield gauge("ioc_sink_state", "The sink's state: writing, spooling (an outage), holding (nowhere to "
                    "put the next batch: intake waits).", ("sink", "state"),
                    {(sink, each.value): 1.0 if each is state else 0.0 for each in State})
        yield counter("ioc_sink_outages", "Outages started (the database failed a write).", ("sink",),
                      {(sink,): float(self.outages)})
