"""`EventTap`: the pipeline's `Evaluation` seam for tests that want to see each accepted event."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ioc.envelope import AnyEvent


class EventTap:
    """Calls `on_event` for every accepted event, in the intake's thread, then releases the batch (as the
    real evaluation does once the batch's effects are stored)."""

    def __init__(self, on_event: Callable[[AnyEvent], object]) -> None:
        self.on_event = on_event

    def offer(self, events: Sequence[AnyEvent], on_done: Callable[[], None] | None) -> None:
        for event in events:
            self.on_event(event)
        if on_done is not None:
            on_done()
