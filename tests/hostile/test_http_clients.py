"""Hostile HTTP clients against `ioc run` (docs/operations.md "HTTP clients"), measured on commit 3c5b46e:
500 slowloris connections were held 30 s and none closed; idle connections up to the file descriptor
limit made `/healthz` and `POST /api/v1/events` time out while asyncio logged a traceback per failed
accept (634,879 of them in ~20 s); 300 SSE clients all got in over a cap of 256.

The daemon runs as a subprocess with small limits so each case takes seconds: 50 connections, headers
within 1 s, the body within 2 s, keep-alive 1 s, 8 streams. Clients are raw sockets, so the tests
control every byte and see exactly when the server closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from ioc.config import token_sha256
from tests.e2e.daemon import DaemonProcess
from tests.servers import free_port
from tests.waiting import wait_until

VENDOR_TOKEN = "vendor-token-hostile"
MAX_CONNECTIONS = 50
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 1.0
MAX_STREAMS = 8
MARGIN = 1.5  # seconds of slack over a timeout on a shared 2-core machine


def config_text(port: int, store: Path, *, max_connections: int = MAX_CONNECTIONS) -> str:
    return f"""
[http]
listen = "127.0.0.1:{port}"
max_connections = {max_connections}
header_timeout = "{HEADER_TIMEOUT:g}s"
body_timeout = "{BODY_TIMEOUT:g}s"
keepalive_timeout = "{KEEPALIVE_TIMEOUT:g}s"
max_streams = {MAX_STREAMS}

[mqtt]
enabled = false

[influx]
url = ""

[store]
path = "{store}"

[alerts]
stream_heartbeat = "500ms"

[log]
format = "json"

[[vendors]]
name = "qtmt"
token_sha256 = "{token_sha256(VENDOR_TOKEN)}"
sources = ["qtmt-aqi"]
rate = 100000
"""


class LimitedDaemon(DaemonProcess):
    """`ioc run` whose file descriptor limit can be lowered (to reach it cheaply)."""

    nofile: int | None = None

    def start(self, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        self.runs += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        # The limit is set by the child itself before the daemon starts (no preexec_fn: the test
        # process has threads).
        launcher = ("import resource, runpy, sys\n"
                    f"if {self.nofile!r} is not None:\n"
                    f"    resource.setrlimit(resource.RLIMIT_NOFILE, ({self.nofile!r}, {self.nofile!r}))\n"
                    f"sys.argv = ['ioc', 'run', '--config', {str(self.config)!r}]\n"
                    "runpy.run_module('ioc.cli', run_name='__main__')\n")
        self.process = subprocess.Popen([sys.executable, "-c", launcher], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        if wait_ready:
            self.wait_ready()


def make(tmp: Path, *, nofile: int | None = None, max_connections: int = MAX_CONNECTIONS) -> LimitedDaemon:
    port = free_port()
    config = tmp / "ioc.toml"
    config.write_text(config_text(port, tmp / "var" / "ioc.db", max_connections=max_connections))
    daemon = LimitedDaemon(config, port, tmp / "ioc.log")
    daemon.nofile = nofile
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitedDaemon]:
    process = make(tmp_path_factory.mktemp("hostile-http"))
    process.start()
    yield process
    process.stop()


def connect(daemon: DaemonProcess, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def closed_within(sock: socket.socket, seconds: float, *, drip: bytes = b"",
                  every: float = 0.2) -> tuple[float | None, bytes]:
    """Seconds until the server closed `sock` (None: still open after `seconds`), and what it sent.
    With `drip`, one more byte of it is sent every `every` seconds, as a slowloris client does."""
    start = time.monotonic()
    received = b""
    position = 0
    while time.monotonic() - start < seconds:
        if drip:
            try:
                sock.sendall(drip[position % len(drip):position % len(drip) + 1])
            except OSError:
                return time.monotonic() - start, received
            position += 1
        sock.settimeout(every)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - start, received
        if not chunk:
            return time.monotonic() - start, received
        received += chunk
    return None, received


def wait_for_free_slots(daemon: DaemonProcess, timeout: float = 10.0) -> None:
    """Until /healthz answers: every connection an earlier test held has timed out."""
    wait_until("/healthz answering", lambda: httpx.get(f"{daemon.api}/healthz", timeout=1).status_code == 200,
               timeout, transient=(httpx.HTTPError,))


def post_event(daemon: DaemonProcess, event_id: str, timeout: float = 5.0) -> httpx.Response:
    event = {"id": event_id, "source": "qtmt-aqi", "type": "telemetry", "time": "2026-01-05T08:00:00+07:00",
             "metric": "env.aqi", "value": 42.0, "area": "60"}
    return httpx.post(f"{daemon.api}/api/v1/events", content=orjson.dumps(event), timeout=timeout,
                      headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})


# --- timeouts -------------------------------------------------------------------------------------------

def test_slowloris_connections_are_closed_within_the_header_timeout(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    request = b"GET /healthz HTTP/1.1\r\nHost: ioc\r\n" + b"X-Slow: " + b"a" * 200  # never ends
    sockets = [connect(daemon) for _ in range(20)]
    try:
        with ThreadPoolExecutor(len(sockets)) as pool:
            results = list(pool.map(
                lambda sock: closed_within(sock, HEADER_TIMEOUT + 4, drip=request, every=0.2), sockets))
    finally:
        for sock in sockets:
            sock.close()
    for elapsed, _ in results:
        assert elapsed is not None, "a slowloris client was never closed"
        assert elapsed <= HEADER_TIMEOUT + MARGIN, elapsed
    assert httpx.get(f"{daemon.api}/healthz", timeout=5).status_code == 200


def test_a_connection_that_never_sends_is_closed(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    with connect(daemon) as sock:
        elapsed, received = closed_within(sock, HEADER_TIMEOUT + 4)
    assert elapsed is not None and elapsed <= HEADER_TIMEOUT + MARGIN, elapsed
    assert received == b""


def test_a_slow_body_is_answered_408_and_closed(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    head = (f"POST /api/v1/events HTTP/1.1\r\nHost: ioc\r\nAuthorization: Bearer {VENDOR_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    with connect(daemon) as sock:
        sock.sendall(head)
        elapsed, received = closed_within(sock, BODY_TIMEOUT + 4, drip=b"[" + b" " * 1000, every=0.2)
    assert elapsed is not None, "a slow body was never cut off"
    assert elapsed <= BODY_TIMEOUT + MARGIN, elapsed
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"request body not received" in received


def test_an_idle_keep_alive_connection_is_closed(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    with connect(daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ioc\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        # Kept alive for the next request, then closed when it does not come.
        elapsed, _ = closed_within(sock, KEEPALIVE_TIMEOUT + 4)
    assert elapsed is not None and elapsed <= KEEPALIVE_TIMEOUT + MARGIN, elapsed


def test_a_stream_outlives_every_timeout(daemon: LimitedDaemon) -> None:
    """SSE is a response in progress: no header, body or keep-alive timer runs while it is sent."""
    wait_for_free_slots(daemon)
    with connect(daemon) as sock:
        sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: ioc\r\n\r\n")
        lasted = 2 * max(HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT) + 1
        elapsed, received = closed_within(sock, lasted)
    assert elapsed is None, f"the stream was closed after {elapsed:.1f}s"
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"event: ping") >= 4  # every 500 ms, all along


# --- connection limit --------------------------------------------------------------------------------

def hold(daemon: DaemonProcess, count: int) -> list[socket.socket]:
    """`count` connections that send nothing."""
    held = []
    for _ in range(count):
        try:
            held.append(connect(daemon, timeout=2))
        except OSError:
            break
    return held


def test_connections_past_max_connections_are_refused_at_once(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    held = hold(daemon, MAX_CONNECTIONS)
    try:
        time.sleep(0.3)  # all accepted by the daemon
        extra = [connect(daemon) for _ in range(10)]
        try:
            for sock in extra:
                elapsed, received = closed_within(sock, 1.0)
                assert elapsed is not None, "a connection past max_connections was kept"
                assert received == b"" or received.startswith(b"HTTP/1.1 503 "), received
        finally:
            for sock in extra:
                sock.close()
        # The held ones are idle clients: once they time out, /healthz answers again.
        start = time.monotonic()
        wait_for_free_slots(daemon, timeout=HEADER_TIMEOUT + 5)
        assert time.monotonic() - start <= HEADER_TIMEOUT + MARGIN + 1
    finally:
        for sock in held:
            sock.close()


def test_a_flood_at_the_descriptor_limit_loses_no_event_and_does_not_fill_the_log(tmp_path: Path) -> None:
    """The daemon's RLIMIT_NOFILE lowered to 400 and 1,000 idle connections thrown at it: on 3c5b46e
    accept() failed with EMFILE, /healthz and POSTs timed out and asyncio logged a traceback per try."""
    flood = make(tmp_path, nofile=400, max_connections=1024)
    flood.start()
    try:
        before = len(flood.log().splitlines())
        assert post_event(flood, "before").status_code == 202
        held: list[socket.socket] = []
        stop = threading.Event()

        def attacker() -> None:  # keeps opening connections for 4 s, as fast as it can
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not stop.is_set():
                if len(held) >= 1000:
                    time.sleep(0.05)
                    continue
                try:
                    held.append(socket.create_connection(("127.0.0.1", flood.http_port), timeout=1))
                except OSError:
                    time.sleep(0.01)

        thread = threading.Thread(target=attacker)
        thread.start()
        try:
            time.sleep(1.5)  # the flood is on
            # While it lasts, every try gets an answer or a refusal at once, never a hang.
            answered = 0
            for _ in range(5):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{flood.api}/healthz", timeout=2).status_code == 200:
                        answered += 1
        finally:
            thread.join()
        stop.set()
        log_lines = flood.log().splitlines()[before:]
        assert len(log_lines) <= 20, f"{len(log_lines)} lines logged:\n" + "\n".join(log_lines[:20])
        # Once the idle clients time out, /healthz answers and events are accepted.
        start = time.monotonic()
        wait_for_free_slots(flood, timeout=HEADER_TIMEOUT + 5)
        assert time.monotonic() - start <= HEADER_TIMEOUT + MARGIN + 1
        accepted = post_event(flood, "after")
        assert accepted.status_code == 202 and accepted.json()["accepted"] == 1
        for sock in held:
            sock.close()
        assert flood.metric_sum("ioc_events_accepted_total", source="qtmt-aqi") == 2
    finally:
        flood.stop()
    start_lines = [line for line in flood.log().splitlines() if "http.max_connections_lowered" in line]
    assert start_lines, "the lowered connection cap was not logged"
    warning = orjson.loads(start_lines[0])
    assert warning["max_connections"] == 1024 and warning["fd_limit"] == 400


# --- SSE cap ---------------------------------------------------------------------------------------------

def open_stream(daemon: DaemonProcess) -> tuple[socket.socket, int]:
    """A stream request on a raw socket: (the socket, the status of the answer)."""
    sock = connect(daemon)
    sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: ioc\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split(b" ", 2)[1]) if head else 0


def sse_clients(daemon: DaemonProcess) -> float:
    return daemon.metric_sum("ioc_sse_clients")


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_the_stream_cap_is_exact_under_concurrency_and_frees_places(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    until(lambda: sse_clients(daemon) == 0)
    barrier = threading.Barrier(30)

    def racer(_: int) -> tuple[socket.socket, int]:
        barrier.wait()
        return open_stream(daemon)

    with ThreadPoolExecutor(30) as pool:
        opened = list(pool.map(racer, range(30)))
    try:
        statuses = sorted(status for _, status in opened)
        assert statuses.count(200) == MAX_STREAMS, statuses
        assert statuses.count(503) == 30 - MAX_STREAMS, statuses
        assert sse_clients(daemon) == MAX_STREAMS
        # Three clients leave; three new ones get in, the next is refused.
        streaming = [sock for sock, status in opened if status == 200]
        for sock in streaming[:3]:
            sock.close()
        until(lambda: sse_clients(daemon) == MAX_STREAMS - 3)
        later = [open_stream(daemon) for _ in range(4)]
        opened += later
        assert [status for _, status in later] == [200, 200, 200, 503]
    finally:
        for sock, _ in opened:
            sock.close()
    until(lambda: sse_clients(daemon) == 0)
    assert daemon.metric_sum("ioc_sse_refused_total") >= 30 - MAX_STREAMS + 1


def test_a_stream_client_gone_before_the_first_byte_gives_its_place_back(daemon: LimitedDaemon) -> None:
    wait_for_free_slots(daemon)
    until(lambda: sse_clients(daemon) == 0)
    for _ in range(3 * MAX_STREAMS):  # more than the cap, each gone at once
        with connect(daemon) as sock:
            sock.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: ioc\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    until(lambda: sse_clients(daemon) == 0)
    sock, status = open_stream(daemon)
    sock.close()
    assert status == 200


async def test_concurrent_stream_requests_never_take_more_places_than_the_cap() -> None:
    """The race itself, in process: `full()` was checked at request time but the place was taken only
    when the stream's generator first ran, after the response had started, so every request that came
    in that gap got in (on 3c5b46e all 300 of 300 clients, over a cap of 256)."""
    from fastapi import FastAPI

    from ioc.api.server import HttpServer
    from ioc.api.stream import Broadcaster, stream_router
    from ioc.config import HttpSettings

    broadcaster = Broadcaster(max_clients=MAX_STREAMS, heartbeat=60)
    app = FastAPI()
    app.include_router(stream_router(broadcaster))
    server = HttpServer(app, HttpSettings(listen="127.0.0.1:0"))
    started = asyncio.Event()
    serving = asyncio.create_task(server.serve(started))
    await asyncio.wait_for(started.wait(), 10)
    assert server.port is not None
    port = server.port

    async def request() -> tuple[asyncio.StreamWriter, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /api/v1/stream HTTP/1.1\r\nHost: ioc\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return writer, int(status_line.split(b" ", 2)[1])

    try:
        opened = await asyncio.gather(*(request() for _ in range(40)))
        statuses = [status for _, status in opened]
        assert statuses.count(200) == MAX_STREAMS, sorted(statuses)
        assert broadcaster.clients == MAX_STREAMS
        for writer, _ in opened:
            writer.close()
        deadline = time.monotonic() + 10
        while broadcaster.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert broadcaster.clients == 0
    finally:
        broadcaster.close()
        await server.shutdown()
        await serving


# --- through the proxy of deploy/ ------------------------------------------------------------------------

@pytest.fixture
def nginx(daemon: LimitedDaemon, tmp_path: Path) -> Iterator[str]:
    """deploy/nginx/ioc.conf in front of the daemon (skipped without nginx): its URL."""
    import shutil

    from tests.servers import wait_for_port
    from tests.unit.test_deploy import DEPLOY, nginx_main_conf

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (Debian package nginx)")
    port = free_port()
    text = (DEPLOY / "nginx" / "ioc.conf").read_text(encoding="utf-8")
    text = text.replace("server ioc:8080;", f"server 127.0.0.1:{daemon.http_port};")
    (tmp_path / "ioc.conf").write_text(text.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    main = nginx_main_conf(tmp_path)
    if os.geteuid() == 0:
        main = "user root;\n" + main  # workers would run as nobody, who cannot enter the temp dir
    (tmp_path / "nginx.conf").write_text(main)
    process = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_through_the_proxy_streams_flow_unbuffered_and_big_bodies_stop_there(
        daemon: LimitedDaemon, nginx: str) -> None:
    wait_for_free_slots(daemon)
    assert httpx.get(f"{nginx}/healthz", timeout=5).json() == {"status": "ok"}
    with httpx.stream("GET", f"{nginx}/api/v1/stream", timeout=5) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        start, pings = time.monotonic(), 0
        for line in stream.iter_lines():  # pings every 500 ms arrive one by one, not in a buffer's worth
            pings += line == "event: ping"
            if pings == 3:
                break
        assert time.monotonic() - start < 3
    too_big = httpx.post(f"{nginx}/api/v1/events", content=b"[" + b" " * (8 * 1024 * 1024) + b"]", timeout=10,
                         headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})
    assert too_big.status_code == 413 and too_big.headers.get("server") == "nginx"  # not the daemon's answer
    accepted = httpx.post(f"{nginx}/api/v1/events", timeout=10,
                          headers={"Authorization": f"Bearer {VENDOR_TOKEN}"}, json={"id": "via-proxy", "source": "qtmt-aqi", "type": "telemetry",
                                "time": "2026-01-05T08:00:00+07:00", "metric": "env.aqi", "value": 1.0})
    assert accepted.status_code == 202, accepted.text


@pytest.mark.parametrize("token", [True, False])  # without one the app answers 401 without reading the body
@pytest.mark.parametrize("request_bytes", [
    # Found by the fuzzer (tests/fuzz): a chunk size h11 refuses while the app is reading the body.
    b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n-1\r\n",
    b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n",
])
def test_a_request_broken_mid_body_is_a_400_never_an_internal_error(daemon: LimitedDaemon,
                                                                    request_bytes: bytes, token: bool) -> None:
    before = daemon.log_path.read_bytes().count(b"api.internal_error")
    sock = connect(daemon)
    if token:
        request_bytes = request_bytes.replace(
            b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {VENDOR_TOKEN}\r\n".encode())
    sock.sendall(request_bytes)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert post_event(daemon, f"after-broken-{len(request_bytes)}-{token}").status_code == 202
    time.sleep(0.3)  # the application's side of the cut-off request has finished by now
    assert daemon.log_path.read_bytes().count(b"api.internal_error") == before


# --- request heads --------------------------------------------------------------------------------------

def _send_and_read(daemon: DaemonProcess, data: bytes) -> bytes:
    sock = connect(daemon)
    with contextlib.suppress(OSError):
        sock.sendall(data)
    answer = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    return answer


@pytest.mark.parametrize("split", [False, True])
def test_a_request_head_over_16_kib_is_a_431_in_json_and_one_at_the_limit_is_served(
        daemon: LimitedDaemon, split: bool) -> None:
    """A head past the limit was answered by uvicorn's plain-text 400 "Invalid HTTP request received."; it is
    a 431 with a JSON reason like every refusal of the API, whether it comes in one read or dribbles in.
    A head just under the limit, and a body far bigger than it, are served."""
    before = daemon.metric_sum("ioc_http_heads_too_large_total")
    line = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    filler = b"X-Filler: " + b"a" * 200 + b"\r\n"
    big = line + filler * (17 * 1024 // len(filler)) + b"\r\n"
    if split:
        sock = connect(daemon)
        for start in range(0, len(big), 4096):
            with contextlib.suppress(OSError):
                sock.sendall(big[start:start + 4096])
            time.sleep(0.02)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        sock.close()
    else:
        answer = _send_and_read(daemon, big)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"application/json" in head and orjson.loads(body) == {"error": "request line and headers over 16384 bytes"}
    assert daemon.metric_sum("ioc_http_heads_too_large_total") == before + 1

    under = line + filler * (15 * 1024 // len(filler)) + b"Connection: close\r\n\r\n"
    assert _send_and_read(daemon, under).startswith(b"HTTP/1.1 200")
    event = {"id": f"big-body-head-{split}", "source": "qtmt-aqi", "type": "telemetry",
             "time": "2026-01-05T08:00:00+07:00", "metric": "env.aqi", "value": 42.0, "area": "60",
             "tags": {"note": "n" * 200}}
    body = orjson.dumps([event] + [{**event, "id": f"big-body-head-{split}-{i}"} for i in range(400)])
    assert len(body) > 64 * 1024
    response = httpx.post(f"{daemon.api}/api/v1/events", content=body, timeout=10,
                          headers={"Authorization": f"Bearer {VENDOR_TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == 202 and response.json()["accepted"] == 401
