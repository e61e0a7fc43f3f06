"""Every route of the daemon's OpenAPI document, fuzzed over a real `ioc run` (docs/operations.md: bad input
never gets a 5xx, on any route: out-of-range durations and times, wrong types, huge numbers, unknown
keys, bad UTF-8).

Each test runs its hypothesis search inside the test so it can use the module's daemon; a broken case
raises `Finding`, which hypothesis shrinks to a minimal request and prints.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.e2e.daemon import DaemonProcess
from tests.fuzz.conftest import short
from tests.fuzz.harness import HttpFuzzer, settle_counts
from tests.fuzz.routes import EVENTS_PATH, SILENCES_PATH, Known, Route, raw_requests, route_cases, stray_cases


@pytest.fixture(scope="module")
def http(fuzz_daemon: DaemonProcess, known: Known) -> Iterator[HttpFuzzer]:
    fuzzer = HttpFuzzer(fuzz_daemon)
    yield fuzzer
    fuzzer.close()


@pytest.fixture(scope="module")
def routes(http: HttpFuzzer) -> list[Route]:
    return http.routes()


def _route(routes: list[Route], method: str, path: str) -> Route:
    return next(route for route in routes if route.method == method and route.path == path)


def test_the_openapi_document_names_the_routes_to_fuzz(routes: list[Route]) -> None:
    names = {route.name for route in routes}
    assert {f"POST {EVENTS_PATH}", f"POST {SILENCES_PATH}", "GET /api/v1/alerts", "POST /api/v1/alerts/{alert_id}/ack",
            "GET /healthz", "GET /api/v1/stream"} <= names


def test_every_route_with_junk_queries_ids_tokens_and_bodies(http: HttpFuzzer, routes: list[Route],
                                                             known: Known) -> None:
    @short(examples=max(600, 25 * len(routes)))  # each route gets its share as routes are added
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(routes), label="route")
        http.send(data.draw(route_cases(route, known), label="case"))

    run()
    http.checkpoint()
    assert not [route.name for route in routes if http.tally(route.name).cases == 0], "routes never fuzzed"


def test_event_intake_with_mutated_events_batches_ndjson_and_broken_bytes(
        http: HttpFuzzer, routes: list[Route], known: Known) -> None:
    events = _route(routes, "POST", EVENTS_PATH)

    @short(examples=400)
    @given(case=route_cases(events, known))
    def run(case: object) -> None:
        http.send(case)  # type: ignore[arg-type]

    run()
    http.checkpoint()
    tally = http.tally(events.name)
    assert tally.statuses[202] > 0, f"no case got past validation: {tally.statuses}"


def test_silences_with_odd_matchers_times_and_durations(http: HttpFuzzer, routes: list[Route],
                                                         known: Known) -> None:
    silences = _route(routes, "POST", SILENCES_PATH)

    @short(examples=250)
    @given(case=route_cases(silences, known))
    def run(case: object) -> None:
        http.send(case)  # type: ignore[arg-type]

    run()
    http.checkpoint()
    assert http.tally(silences.name).statuses[201] > 0, "no silence was ever created: the bodies are too broken"


def test_unknown_paths_and_wrong_methods(http: HttpFuzzer, routes: list[Route], known: Known) -> None:
    @short(examples=150)
    @given(case=stray_cases(tuple(routes), known))
    def run(case: object) -> None:
        http.send(case)  # type: ignore[arg-type]

    run()
    http.checkpoint()


# Found by this fuzzer: a bad chunk size on a closing connection made the app answer into a closed h11
# connection ("Exception in ASGI application", LocalProtocolError) while the client got its 400.
BAD_CHUNK = (b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
             b"-1\r\n")


def test_raw_requests_a_client_library_would_not_send(http: HttpFuzzer, known: Known) -> None:
    @short(examples=100)
    @example(request=BAD_CHUNK)
    @given(request=raw_requests(known))
    def run(request: bytes) -> None:
        http.send_raw(request)

    run()
    http.checkpoint()


def test_after_the_fuzzing_the_counts_add_up_and_no_accepted_point_is_refused_later(
        http: HttpFuzzer, fuzz_daemon: DaemonProcess) -> None:
    """Runs last: every item posted was counted (docs/transports.md), and no event answered as accepted was
    dead-lettered by InfluxDB afterwards (a time no store holds, say)."""
    problems, outcomes = settle_counts(fuzz_daemon)
    assert not problems, (problems, outcomes)
    assert outcomes.get("written", 0) > 0
