"""A TCP fault proxy (a small Toxiproxy): it sits between the daemon and a server and does what it is told.

    python -m tests.chaos.proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --control 127.0.0.1:PORT

Modes, set over the control port (one JSON object a line, answered with one JSON line):

- `pass`: forward both ways.
- `latency` (`ms`): every chunk waits `ms` before it is forwarded, both ways (order kept).
- `reset`: the next chunk of a connection, either way, is forwarded in half and the connection is reset
  (RST on both sides): a request or an answer cut in the middle. New connections are cut the same way.
- `blackhole`: nothing is forwarded any more, either way, and nothing is closed; new connections are
  accepted and never answered. Leaving the mode resets the frozen connections (their streams have holes).
- `slowclose` (`ms`): when one side closes, the other is closed `ms` later (the peer keeps writing into a
  connection that is gone upstream).
- `http` (`status`): for an HTTP upstream: every request is read whole and answered with `status` and a
  JSON error body, keeping the connection alive; nothing reaches the server. Entering or leaving the mode
  closes the open connections, so each request is either forwarded or answered, never both.

Commands: `{"mode": "latency", "ms": 300}`, `{"stats": true}` (connections, resets, answers, bytes),
`{"quit": true}`. `ProxyProcess` runs one as a subprocess (so forwarding never competes with the caller for
the GIL) and drives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REASONS = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}
_CHUNK = 65536


@dataclass
class Mode:
    name: str = "pass"
    ms: int = 0
    status: int = 500


@dataclass(eq=False)
class Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    frozen: bool = False
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = Mode()
        self.connections: set[Connection] = set()
        self.stats: dict[str, int] = {"connections": 0, "resets": 0, "answers": 0, "bytes": 0,
                                      "upstream_refused": 0}

    # --- control ---------------------------------------------------------------------------------------

    def set_mode(self, mode: Mode) -> None:
        old, self.mode = self.mode, mode
        for conn in list(self.connections):
            if old.name == "blackhole" and conn.frozen:
                self._reset(conn)
            elif (mode.name == "http") != (old.name == "http"):
                # A connection is either forwarded or answered by us: never switch one mid-stream.
                self._close(conn)

    # --- connections -----------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        conn = Connection(writer)
        self.connections.add(conn)
        try:
            mode = self.mode
            if mode.name == "http":
                await self._answer(conn, reader)
                return
            if mode.name == "blackhole":
                conn.frozen = True
                while await reader.read(_CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
            except (OSError, TimeoutError):
                self.stats["upstream_refused"] += 1
                _abort(writer)  # as the server's own "connection refused" would look to the client
                return
            conn.upstream = up_writer
            conn.tasks = [asyncio.ensure_future(self._pump(conn, reader, up_writer)),
                          asyncio.ensure_future(self._pump(conn, up_reader, writer))]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections.discard(conn)
            if not conn.closed:
                self._close(conn)

    async def _pump(self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                mode = self.mode
                if conn.frozen or mode.name == "blackhole":
                    conn.frozen = True
                    continue  # swallowed: the peer waits for an answer that never comes
                if mode.name == "reset":
                    writer.write(data[: max(1, len(data) // 2)])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    self._reset(conn)
                    return
                if mode.name == "latency" and mode.ms:
                    await asyncio.sleep(mode.ms / 1000)
                self.stats["bytes"] += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        if conn.frozen or conn.closed:
            return
        # One side closed: the other follows (late in slowclose mode).
        mode = self.mode
        if mode.name == "slowclose" and mode.ms:
            await asyncio.sleep(mode.ms / 1000)
        self._close(conn)

    async def _answer(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        """Read HTTP/1.1 requests and answer each with the mode's status, never forwarding."""
        writer = conn.client
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            status = self.mode.status if self.mode.name == "http" else 503
            body = json.dumps({"error": f"injected {status} by the chaos proxy"}).encode()
            extra = "Retry-After: 1\r\n" if status == 503 else ""
            writer.write((f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                          f"X-Influxdb-Version: 1.6.7\r\n{extra}\r\n").encode() + body)
            await writer.drain()
            self.stats["answers"] += 1

    def _reset(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.stats["resets"] += 1
        _abort(conn.client)
        _abort(conn.upstream)

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        for writer in (conn.client, conn.upstream):
            if writer is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    writer.close()


async def _control(proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   stop: asyncio.Event) -> None:
    while line := await reader.readline():
        try:
            command: dict[str, Any] = json.loads(line)
            if command.get("quit"):
                stop.set()
                answer: dict[str, Any] = {"ok": True}
            elif command.get("stats"):
                answer = {"ok": True, "stats": dict(proxy.stats), "mode": proxy.mode.name,
                          "open": len(proxy.connections)}
            else:
                proxy.set_mode(Mode(str(command["mode"]), int(command.get("ms", 0)),
                                    int(command.get("status", 500))))
                answer = {"ok": True}
        except (ValueError, KeyError, TypeError) as error:
            answer = {"ok": False, "error": str(error)}
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int], control: tuple[str, int]) -> None:
    proxy = Proxy(upstream)
    stop = asyncio.Event()
    server = await asyncio.start_server(proxy.handle, *listen, reuse_address=True)
    controller = await asyncio.start_server(lambda r, w: _control(proxy, r, w, stop), *control,
                                            reuse_address=True)
    async with server, controller:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--control", required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(_address(args.listen), _address(args.upstream), _address(args.control)))


# --- the caller's side ---------------------------------------------------------------------------------

class ProxyProcess:
    """A proxy in its own process: `listen_port` forwards to `upstream_port` until told otherwise."""

    def __init__(self, name: str, upstream_port: int, workdir: Path) -> None:
        from tests.servers import free_port, wait_for_port

        self.name = name
        self.listen_port = free_port()
        self.control_port = free_port()
        self.upstream_port = upstream_port
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(workdir / f"proxy-{name}.log", "ab")  # noqa: SIM115 - kept for the child's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy", "--listen", f"127.0.0.1:{self.listen_port}",
             "--upstream", f"127.0.0.1:{upstream_port}", "--control", f"127.0.0.1:{self.control_port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2])
        wait_for_port(self.control_port)
        wait_for_port(self.listen_port)
        self._sock: socket.socket | None = None
        self.mode = "pass"

    def command(self, **command: Any) -> dict[str, Any]:
        for attempt in range(2):
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(("127.0.0.1", self.control_port), timeout=5)
                self._sock.sendall(json.dumps(command).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = self._sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("the proxy closed its control connection")
                    data += chunk
                answer: dict[str, Any] = json.loads(data)
                if not answer.get("ok"):
                    raise RuntimeError(f"proxy {self.name}: {answer}")
                return answer
            except OSError:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None
                if attempt:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def set(self, mode: str, **params: int) -> None:
        self.command(mode=mode, **params)
        self.mode = mode

    def stats(self) -> dict[str, Any]:
        return self.command(stats=True)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.command(quit=True)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self._sock is not None:
            self._sock.close()
        self._log.close()


if __name__ == "__main__":
    main()
