"""What a play shows a person, always on standard error (with `--to -` standard output is the data).

On a terminal: a live rich panel (events sent, rate, simulated time reached, incidents begun, errors).
Otherwise (a pipe, a CI log): one quiet line every `every` seconds and one at the end.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Self, TextIO

from ioc.simulators.play import PlayStats, describe_offset
from ioc.simulators.publish import PublishStats
from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["Progress"]


class Progress:
    """Reports a play's progress from a thread of its own while the play runs (`with Progress(...)`)."""

    def __init__(self, title: str, play: Callable[[], PlayStats], publish: Callable[[], PublishStats], *,
                 duration: float | None, stream: TextIO | None = None, every: float = 30.0) -> None:
        self.title = title
        self._play, self._publish = play, publish
        self.duration = duration
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tty = self.stream.isatty()

    def line(self) -> str:
        play, sent = self._play(), self._publish()
        elapsed = max(play.elapsed(), 1e-9)
        reached = describe_offset(play.offset)
        if self.duration is not None:
            reached += f" of {describe_offset(self.duration)}"
        errors = f", {sent.rejected} rejected" if sent.rejected else ""
        retries = f", {sent.retries} retries" if sent.retries else ""
        return (f"{self.title}: {play.events} events in {elapsed:.1f}s ({play.events / elapsed:,.0f}/s), "
                f"simulated {reached}, {play.incidents} incidents{errors}{retries}")

    def _table(self) -> Table:
        play, sent = self._play(), self._publish()
        elapsed = max(play.elapsed(), 1e-9)
        table = Table(title=self.title, show_header=False)
        table.add_row("events sent", f"{play.events:,}")
        table.add_row("rate", f"{play.events / elapsed:,.0f}/s")
        reached = describe_offset(play.offset)
        table.add_row("simulated", reached + (f" of {describe_offset(self.duration)}" if self.duration else ""))
        table.add_row("incidents begun", str(play.incidents))
        table.add_row("acknowledged", f"{sent.acknowledged:,}")
        table.add_row("rejected / retries", f"{sent.rejected:,} / {sent.retries:,}")
        if sent.errors:
            table.add_row("last error", sent.errors[-1])
        return table

    def _loop(self) -> None:
        if self.tty:
            with Live(self._table(), console=Console(file=self.stream), refresh_per_second=4) as live:
                while not self._stop.wait(0.25):
                    live.update(self._table())
                live.update(self._table())
            return
        while not self._stop.wait(self.every):
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name="sim-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if not self.tty:
            print(self.line(), file=self.stream, flush=True)
