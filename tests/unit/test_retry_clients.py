"""The clients that retry with ioc/retry.py, against a tiny local HTTP server: a webhook's Retry-After is read
as seconds or as an HTTP date, on 429 and on 5xx, and the queue waits for it before trying again."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ioc.alerts.alert import Alert
from ioc.alerts.config import WebhookSettings
from ioc.alerts.errors import NotifyError
from ioc.alerts.notify import Queued, WebhookNotifier
from ioc.retry import RetryPolicy


class _Answers(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, Retry-After) of the server's script, then 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server: Any = self.server
        with server.lock:
            server.times.append(time.monotonic())
            status, retry_after = server.script.pop(0) if server.script else (200, None)
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    httpd.lock, httpd.script, httpd.times = threading.Lock(), [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _webhook(server: Any) -> WebhookNotifier:
    return WebhookNotifier(WebhookSettings(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))


def _alert() -> Alert:
    return Alert(id="a1", fingerprint="0123456789abcdef", rule="coverage-outage", severity="critical",
                 state="firing", labels={"area": "22723"}, summary="", value=62.5, started_at=1.7e9,
                 fired_at=1.7e9 + 300)


@pytest.mark.parametrize(("status", "header", "low", "high"), [
    (429, "7", 7.0, 7.0),
    (503, "3", 3.0, 3.0),
    (503, "in a while", None, None),  # unreadable: our own backoff applies
    (404, "7", None, None),  # not retryable: its hint means nothing
])
def test_a_webhook_reads_retry_after_where_a_retry_follows(server: Any, status: int, header: str,
                                                           low: float | None, high: float | None) -> None:
    server.script.append((status, header))
    with pytest.raises(NotifyError) as raised:
        _webhook(server).notify(_alert(), "firing")
    assert raised.value.retryable == (status != 404)
    if low is None:
        assert raised.value.retry_after is None
    else:
        assert raised.value.retry_after == low == high


def test_a_webhook_reads_an_http_date(server: Any) -> None:
    server.script.append((503, email.utils.formatdate(time.time() + 30, usegmt=True)))
    with pytest.raises(NotifyError) as raised:
        _webhook(server).notify(_alert(), "firing")
    assert raised.value.retry_after is not None and 28 <= raised.value.retry_after <= 30


def test_the_queue_waits_what_the_server_asked_then_delivers(server: Any) -> None:
    server.script.append((503, "1"))
    queued = Queued(_webhook(server), policy=RetryPolicy(max_attempts=3, backoff_min=0.05, backoff_max=5.0))
    try:
        queued.notify(_alert(), "firing")
        assert queued.wait_idle(20)
    finally:
        queued.close(1)
    assert queued.outcomes()["sent"] == 1 and queued.retries == 1
    first, second = server.times
    assert second - first >= 0.95  # the server's second, not our 50 ms
