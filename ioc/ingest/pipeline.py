"""The intake pipeline: decode -> validate -> check -> dedup -> render -> sinks, read top to bottom.

Transports call `ingest` (or `decode` then `admit`, when they must look at the events first, as the HTTP
API does to answer 403). The pipeline is a serial section guarded by one lock; it counts everything by
docs/metrics.md's rule: received = accepted + rejected + duplicate, per source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client.core import Metric
from pydantic import ValidationError

from ioc import failpoints
from ioc.envelope import EVENT_ADAPTER, AnyEvent, event_time_ns
from ioc.errors import SinkFull
from ioc.ingest import memory
from ioc.ingest.counts import BatchCounts, IntakeCounts
from ioc.ingest.decode import (
    DEFAULT_MAX_ITEMS,
    MAX_ITEM_BYTES,
    Accepted,
    Decoded,
    Rejection,
    decode_payload,
    reject_invalid,
)
from ioc.ingest.dedup import DedupIndex, dedup_key
from ioc.ingest.letters import DeadLetterOffice, DeadLetterTarget, Letter
from ioc.ingest.port import DurableCallback
from ioc.lineproto import Points, render_event
from ioc.logs import RepeatLimiter
from ioc.metrics import counter, gauge

log = structlog.get_logger("ioc.ingest")



class Evaluation(Protocol):
    """The evaluation thread as the intake sees it (`ioc.evaluation.Evaluator`): accepted events are
    handed over, and `on_done` runs once their alert changes and tracker rows are stored. Durability
    waits for it as for a sink, so an event acknowledged is an event evaluated (docs/operations.md)."""

    def offer(self, events: Sequence[AnyEvent], on_done: DurableCallback | None) -> None: ...
UNKNOWN_SOURCE = "unknown"
_validate_json = EVENT_ADAPTER.validate_json
# A payload may hold 10,000 bad items: the debug log names the first few, then counts the rest.
_LOGGED_REJECTIONS = 5


class FormerArea(Protocol):
    """What the intake needs of a former area code no longer in use (`ioc.areas.Former`): the new
    code(s) it became, with names (several: a divided commune, refused), its level, why it is refused."""

    @property
    def level(self) -> str: ...

    @property
    def into(self) -> tuple[tuple[str, str], ...]: ...

    def reason(self) -> str: ...


def _moved(event: AnyEvent, new: str, former: str) -> AnyEvent:
    """The event placed in the new unit `new`; its original code kept as the tag `area_former` (stored
    as a tag of its point: which vendors still send former codes is a GROUP BY away)."""
    return event.model_copy(update={"area": new, "tags": {**(event.tags or {}), "area_former": former}})




class PointSink(Protocol):
    """Where the accepted events' points go, as the intake sees it (`ioc.sinks.base.Sink`: InfluxDB or the
    local store). `points` may be a `Points`, whose origins trace a refused point to its event."""

    def submit(self, points: list[str], on_durable: DurableCallback | None = None, *,
               timeout: float | None = None) -> None: ...

    def has_room(self, points: int) -> bool: ...




@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in the payload, reason)


class _AllDurable:
    """Calls `then` once every one of `count` participants (the sinks, the evaluation) reported done."""

    __slots__ = ("_lock", "_remaining", "_then")

    def __init__(self, count: int, then: DurableCallback) -> None:
        self._remaining = count
        self._then = then
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self._then()


class Pipeline:
    def __init__(
        self,
        *,
        sinks: Sequence[PointSink],
        dedup: DedupIndex,
        max_bytes: int,
        max_future: float,
        max_items: int = DEFAULT_MAX_ITEMS,
        dead_letters: Sequence[DeadLetterTarget] = (),
        evaluation: Evaluation | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sinks = list(sinks)
        self.dedup = dedup
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._fast_max = min(max_bytes, MAX_ITEM_BYTES)  # a lone event this big takes the checked path
        memory.configure()  # big payloads' memory goes back to the system once handled
        self._max_future_ns = int(max_future * 1e9)
        self._clock = clock
        self._lock = threading.Lock()
        self.letters = DeadLetterOffice(dead_letters)
        self.dead_letter_targets = self.letters.targets  # (the same list)
        # Gets each admitted batch's accepted events: the seam of the evaluation thread (aggregators,
        # rules), which must cost the intake no more than a hand-over.
        self.evaluation = evaluation
        # The counters of docs/metrics.md, a batch added at once after its hand-over to the sinks (which
        # may wait for room), under the lock a scrape takes too.
        self.counts = IntakeCounts()
        self.received, self.accepted = self.counts.received, self.counts.accepted
        self.duplicates, self.rejected = self.counts.duplicates, self.counts.rejected
        self.converted = self.counts.converted
        self.dead_letters = self.letters.counts
        # CONTRACT §10: former area codes no longer in use, converted for events dated from `since_ns`
        # (the app sets them from the registry); none by default. One dict lookup an event at most.
        self._former_areas: Mapping[str, FormerArea] = {}
        self._former_since_ns = 1 << 63
        self._failures = RepeatLimiter(10.0)  # logged at most once per 10 s, per kind, whatever the flood

    def convert_areas(self, former: Mapping[str, FormerArea], since_ns: int) -> None:
        """Place events dated from `since_ns` that carry a code of `former` in the unit it became (a
        divided one is refused as `area_divided`, naming the candidates); counted by the former level."""
        self._former_areas = former
        self._former_since_ns = since_ns
        for level in ("province", "district", "commune"):
            self.converted.setdefault((level,), 0)

    # --- the stages --------------------------------------------------------------------------------

    def decode(self, payload: bytes, *, ndjson: bool = False) -> list[Decoded]:
        return decode_payload(payload, max_bytes=self.max_bytes, max_items=self.max_items, ndjson=ndjson)

    def ingest(
        self,
        payload: bytes,
        *,
        topic_source: str | None = None,
        ndjson: bool = False,
        on_durable: DurableCallback | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """Everything a transport needs: decode the payload and admit its items."""
        items = self._decode_fast(payload) if not ndjson else self.decode(payload, ndjson=True)
        result = self._admit([(item, topic_source, topic_source) for item in items], on_durable, timeout,
                             ((0, payload),))
        memory.after_payload(len(payload))
        return result

    def ingest_batch(
        self,
        messages: Sequence[tuple[bytes, str | None]],
        *,
        on_durable: DurableCallback | None = None,
        timeout: float | None = None,
    ) -> IngestResult:
        """Several messages at once, each `(payload, topic_source)`, with one callback for all of them.

        The MQTT connector hands over what arrived in one burst: run back to back, the decoding stays in
        the CPU's caches (measured: 48 µs an event one message at a time between paho's own work, against
        ~20 µs in a tight loop). Result indexes count items across the messages."""
        entries: list[tuple[Decoded, str | None, str | None]] = []
        starts: list[tuple[int, bytes | None]] = []  # (index of its first item, payload) per message
        size = 0
        for payload, topic_source in messages:
            starts.append((len(entries), payload))
            entries.extend((item, topic_source, topic_source) for item in self._decode_fast(payload))
            size += len(payload)
        result = self._admit(entries, on_durable, timeout, starts)
        memory.after_payload(size)
        return result

    def _decode_fast(self, payload: bytes) -> Sequence[Decoded]:
        if payload[:1] == b"{" and len(payload) <= self._fast_max:
            # The common case of one event per message, without decode_payload's generality.
            try:
                return (Accepted(_validate_json(payload), payload),)
            except ValidationError as error:
                return (reject_invalid(payload, error),)
        return self.decode(payload)

    def admit(
        self,
        items: Iterable[Decoded],
        *,
        topic_source: str | None = None,
        fallback_source: str | None = None,
        on_durable: DurableCallback | None = None,
        timeout: float | None = None,
        payload: bytes | None = None,
    ) -> IngestResult:
        """Check, dedup and hand decoded items to the sinks. `on_durable` runs once their points are
        durable in every sink (immediately when there is none); rejected items are dead-lettered first.
        `payload`: the message the items came from (its rejected items share a dead letter); without it,
        each item is a message of its own (as the MQTT connector's refusals of whole messages are)."""
        return self._admit([(item, topic_source, fallback_source) for item in items], on_durable, timeout,
                           ((0, payload),) if payload is not None else None)

    def _admit(
        self,
        entries: Sequence[tuple[Decoded, str | None, str | None]],
        on_durable: DurableCallback | None,
        timeout: float | None,
        messages: Sequence[tuple[int, bytes | None]] | None,
    ) -> IngestResult:
        """Each entry is (item, the topic's source to match or None, the source to file a rejection under);
        `messages` are (index of the first entry, payload) of the messages the entries came from, None when
        each entry is a message of its own."""
        if failpoints.ACTIVE:
            failpoints.hit("intake.after_decode")
        result = IngestResult()
        # Each line with its event's key (source and id): the origin of a point the database may refuse.
        points = Points()
        keys = points.origins
        kept: list[tuple[int, AnyEvent]] = []  # (index in the payload, event) of what goes to the sinks
        letters: list[Letter] = []
        counts = BatchCounts()
        formers, since_ns = self._former_areas, self._former_since_ns
        with self._lock:
            limit_ns = int(self._clock() * 1e9) + self._max_future_ns
            for index, (item, topic_source, fallback_source) in enumerate(entries):
                if isinstance(item, Rejection):
                    if topic_source is not None and item.source is not None and item.source != topic_source:
                        self._reject_claim(result, counts, letters, index, item, topic_source)
                    else:
                        self._reject(result, counts, letters, index, item.source or fallback_source, item.code,
                                     item.message, item.raw)
                    continue
                event = item.event
                source = event.source
                if topic_source is not None and source != topic_source:
                    self._reject(result, counts, letters, index, topic_source, "source_mismatch",
                                 f"source: {source!r} does not match the topic's {topic_source!r}", item.raw)
                    continue
                time_ns = event_time_ns(event.time)
                if time_ns > limit_ns:
                    self._reject(result, counts, letters, index, source, "future_time",
                                 f"time: {event.time.isoformat()} is more than "
                                 f"{self._max_future_ns // 1_000_000_000}s in the future", item.raw)
                    continue
                moved = formers.get(event.area) if time_ns >= since_ns else None  # type: ignore[arg-type]
                if moved is not None:
                    if len(moved.into) > 1:
                        self._reject(result, counts, letters, index, source, "area_divided", moved.reason(),
                                     item.raw)
                        continue
                    event = _moved(event, moved.into[0][0], event.area)  # type: ignore[arg-type]
                counts.received[source] += 1
                key = dedup_key(source, event.id)
                if self.dedup.seen_before(key):
                    counts.duplicates[source] += 1
                    result.duplicates += 1
                    continue
                if moved is not None:
                    counts.converted[moved.level] += 1
                points.append(render_event(event, time_ns))
                keys.append(key)
                kept.append((index, event))
            if letters:
                self.letters.send(letters, messages)
            try:
                evaluated = self._hand_to_sinks(points, keys, on_durable, timeout, evaluate=bool(kept))
            except Exception as error:  # noqa: BLE001  # SinkFull, or a sink that failed (a full disk)
                # Not taken: the keys are forgotten, so a retry (or the broker's redelivery of an
                # unacknowledged message) is a new event, not a duplicate of one that was never stored.
                self.dedup.forget(keys)
                code, why = (("overloaded", "the sinks are full") if isinstance(error, SinkFull)
                             else ("sink_error", "a sink failed"))
                if code == "sink_error" and (suppressed := self._failures.check("sink")) is not None:
                    log.error("ingest.sink_failed", error=repr(error), events=len(kept), suppressed=suppressed)
                for index, event in kept:
                    counts.rejected[(event.source, code)] += 1
                    result.rejected.append((index, f"{code}: {why}, retry later"))
                result.rejected.sort()
                counts.converted.clear()  # counted only for a batch the sinks took
                self.counts.add(counts)
                return result
            for _, event in kept:
                counts.accepted[event.source] += 1
            result.accepted = len(kept)
            self.counts.add(counts)
        if len(result.rejected) > _LOGGED_REJECTIONS:
            log.debug("ingest.rejected_more", count=len(result.rejected) - _LOGGED_REJECTIONS)
        if self.evaluation is not None and kept:
            self._evaluate(self.evaluation, [event for _, event in kept], evaluated)
        return result

    def _evaluate(self, evaluation: Evaluation, events: list[AnyEvent], on_done: DurableCallback | None) -> None:
        try:
            evaluation.offer(events, on_done)
        except Exception:  # the intake goes on; what waited for the evaluation is released
            if (suppressed := self._failures.check("evaluation")) is not None:
                log.exception("ingest.evaluation_failed", events=len(events), suppressed=suppressed)
            if on_done is not None:
                on_done()

    def _reject(self, result: IngestResult, counts: BatchCounts, letters: list[Letter], index: int,
                source: str | None, code: str, message: str, raw: bytes) -> None:
        source = source or UNKNOWN_SOURCE
        counts.received[source] += 1
        counts.rejected[(source, code)] += 1
        result.rejected.append((index, message))
        if len(result.rejected) <= _LOGGED_REJECTIONS:
            log.debug("ingest.rejected", source=source, reason=code, error=message)
        letters.append((0, source, index, message, raw))

    def _reject_claim(self, result: IngestResult, counts: BatchCounts, letters: list[Letter], index: int,
                      item: Rejection, topic_source: str) -> None:
        """An invalid item that also claims another source than its topic's: the topic decides, as for a
        valid one (its vendor may write there and reads its dead letters there; the claimed source may be
        anyone's), and the reason names both faults."""
        self._reject(result, counts, letters, index, topic_source, "source_mismatch",
                     f"source: {item.source!r} does not match the topic's {topic_source!r}; {item.message}",
                     item.raw)

    def publish_dead_letter(self, source: str, reason: str, payload: bytes) -> None:
        """Send a dead letter to every target (also used for points a sink refused for good)."""
        self.letters.publish(source, reason, payload)

    def _hand_to_sinks(self, points: list[str], keys: list[str], on_durable: DurableCallback | None,
                       timeout: float | None, *, evaluate: bool) -> DurableCallback | None:
        """Submit the points to every sink. Returns what the evaluation must call once it has stored the
        batch's effects, when someone waits for durability and the batch goes to an evaluation."""
        dedup = self.dedup
        evaluation = self.evaluation is not None and evaluate
        if on_durable is None:
            # Nobody waits (MQTT QoS 0: no redelivery, so nothing to protect by waiting): the keys count
            # as seen at once, and the sinks are spared a callback per message.
            dedup.mark_durable(keys)
            for sink in self.sinks:
                sink.submit(points, None, timeout=timeout)
            return None

        def durable() -> None:
            dedup.mark_durable(keys)
            on_durable()

        count = len(self.sinks) + evaluation
        if count == 0:
            durable()
            return None
        callback: DurableCallback = durable if count == 1 else _AllDurable(count, durable)
        for sink in self.sinks:
            sink.submit(points, callback, timeout=timeout)
        return callback if evaluation else None

    # --- housekeeping --------------------------------------------------------------------------------

    def has_room(self, points: int) -> bool:
        return all(sink.has_room(points) for sink in self.sinks)

    def expire_dedup(self) -> int:
        with self._lock:
            return self.dedup.expire()

    def metrics(self) -> Iterable[Metric]:
        yield from self.counts.collect()
        yield from self.letters.collect()
        yield gauge("ioc_dedup_keys", "(source, id) keys remembered for deduplication.", (),
                    {(): float(len(self.dedup))})
        yield counter("ioc_dedup_evicted", "Dedup keys forgotten before the window for lack of room.", (),
                      {(): float(self.dedup.evicted)})
