"""What the ingest side offers a connector: the few calls a transport makes, as a protocol.

Connectors (ioc.connectors.*) depend on this, never on the concrete `ioc.ingest.pipeline.Pipeline`, so a
connector can be read, tested and replaced without the pipeline's internals, and the pipeline can change
without touching them. `Pipeline` satisfies `Intake` structurally; tests/unit/test_mqtt_parts.py checks it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ioc.ingest.decode import Decoded

DurableCallback = Callable[[], None]
"""Called once the points of what was handed over are durable (the MQTT connector acknowledges then)."""


class Outcome(Protocol):
    """What became of a hand-over (`ioc.ingest.pipeline.IngestResult`)."""

    accepted: int
    duplicates: int
    rejected: list[tuple[int, str]]  # (index of the item, why), e.g. "overloaded: ..., retry later"


RETRY_LATER = ("overloaded:", "sink_error:")
"""How a rejection of the whole hand-over begins (the sinks were full or failed; the items were fine): the
same payload may be taken later. Any other rejection is about the items themselves."""


def retry_later(outcome: Outcome) -> bool:
    """Whether nothing was taken only because of the sinks, so the same hand-over may succeed later."""
    return bool(outcome.rejected) and all(reason.startswith(RETRY_LATER) for _, reason in outcome.rejected)


class Intake(Protocol):
    """The intake as a transport sees it. Every call validates, deduplicates, counts (docs/transports.md) and
    dead-letters what it rejects; `on_durable` runs once the accepted points are durable everywhere, and
    `timeout` bounds the wait for room in the sinks (None: wait)."""

    def ingest(self, payload: bytes, *, topic_source: str | None = None, ndjson: bool = False,
               on_durable: DurableCallback | None = None, timeout: float | None = None) -> Outcome:
        """One message: a JSON event, an array of them, or NDJSON. `topic_source`: the source its topic
        names (an event claiming another is rejected), None when the transport has none."""

    def ingest_batch(self, messages: Sequence[tuple[bytes, str | None]], *,
                     on_durable: DurableCallback | None = None, timeout: float | None = None) -> Outcome:
        """Several messages `(payload, topic_source)` in one call, one `on_durable` for all."""

    def admit(self, items: Iterable[Decoded], *, on_durable: DurableCallback | None = None) -> Outcome:
        """Items already decoded, e.g. whole messages a transport refuses (`ioc.ingest.decode.Rejection`):
        counted, dead-lettered, and `on_durable` in order behind what came before."""

    def has_room(self, points: int) -> bool:
        """Whether the sinks would take `points` now without waiting."""
