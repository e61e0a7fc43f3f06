"""`GET /api/v1/stream`: Server-Sent Events of alert and KPI changes (docs/http-api.md), for the wall display.

`Broadcaster.publish(event, data)` may be called from any thread (the rule engine's, an aggregator's, a
request's): the frame is serialised once and handed to each client's asyncio queue with
`loop.call_soon_threadsafe`, so publishing never blocks and never touches a socket. Each client's queue
is bounded; a client that falls that far behind is disconnected (and counted) instead of holding memory
or slowing the others; a browser's EventSource reconnects by itself after the `retry:` interval. A
`ping` event every `heartbeat` seconds keeps proxies from closing a quiet stream and tells
clients it is alive.

Events: `alert` (an alert's JSON plus its `change`, silenced alerts included), `kpi` (`Kpi.as_json()`) and
`reset`. Every change event has an `id`, `<run>-<n>`: `run` is drawn at start (so an id from an earlier run
of the daemon is recognised as gone) and `n` counts up from 1. The last `replay` events (`[http]
sse_replay`) are kept; a client reconnecting with `Last-Event-ID` (a browser's EventSource sends it by
itself) first gets the events it missed, in order, or, when they are no longer kept or the id is not one
of this run's, one `reset` event (`{"reason": "expired" | "other_run" | "unknown"}`, its id the latest):
the client must then fetch the state again. Registering the client and taking the missed events from
the buffer is one step under the lock that publishing takes, so nothing is missed or sent twice. A fresh
stream's opening frame carries the current id with no data (which sets a browser's last event id without
dispatching anything), so even a client that saw no event can resume. Pings have no id.

At most `max_clients` streams at once (`[http] max_streams`), exactly: a request takes its place with
`subscribe()` (check and register under one lock) before its response is returned, and gives it back
when the response ends however it ends (the stream's end, the client gone before the first byte, the
request cancelled). The next one gets `503` and is counted in `ioc_sse_refused_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from prometheus_client.core import Metric
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from ioc.kpis import Kpi
from ioc.metrics import counter, gauge

log = structlog.get_logger("ioc.api.stream")

STREAM_PATH = "/api/v1/stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)
_EVENT_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,18})")
RESET_REASONS = ("expired", "other_run", "unknown")


class _Client:
    """One subscriber: its loop, its bounded queue, and why it must stop (None while it may go on)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_max: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_max)
        self.ended: str | None = None
        self.opening = b""  # what goes first: the position (`id:`), the missed events or a `reset`

    def offer(self, frame: bytes) -> None:  # on the client's loop
        if self.ended is not None:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.ended = "slow"  # the consumer finds the flag at its next frame (the queue is not empty)

    def end(self, reason: str) -> None:  # on the client's loop
        if self.ended is None:
            self.ended = reason
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)  # wakes a consumer waiting on an empty queue


class Broadcaster:
    """Fans events out to every `/api/v1/stream` client; thread-safe; bounded per client and in clients."""

    def __init__(self, *, queue_max: int = 1000, heartbeat: float = 15.0, retry: float = 5.0,
                 max_clients: int = 256, replay: int = 1000, run: str | None = None) -> None:
        self.queue_max = queue_max
        self.heartbeat = heartbeat
        self.retry = retry
        self.max_clients = max_clients
        self.run = run if run is not None else secrets.token_hex(4)  # 8 hex digits, new at every start
        if not re.fullmatch(r"[0-9a-f]{8}", self.run):
            raise ValueError(f"run: {self.run!r} is not 8 hex digits")
        self._seq = 0  # the number of the last event published
        self._replay: deque[tuple[int, bytes]] = deque(maxlen=replay)
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._events: defaultdict[tuple[str], int] = defaultdict(int)
        self._disconnects: defaultdict[tuple[str], int] = defaultdict(int)
        self._resumes: defaultdict[tuple[str], int] = defaultdict(int)
        self._refused = 0

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    @property
    def last_event_id(self) -> str:
        """The id of the last event published (`<run>-0` before the first)."""
        with self._lock:
            return f"{self.run}-{self._seq}"

    def publish(self, event: str, data: Mapping[str, Any]) -> None:
        """Send one event to every client (from any thread; returns at once)."""
        body = b"\nevent: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        gone: list[_Client] = []
        with self._lock:
            self._seq += 1
            frame = b"id: %s-%d%s" % (self.run.encode(), self._seq, body)
            self._replay.append((self._seq, frame))
            self._events[(event,)] += 1
            # Handed over under the lock: publishers on several threads must reach every client in the
            # order of their ids, or a client resuming from the last id it saw would miss one.
            for client in self._clients:
                try:
                    client.loop.call_soon_threadsafe(client.offer, frame)
                except RuntimeError:  # its loop is closed: the server is gone
                    gone.append(client)
        for client in gone:
            self._remove(client, "closed")

    def publish_kpi(self, kpi: Kpi) -> None:
        """A `KpiBoard` listener: `board.listeners.append(broadcaster.publish_kpi)`."""
        self.publish("kpi", kpi.as_json())

    def subscribe(self, last_event_id: str | None = None) -> _Client | None:
        """Take a place for one stream on the running loop, or None (counted as refused) when
        `max_clients` are taken. Check and registration are one step under the lock, so concurrent
        requests can never take more places than there are. With `last_event_id` (the client's
        `Last-Event-ID`) the stream opens with the events published after it, or a `reset`."""
        with self._lock:
            if len(self._clients) >= self.max_clients:
                self._refused += 1
                return None
            client = _Client(asyncio.get_running_loop(), self.queue_max)
            if self._closed:
                client.ended = "closed"
            client.opening = self._opening(last_event_id)
            self._clients.add(client)
        return client

    def _opening(self, last_event_id: str | None) -> bytes:
        """What a new stream starts with (under the lock): its position, the events it missed, or a reset."""
        current = b"id: %s-%d\n" % (self.run.encode(), self._seq)
        if last_event_id is None:
            return current + b": connected\n\n"
        found = _EVENT_ID.fullmatch(last_event_id.strip())
        seen = int(found.group(2)) if found else -1
        oldest = self._replay[0][0] if self._replay else self._seq + 1
        if found is None or (found.group(1) == self.run and seen > self._seq):
            reason = "unknown"
        elif found.group(1) != self.run:
            reason = "other_run"
        elif seen < oldest - 1:
            reason = "expired"
        else:
            self._resumes[("replayed",)] += 1
            missed = [frame for seq, frame in self._replay if seq > seen]
            return b"id: %s-%d\n: resumed\n\n%s" % (self.run.encode(), seen, b"".join(missed))
        self._resumes[(f"reset_{reason}",)] += 1
        self._events[("reset",)] += 1
        return current + b"event: reset\ndata: " + orjson.dumps({"reason": reason}) + b"\n\n"

    def release(self, client: _Client, reason: str = "gone") -> None:
        """Give a stream's place back (idempotent: the first reason given is the one counted)."""
        self._remove(client, client.ended or reason)

    async def frames(self, client: _Client | None = None) -> AsyncIterator[bytes]:
        """One client's stream: the `retry:` hint, then events and heartbeats until the client goes away,
        falls behind, or the broadcaster closes. `client` comes from `subscribe()`; without one, a place
        is taken on the first iteration (and the stream is empty when there is none)."""
        if client is None:
            client = self.subscribe()
            if client is None:
                return
        try:
            # A named `ping` (not only a comment, which EventSource hides from pages) lets a client see a
            # stream that hangs without closing: no ping for a few heartbeats means the data is stale.
            ping = f"event: ping\ndata: {{\"every\": {self.heartbeat:g}}}\n\n".encode()
            yield f"retry: {round(self.retry * 1000)}\n".encode() + client.opening + ping
            client.opening = b""
            while client.ended is None:
                try:
                    frame = await asyncio.wait_for(client.queue.get(), self.heartbeat)
                except TimeoutError:
                    yield ping
                    continue
                if frame is None or client.ended is not None:
                    break
                yield frame
        finally:
            self._remove(client, client.ended or "gone")

    def _remove(self, client: _Client, reason: str) -> None:
        with self._lock:
            if client not in self._clients:
                return
            self._clients.discard(client)
            self._disconnects[(reason,)] += 1
        if reason == "slow":
            log.warning("stream.client_too_slow", queue_max=self.queue_max)

    def full(self) -> bool:
        with self._lock:
            return len(self._clients) >= self.max_clients

    def close(self) -> None:
        """End every stream (before the HTTP server's graceful stop, which would otherwise wait for them)."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(RuntimeError):
                client.loop.call_soon_threadsafe(client.end, "closed")

    def metrics(self) -> Iterable[Metric]:
        with self._lock:
            clients = len(self._clients)
            events = dict(self._events)
            resumes = {(outcome,): self._resumes.get((outcome,), 0)
                       for outcome in ("replayed", *(f"reset_{reason}" for reason in RESET_REASONS))}
            replay = len(self._replay)
            disconnects = {(reason,): self._disconnects.get((reason,), 0)
                           for reason in ("slow", "gone", "closed")}
        yield gauge("ioc_sse_clients", "Clients connected to /api/v1/stream.", (), {(): float(clients)})
        yield counter("ioc_sse_events", "Events published on /api/v1/stream, by event.", ("event",), events)
        yield counter("ioc_sse_disconnects", "Stream clients gone, by reason (slow: cut off for falling "
                      "behind; gone: the client left; closed: the daemon stopped).", ("reason",), disconnects)
        yield gauge("ioc_sse_max_clients", "Stream clients allowed at once (`[http] max_streams`).", (),
                    {(): float(self.max_clients)})
        yield counter("ioc_sse_refused", "Stream requests refused with 503 because max_streams clients were "
                      "connected.", (), {(): float(self._refused)})
        yield counter("ioc_sse_resumes", "Streams opened with Last-Event-ID, by outcome (replayed: the missed "
                      "events were sent; reset_expired, reset_other_run, reset_unknown: a reset event was).",
                      ("outcome",), resumes)
        yield gauge("ioc_sse_replay_events", "Events kept for resuming streams (`[http] sse_replay` at most).",
                    (), {(): float(replay)})


class _StreamResponse(StreamingResponse):
    """A stream that gives its place back when the response ends, however it ends: the generator's
    `finally` does not run when the client leaves before the first frame (the generator never started),
    so the response's own end does it too; and a finaliser does if the response is never sent at all."""

    def __init__(self, broadcaster: Broadcaster, client: _Client) -> None:
        super().__init__(broadcaster.frames(client), media_type="text/event-stream", headers=SSE_HEADERS)
        self._release = weakref.finalize(self, broadcaster.release, client, "gone")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def stream_router(broadcaster: Broadcaster) -> APIRouter:
    router = APIRouter(tags=["stream"])

    @router.get(
        STREAM_PATH,
        summary="Alert and KPI changes as Server-Sent Events",
        description="`text/event-stream`: `event: alert` (an alert's JSON with its `change`; silenced alerts "
                    "too) and `event: kpi` (one KPI), each with an `id`. Reconnect with `Last-Event-ID` to get "
                    "the events missed meanwhile, or one `event: reset` when they are gone (fetch the state "
                    "again). A `ping` every 15 s keeps it open. No token.",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "The stream."},
                   503: {"description": "Too many stream clients."}},
    )
    async def stream(last_event_id: Annotated[str | None, Header(
            alias="Last-Event-ID", description="The `id` of the last event received (`<run>-<n>`).")] = None,
    ) -> StreamingResponse:
        client = broadcaster.subscribe(last_event_id)
        if client is None:
            raise HTTPException(503, f"too many stream clients (at most {broadcaster.max_clients})",
                                headers={"Retry-After": "5"})
        return _StreamResponse(broadcaster, client)

    return router
