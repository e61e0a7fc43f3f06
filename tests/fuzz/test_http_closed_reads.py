"""Every route fuzzed again with `[http] public_read = false` (docs/operations.md "Reads can be closed"): the
token checks run on every route then, so junk tokens (bytes that are not UTF-8, a token twice, a
viewer's on a write) reach more code. No 5xx, no crash, the daemon alive."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import short
from tests.fuzz.harness import VIEWER_TOKEN, HttpFuzzer, make_daemon, seed_daemon
from tests.fuzz.routes import Known, Route, route_cases
from tests.servers import Server


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory, mosquitto: Server, influxdb: Server
           ) -> Iterator[tuple[HttpFuzzer, Known, list[Route]]]:
    name = uuid.uuid4().hex[:8]
    daemon = make_daemon(tmp_path_factory.mktemp(f"fuzz-closed-{name}"), mqtt_url=mosquitto.url,
                         influx_url=influxdb.url, name=name, public_read=False)
    daemon.start()
    try:
        known = Known()
        seed_daemon(daemon, known)
        fuzzer = HttpFuzzer(daemon)
        yield fuzzer, known, fuzzer.routes()
        fuzzer.close()
    finally:
        daemon.stop()


def test_reads_are_closed_indeed(closed: tuple[HttpFuzzer, Known, list[Route]]) -> None:
    fuzzer, _, _ = closed
    assert httpx.get(f"{fuzzer.daemon.api}/api/v1/alerts").status_code == 401
    viewer = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    assert httpx.get(f"{fuzzer.daemon.api}/api/v1/alerts", headers=viewer).status_code == 200


def test_every_route_with_reads_closed(closed: tuple[HttpFuzzer, Known, list[Route]]) -> None:
    fuzzer, known, routes = closed

    @short(examples=250)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(routes), label="route")
        fuzzer.send(data.draw(route_cases(route, known), label="case"))

    run()
    fuzzer.checkpoint()
    answered = sum(sum(tally.statuses.values()) for tally in fuzzer.tallies.values())
    refused = sum(tally.statuses[401] + tally.statuses[403] for tally in fuzzer.tallies.values())
    assert 0 < refused < answered, "every case refused, or none: the tokens are not mixed"
