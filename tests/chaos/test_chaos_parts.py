"""The chaos suite's own parts, each shown to catch what it is there to catch: the fault proxy's modes,
the counting-rule check, the alert-change check, and the mapping of InfluxDB points back to events."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.chaos.checker import check_alerts, counting_rule_problems, read_stream, refused_points
from tests.chaos.generator import Stream, Toggle
from tests.chaos.proxy import ProxyProcess
from tests.chaos.world import ALARM_RULE, DATABASE
from tests.servers import Server

# --- the fault proxy ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy in front of an echo server."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def echo(conn: socket.socket = conn) -> None:
                with conn:
                    try:
                        while data := conn.recv(4096):
                            conn.sendall(data)
                    except OSError:
                        pass

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    proxy = ProxyProcess("echo", server.getsockname()[1], tmp_path_factory.mktemp("proxy"))
    yield proxy
    proxy.close()
    server.close()


def exchange(proxy: ProxyProcess, data: bytes = b"ping", timeout: float = 2.0) -> tuple[bytes | str, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            answer: bytes | str = sock.recv(4096)
        except OSError as error:
            answer = type(error).__name__
    return answer, time.monotonic() - started


def test_proxy_modes(echo_proxy: ProxyProcess) -> None:
    assert exchange(echo_proxy)[0] == b"ping"
    echo_proxy.set("latency", ms=300)
    answer, took = exchange(echo_proxy)
    assert answer == b"ping" and took >= 0.55  # 300 ms each way
    echo_proxy.set("reset")
    assert exchange(echo_proxy)[0] in ("ConnectionResetError", b"")
    echo_proxy.set("blackhole")
    answer, took = exchange(echo_proxy, timeout=0.5)
    assert answer == "TimeoutError"
    echo_proxy.set("pass")
    assert exchange(echo_proxy)[0] == b"ping"
    assert echo_proxy.stats()["stats"]["resets"] >= 1


def test_proxy_answers_http_without_forwarding(echo_proxy: ProxyProcess) -> None:
    echo_proxy.set("http", status=503)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{echo_proxy.listen_port}", timeout=2) as client:
            for _ in range(2):  # the connection is kept alive between answers
                response = client.post("/write", content=b"m value=1 1")
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "1"
                assert "chaos proxy" in response.json()["error"]
    finally:
        echo_proxy.set("pass")
    assert exchange(echo_proxy)[0] == b"ping"


# --- the counting rule -----------------------------------------------------------------------------------

SCRAPE = """\
# TYPE ioc_events_received_total counter
ioc_events_received_total{{source="a"}} {received}
# TYPE ioc_events_accepted_total counter
ioc_events_accepted_total{{source="a"}} 7
# TYPE ioc_events_duplicate_total counter
ioc_events_duplicate_total{{source="a"}} 1
# TYPE ioc_events_rejected_total counter
ioc_events_rejected_total{{source="a",reason="invalid"}} 1
ioc_events_rejected_total{{source="a",reason="future_time"}} 1
# TYPE ioc_sink_points_handed_total counter
ioc_sink_points_handed_total{{sink="influx"}} {handed}
# TYPE ioc_sink_points_total counter
ioc_sink_points_total{{sink="influx",outcome="written",reason=""}} 5
ioc_sink_points_total{{sink="influx",outcome="dropped",reason="spool_full"}} 1
# TYPE ioc_sink_queue_points gauge
ioc_sink_queue_points{{sink="influx"}} 1
# TYPE ioc_sink_spool_points gauge
ioc_sink_spool_points{{sink="influx"}} 0
"""


def test_counting_rule_check() -> None:
    assert counting_rule_problems(SCRAPE.format(received=10, handed=7)) == []
    problems = counting_rule_problems(SCRAPE.format(received=11, handed=8))
    assert problems == ["source a: received 11 != accepted 7 + rejected 2 + duplicate 1",
                        "sink influx: handed 8 != outcomes 6 + queue 1 + spool 0"]


# --- alert changes ---------------------------------------------------------------------------------------


def change(kind: str, value: float, alert_id: str = "x") -> tuple[float, dict[str, object]]:
    return (0.0, {"change": kind, "alert": {"rule": ALARM_RULE, "value": value, "id": alert_id}})


def toggles(count: int, *, unacked: tuple[int, ...] = ()) -> list[Toggle]:
    return [Toggle(n, 1000.0 + n if n % 2 == 0 else n / 1000, n % 2 == 0, 0.0,
                   None if n in unacked else 1.0) for n in range(count)]


def test_alert_check_finds_lost_twice_and_unexpected_changes() -> None:
    four = toggles(4)
    good = [change("firing", 1000), change("resolved", 0.001), change("firing", 1002), change("resolved", 0.003)]
    assert check_alerts(four, good) == []
    findings = check_alerts(four, [good[0], good[1], good[1], change("firing", 1000, "y"),
                                   change("pending", 1002)])
    assert sorted((finding.kind, finding.toggle.number if finding.toggle else None) for finding in findings) == [
        ("lost", 2), ("lost", 3), ("twice", 0), ("twice", 1), ("unexpected", None)]
    # A toggle never acknowledged may or may not have been seen: neither lost nor unexpected.
    assert check_alerts(toggles(4, unacked=(2,)), good[:2]) == []
    assert check_alerts(toggles(4, unacked=(2,)), good) == []


# --- InfluxDB points back to events ---------------------------------------------------------------------


def test_points_map_back_to_events(influxdb: Server, tmp_path: Path) -> None:
    stream = Stream("t", "chaos-t", "chaos.parts", datetime(2026, 3, 2, 1, tzinfo=UTC))
    for _ in range(5):
        stream.new(0.0)
    base = stream.base_ns
    lines = [f"chaos.parts,source=chaos-t value={float(i)} {base + i * 1000}" for i in (0, 1, 3)]
    lines.append(f"chaos.parts,source=chaos-t value=9.0 {base + 4 * 1000}")  # a point no event has
    lines.append(f"chaos.parts,source=chaos-t value=1.0 {base - 5000}")  # before the stream
    httpx.post(f"{influxdb.url}/query", params={"q": f"DROP DATABASE {DATABASE}"}).raise_for_status()
    httpx.post(f"{influxdb.url}/query", params={"q": f"CREATE DATABASE {DATABASE}"}).raise_for_status()
    httpx.post(f"{influxdb.url}/write", params={"db": DATABASE}, content="\n".join(lines)).raise_for_status()
    result = read_stream(influxdb.url, stream, chunk=2)
    assert dict(result.points) == {0: 1, 1: 1, 3: 1}
    assert len(result.foreign) == 2 and result.foreign[0].endswith("value 9")
    letter = {"reason": "influx refused the point: HTTP 400: x",
              "payload": f"chaos.parts,source=chaos-t value=2.0 {base + 2000}"}
    assert refused_points([(0.0, "ioc/v1/deadletter/chaos-t", letter)], stream) == {2}
