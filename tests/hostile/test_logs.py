"""The log never fills up (docs/operations.md): a repeated warning or error is written at most once per 10 s
per logger and event, and the next one through says how many were held back. On 3c5b46e asyncio logged
`socket.accept() out of system resource` with a traceback 634,879 times (251 MB) in ~20 s."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog
from structlog.testing import capture_logs

from ioc.logs import REPEAT_WINDOW, RepeatFilter, RepeatLimiter, RepeatProcessor
from tests.doubles import SettableClock


def test_the_first_passes_repeats_are_held_and_counted_until_the_window_has_passed() -> None:
    clock = SettableClock(1000.0)
    limiter = RepeatLimiter(10.0, clock=clock)
    assert limiter.check("a") == 0
    for _ in range(5):
        clock.now += 1
        assert limiter.check("a") is None
    assert limiter.check("b") == 0  # another key is not held by the first
    clock.now += 4.9  # 9.9 s after the one that passed
    assert limiter.check("a") is None
    clock.now += 0.1
    assert limiter.check("a") == 6  # the count of those held back, then it starts again
    assert limiter.check("a") is None
    clock.now += 10
    assert limiter.check("a") == 1
    clock.now += 10
    assert limiter.check("a") == 0


def test_the_limiter_remembers_a_bounded_number_of_keys() -> None:
    clock = SettableClock(1000.0)
    limiter = RepeatLimiter(10.0, clock=clock, max_keys=100)
    for key in range(10_000):
        limiter.check(key)
    assert len(limiter) <= 100
    assert limiter.check(9_999) is None  # the newest are the ones kept


def test_the_structlog_processor_limits_warnings_and_errors_by_logger_and_event() -> None:
    clock = SettableClock(1000.0)
    processor = RepeatProcessor(RepeatLimiter(REPEAT_WINDOW, clock=clock))
    log = structlog.get_logger("ioc.test")
    with capture_logs(processors=[processor]) as captured:
        for index in range(1000):
            log.warning("area.unknown", code=str(index))
            log.error("sink.write_failed", attempt=index)
            log.info("request.served", n=index)  # below warning: never held back
        clock.now += REPEAT_WINDOW
        log.warning("area.unknown", code="x")
        log.warning("other.event")
    by_event: dict[str, list[MutableMapping[str, Any]]] = {}
    for entry in captured:
        by_event.setdefault(str(entry["event"]), []).append(entry)
    assert len(by_event["request.served"]) == 1000
    assert [e.get("code") for e in by_event["area.unknown"]] == ["0", "x"]
    assert "repeated" not in by_event["area.unknown"][0]
    assert by_event["area.unknown"][1]["repeated"] == 999
    assert len(by_event["sink.write_failed"]) == 1
    assert by_event["other.event"] == [{"event": "other.event", "log_level": "warning"}]


def test_the_logging_filter_limits_library_records_with_numbers_masked() -> None:
    clock = SettableClock(1000.0)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RepeatFilter(RepeatLimiter(REPEAT_WINDOW, clock=clock)))
    logger = logging.getLogger("test.asyncio.flood")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for index in range(500):
            # asyncio's message carries the socket's repr, with its file descriptor and port.
            logger.error(f"socket.accept() out of system resource\nsocket: <fd={index} laddr=('127.0.0.1', "
                         f"{40000 + index})>", exc_info=OSError(24, "Too many open files"))
            logger.info("connection %d made", index)
        clock.now += REPEAT_WINDOW
        logger.error("socket.accept() out of system resource\nsocket: <fd=7>")
    finally:
        logger.removeHandler(handler)
    errors = [record for record in records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    assert not hasattr(errors[0], "repeated") and errors[1].repeated == 499  # type: ignore[attr-defined]
    assert sum(record.levelno == logging.INFO for record in records) == 500


FLOOD = textwrap.dedent("""
    import asyncio, resource, socket, sys, time
    from ioc.logs import configure_logging

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    configure_logging("info", "json")

    async def main():
        held = []
        server = await asyncio.start_server(lambda reader, writer: held.append(writer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(f"{port}\\n")
        sys.stdout.flush()
        await asyncio.sleep(float(sys.argv[1]))

    asyncio.run(main())
""")


def test_an_accept_error_flood_is_logged_once_not_per_attempt(tmp_path: Path) -> None:
    """A real asyncio server at its descriptor limit: every accept fails with EMFILE and asyncio reports
    each one (with a traceback) to the logging module; the log gets one line per 10 s."""
    script = tmp_path / "flood.py"
    script.write_text(FLOOD)
    seconds = 3.0
    # The `ioc` of the tree this test is in (the script's own folder would come first on sys.path).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen([sys.executable, str(script), str(seconds)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    clients: list[socket.socket] = []
    deadline = time.monotonic() + seconds - 1
    while time.monotonic() < deadline and len(clients) < 300:
        try:
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
        except OSError:
            time.sleep(0.01)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        for client in clients:
            client.close()
    lines = stderr.decode().splitlines()
    assert 1 <= len(lines) <= 5, f"{len(lines)} lines, {len(stderr)} bytes:\n" + "\n".join(lines[:10])
    first = orjson.loads(lines[0])
    assert first["logger"] == "asyncio" and first["level"] == "error"
    assert first["event"].startswith("socket.accept() out of system resource")
    assert first["exception"][0]["exc_type"] == "OSError"


def test_tracebacks_in_the_log_carry_no_local_variables(tmp_path: Path) -> None:
    """A frame's locals may hold a token or a password: tracebacks are logged without them."""
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""
        import logging, structlog
        from ioc.logs import configure_logging

        configure_logging("info", "json")

        def connect(password):
            raise ConnectionError("refused")

        for log in (lambda: structlog.get_logger("ioc.t").exception("t.failed"),
                    lambda: logging.getLogger("lib").exception("lib failed")):
            try:
                connect("s3cret-pw")
            except ConnectionError:
                log()
    """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    for line in lines:
        record = orjson.loads(line)
        assert record["exception"][0]["frames"][-1]["name"] == "connect"
    assert "s3cret-pw" not in result.stderr
