"""Uvicorn inside the daemon's own event loop, so the HTTP API is one task of its `asyncio.TaskGroup`.

The daemon owns the process: it installs the signal handlers (uvicorn's are disabled), it decides when the
server stops (`HttpServer.shutdown()` or `stop()`), and a port that cannot be bound is an `IocError` with
the reason instead of uvicorn's `SystemExit`. The socket is bound here, before uvicorn starts, so the
error is the operating system's own (`Address already in use`) and port 0 works (tests read `.port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from ioc.config import HttpSettings
from ioc.errors import IocError


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
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise IocError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """The API server: `await serve()` runs until `stop()` / `shutdown()` (or cancellation)."""

    def __init__(self, app: ASGIApp, settings: HttpSettings) -> None:
        self.settings = settings
        self.config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="off",
            access_log=False,
            log_config=None,  # the daemon configures logging (ioc.logs)
            server_header=False,
            # In-flight requests get this long to finish on shutdown (a POST may wait `durable_wait`).
            timeout_graceful_shutdown=math.ceil(settings.durable_wait) + 5,
        )
        self._server: _Server | None = None
        self._finished = asyncio.Event()
        self.port: int | None = None  # the bound port once serving (useful with port 0)

    async def serve(self, started: asyncio.Event | None = None) -> None:
        """Bind, serve until told to stop, then finish in-flight requests. Raises IocError when the
        address cannot be bound."""
        self._finished.clear()
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
