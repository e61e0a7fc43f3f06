"""Uvicorn inside the daemon's own event loop, so the HTTP API is one task of its `asyncio.TaskGroup`.

The daemon owns the process: it installs the signal handlers (uvicorn's are disabled), it decides when the
server stops (`HttpServer.shutdown()` or `stop()`), and a port that cannot be bound is an `IocError` with
the reason instead of uvicorn's `SystemExit`. The socket is bound here, before uvicorn starts, so the
error is the operating system's own (`Address already in use`) and port 0 works (tests read `.port`).

Hostile clients (docs/operations.md). uvicorn has a keep-alive timeout but no header or body timeout, and its
`limit_concurrency` answers 503 only once a request's headers are in, which a slowloris client never
sends. So the server runs its own HTTP protocol class, `GuardedH11Protocol`, a subclass of uvicorn's h11
protocol given to `uvicorn.Config(http=...)`:

- past `max_connections` a new connection gets a `503` and is closed as soon as it is accepted;
- a connection whose request headers are not complete `header_timeout` after its first byte (or after
  it was opened) is closed (slowloris, and connections opened and left silent);
- a request whose whole body has not arrived `body_timeout` after its headers is answered `408` (if no
  answer was started) and closed;
- an idle keep-alive connection is closed after `keepalive_timeout` (uvicorn's own timer).

Why a protocol subclass rather than ASGI middleware: middleware is called only once the headers are
complete, so it cannot see a slowloris client at all, nor count connections that never send a request;
and a guard at the transport level would have to parse HTTP again to know when headers end. The
protocol already knows, from h11's state machine (`their_state`: IDLE = waiting for headers, SEND_BODY
= headers in, body coming, DONE = the request is complete), so the timers follow that state and cost
one timer handle per connection. The h11 protocol is named explicitly (not uvicorn's `auto`) so that
installing httptools never silently swaps these guards out. A response being sent (an SSE stream, a POST
waiting for durability) is in none of those states, so long-lived answers are never cut.

File descriptors: at start the soft `RLIMIT_NOFILE` is raised to the hard limit, and `max_connections`
is held `FD_RESERVE` below it, so that accepting never fails with EMFILE (which made asyncio log a
traceback per attempt) and the daemon keeps descriptors for its store, broker and InfluxDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import socket
from collections.abc import Generator, Iterable
from typing import Any

import h11
import structlog
import uvicorn
from prometheus_client.core import Metric
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ioc.config import HttpSettings
from ioc.errors import IocError
from ioc.metrics import counter, gauge

log = structlog.get_logger("ioc.api.server")

# Descriptors kept for everything but HTTP clients: SQLite (three per connection, one connection per
# thread that uses the store), the broker, InfluxDB, the listening socket, logs. An idle daemon holds ~20.
FD_RESERVE = 256
MAX_HEAD_BYTES = 16 * 1024  # the request line and headers (h11's and uvicorn's default; nginx's 4 x 8k)
_REFUSED_BODY = b'{"error": "too many connections"}'
REFUSED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY))


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1_048_576) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):  # a sandbox may forbid it: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 30


def connection_budget(max_connections: int, fd_limit: int, reserve: int = FD_RESERVE) -> int:
    """How many client connections may be open at once: `max_connections`, but never so many that the
    descriptors left for the rest of the daemon fall under `reserve` (at least one connection)."""
    return max(1, min(max_connections, fd_limit - reserve))


class ConnectionGuard:
    """The limits every connection of one server obeys, and what they did (for `/metrics`)."""

    def __init__(self, settings: HttpSettings) -> None:
        self.max_connections = settings.max_connections
        self.header_timeout = float(settings.header_timeout)
        self.body_timeout = float(settings.body_timeout)
        self.refused = 0
        self.timed_out = {("header",): 0, ("body",): 0}
        self.heads_too_large = 0
        self.open = 0

    def metrics(self) -> Iterable[Metric]:
        yield gauge("ioc_http_connections", "Client connections open to the HTTP API.", (),
                    {(): float(self.open)})
        yield gauge("ioc_http_max_connections", "Client connections allowed at once (`[http] max_connections`, "
                    "less a reserve below the file descriptor limit).", (), {(): float(self.max_connections)})
        yield counter("ioc_http_connections_refused", "Connections refused at once (503, closed) because "
                      "max_connections were open.", (), {(): float(self.refused)})
        yield counter("ioc_http_connections_timed_out", "Connections closed because their request headers "
                      "(header) or body (body) did not arrive in time.", ("phase",), self.timed_out)
        yield counter("ioc_http_heads_too_large", f"Requests refused (431, closed) because their request line "
                      f"and headers passed {MAX_HEAD_BYTES} bytes.", (), {(): float(self.heads_too_large)})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and header and body timeouts (see the module doc).
    `bind_guard()` makes the subclass that uvicorn instantiates per connection."""

    guard: ConnectionGuard

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._inner_app = self.app
        self.app = self._run_app
        self._refused = False
        self._timed_out = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # received while the request's line and headers are incomplete
        self._head_tail = b""  # the last bytes of that, for a blank line split between two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        guard = self.guard
        if len(self.connections) >= guard.max_connections:
            # Refused before reading anything: a 503 for a client that reads it, then the socket goes.
            self._refused = True
            guard.refused += 1
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSED_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        guard.open += 1
        self._header_timer = self.loop.call_later(guard.header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.guard.open -= 1
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            # The first byte of the next request on a kept-alive connection: its headers have this long.
            self._header_timer = self.loop.call_later(self.guard.header_timeout, self._header_timed_out)
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._refuse_head()
            return
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the request line and headers, of which `data` is the next piece, pass MAX_HEAD_BYTES.
        Looked at before h11 parses, so a head too large never reaches the application; one `find` per
        piece while a head is incomplete (a request's first piece, as a rule)."""
        seen = self._head_bytes
        end = (self._head_tail + data).find(b"\r\n\r\n")
        if end >= 0:
            size = seen - len(self._head_tail) + end + 4
            self._head_bytes, self._head_tail = 0, b""
            return size > MAX_HEAD_BYTES
        self._head_bytes = seen + len(data)
        self._head_tail = data[-3:]
        return self._head_bytes > MAX_HEAD_BYTES

    def handle_events(self) -> None:
        super().handle_events()
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._header_timer is None and self.conn.trailing_data[0]:  # a pipelined request begun
                self._header_timer = self.loop.call_later(self.guard.header_timeout, self._header_timed_out)
            return
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.guard.body_timeout, self._body_timed_out)
        elif self._body_timer is not None:  # DONE (the whole request is in), or closing
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _refuse_head(self) -> None:
        """431 with a JSON reason, as every other refusal of the API, then close (h11's own limit, on an
        incomplete head only, would answer a plain-text 400 "Invalid HTTP request received.")."""
        self.guard.heads_too_large += 1
        self._cancel_timers()
        body = b'{"error": "request line and headers over %d bytes"}' % MAX_HEAD_BYTES
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        self.guard.timed_out[("header",)] += 1
        self._timed_out = True
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        self.guard.timed_out[("body",)] += 1
        self._timed_out = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = True  # whatever the application answers now is dropped
            body = b'{"error": "request body not received within %gs"}' % self.guard.body_timeout
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            with contextlib.suppress(h11.LocalProtocolError):
                self.transport.write(
                    self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
                    + self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        if cycle is not None:  # the application's receive() now returns http.disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request that breaks HTTP mid-body (a chunk size of `-1`): uvicorn answers 400 and closes,
        while the application may still be reading the body. Its request is cut off as by a timeout:
        its `receive()` returns `http.disconnect` and what it answers is dropped, instead of reaching an
        h11 connection that must close (a `LocalProtocolError`, logged as an internal error)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            self._timed_out = True  # what the application raises about it is the client's doing
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # too late for a 400: just close
                self.transport.close()
                return
        try:
            super().send_400_response(msg)
        except h11.LocalProtocolError:
            self.transport.close()

    async def _run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application; what it raises because this server cut its request off (the client was too
        slow: `ClientDisconnect` in a body read) is the client's doing, not an application error."""
        try:
            await self._inner_app(scope, receive, send)
        except Exception:
            if not self._timed_out:
                raise

    @classmethod
    def bind_guard(cls, guard: ConnectionGuard) -> type[GuardedH11Protocol]:
        return type("GuardedH11Protocol", (cls,), {"guard": guard})


class _Server(uvicorn.Server):
    """uvicorn.Server without signal handling, telling an `asyncio.Event` once it listens."""

    def __init__(self, config: uvicorn.Config, started: asyncio.Event | None) -> None:
        super().__init__(config)
        self._started_event = started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon owns SIGTERM/SIGINT/SIGHUP

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._started_event is not None:
            self._started_event.set()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6), or IocError naming why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise IocError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        raise IocError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


BACKLOG = 2048


class HttpServer:
    """The API server: `await serve()` runs until `stop()` / `shutdown()` (or cancellation)."""

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.settings = settings
        self.guard = ConnectionGuard(settings)
        self.config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http=GuardedH11Protocol.bind_guard(self.guard),
            ws="none",  # no WebSocket routes: an upgrade would leave the guarded protocol
            lifespan="off",
            access_log=False,
            log_config=None,  # the daemon configures logging (ioc.logs)
            server_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]  # float seconds work
            # In-flight requests get this long to finish on shutdown (a POST may wait `durable_wait`).
            timeout_graceful_shutdown=math.ceil(settings.durable_wait) + 5,
        )
        self._server: _Server | None = None
        self._finished = asyncio.Event()
        self.port: int | None = None  # the bound port once serving (useful with port 0)

    def metrics(self) -> Iterable[Metric]:
        """`ioc_http_connections*`: open, allowed, refused, timed out (a `Metrics` source)."""
        return self.guard.metrics()

    def _budget_connections(self) -> None:
        fd_limit = raise_fd_limit()
        budget = connection_budget(self.settings.max_connections, fd_limit)
        if budget < self.settings.max_connections:
            log.warning("http.max_connections_lowered", max_connections=self.settings.max_connections,
                        fd_limit=fd_limit, reserve=FD_RESERVE, allowed=budget,
                        fix="raise the file descriptor limit (LimitNOFILE=, ulimit -n) or lower max_connections")
        self.guard.max_connections = budget

    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Bind, serve until told to stop, then finish in-flight requests. Raises IocError when the
        address cannot be bound."""
        self._finished.clear()
        self._budget_connections()
        sock = bind(self.settings.host, self.settings.port)
        self.port = int(sock.getsockname()[1])
        server = self._server = _Server(self.config, started)
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exit_:  # uvicorn's way of failing at startup; never let it end the daemon
            raise IocError(f"cannot listen on {self.settings.listen}: the server failed to start "
                           f"(exit {exit_.code})") from None
        except asyncio.CancelledError:
            _close_now(server)
            raise
        finally:
            sock.close()
            self._finished.set()

    def stop(self) -> None:
        """Ask the server to stop taking connections and finish (returns at once)."""
        if self._server is not None:
            self._server.should_exit = True

    async def shutdown(self) -> None:
        """Stop and wait until in-flight requests are answered and `serve()` has returned."""
        if self._server is None:
            return
        self.stop()
        await self._finished.wait()

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started


def _close_now(server: uvicorn.Server) -> None:
    """On cancellation there is no time for a graceful stop: close the listeners and connections."""
    for listener in getattr(server, "servers", []):
        listener.close()
    for connection in list(server.server_state.connections):
        connection.shutdown()


async def serve(app: ASGIApp, settings: HttpSettings, *, started: asyncio.Event | None = None) -> None:
    """Run the API until cancelled (for a graceful stop, use `HttpServer` and its `shutdown()`)."""
    await HttpServer(app, settings).serve(started=started)
