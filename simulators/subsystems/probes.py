"""Service health probes (source `ioc-probe`): the province's web services, up, slow or down.

Two ways to play them:

- **events** (the default): the subsystem sends the `status` events a prober would, one service after
  the other every `services / rate` seconds, `down` or `degraded` during a `service-down` incident
  and `degraded` in short random slow periods (1-4 minutes, under `service-degraded`'s `for`).
- **serve** (`serve: "127.0.0.1:PORT"`): it sends nothing and instead serves `GET /health/{service}`
  with a `HealthServer`, answering 200, slowly (after `slow_seconds`) or 503 as the incidents say, so
  the daemon's own HTTP poll connector (`[[poll]]`, connectors/http_poll) probes something real.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import orjson
from ioc.simulators.incidents import ServiceDown
from ioc.simulators.subsystems.base import Config, Context, Stream, TimeText, Windows, poisson
from pydantic import Field

NAME = "probes"
DEFAULT_SERVICES = ["dvc-portal", "mot-cua", "lgsp", "email-cong-vu", "ioc-wall"]


class ProbesConfig(Config):
    source: str = Field(default="ioc-probe", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    rate: float = Field(default=0.1, gt=0)
    services: list[str] = Field(default=DEFAULT_SERVICES, min_length=1)
    area: str | None = None  # the events' area; default the province
    slow_per_day: float = Field(default=2.0, ge=0)  # random slow periods of a service a day (events mode)
    serve: str | None = Field(default=None, pattern=r"^127\.0\.0\.1:\d{1,5}$")
    slow_seconds: float = Field(default=3.0, gt=0, le=60)  # how slow a `degraded` answer is (serve mode)


def sources(config: ProbesConfig) -> list[str]:
    return [] if config.serve else [config.source]


class ProbeSchedule:
    """The state of each service at an offset, from the scenario's `service-down` incidents."""

    def __init__(self, config: ProbesConfig, context: Context) -> None:
        self._windows = {service: Windows([inc for inc in context.incidents
                                           if isinstance(inc, ServiceDown) and inc.entity == service],
                                          context.cycle, context.end)
                         for service in config.services}
        self._lock = threading.Lock()

    def state_at(self, service: str, offset: float) -> str:
        """`up`, `degraded` or `down` (offsets asked of one service must not go backwards)."""
        windows = self._windows.get(service)
        if windows is None:
            return "unknown"
        with self._lock:
            states = [incident.state for _, _, incident in windows.at(offset)]
        return "down" if "down" in states else "degraded" if states else "up"


def stream(config: ProbesConfig, context: Context) -> Stream:
    if config.serve:
        return
    schedule = ProbeSchedule(config, context)
    rng, services = context.rng, config.services
    step = 1.0 / context.rate(config)
    area = config.area or context.province
    source, start, end, tag, text, dumps = config.source, context.start, context.end, context.tag, \
        TimeText(), orjson.dumps
    cycle_drawn = -1
    draws: list[list[tuple[float, float]]] = [[] for _ in services]
    for n in itertools.count():
        offset = n * step
        if end is not None and offset >= end:
            return
        cycle = int(offset // context.cycle)
        if cycle != cycle_drawn:  # the random slow periods of the cycle, drawn when it starts
            cycle_drawn = cycle
            for index in range(len(services)):
                draws[index] = sorted(
                    (at := cycle * context.cycle + rng.uniform(0, context.cycle), at + rng.uniform(60, 240))
                    for _ in range(poisson(rng, config.slow_per_day * context.cycle / 86400)))
        index = n % len(services)
        service = services[index]
        state = schedule.state_at(service, offset)
        if state == "up" and any(begin <= offset < finish for begin, finish in draws[index]):
            state = "degraded"
        payload: dict[str, object] = {"id": f"{service}-{tag}-{n}", "source": source, "type": "status",
                                      "time": text(start + offset), "area": area, "entity": service,
                                      "state": state}
        if state == "down":
            payload["detail"] = "HTTP 503"
        elif state == "degraded":
            payload["detail"] = f"slow: HTTP 200 after {rng.uniform(2.1, 6.0):.2f}s (over 2s)"
        yield offset, source, dumps(payload)


class HealthServer:
    """Health endpoints on 127.0.0.1 for the daemon's HTTP poll connector to probe.

    `GET /health/{service}` answers `200 {"status": "up"}`, the same after `slow_seconds` when the
    service is `degraded`, `503 {"status": "down"}` when it is `down`, 404 for an unknown service.
    The state comes from `state_of(service)` (the play's schedule), unless `set_state` pinned one.
    Use it as a context manager, or `start()` / `stop()`.
    """

    def __init__(self, services: list[str], *, port: int = 0, slow_seconds: float = 3.0,
                 state_of: Callable[[str], str] | None = None) -> None:
        self.services = list(services)
        self.slow_seconds = slow_seconds
        self._state_of = state_of
        self._pinned: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service = self.path.partition("?")[0].removeprefix("/health/")
                if not self.path.startswith("/health/") or service not in server.services:
                    self._answer(404, {"error": f"no service at {self.path}"})
                    return
                state = server.state(service)
                if state == "down":
                    self._answer(503, {"status": "down"})
                    return
                if state == "degraded":
                    time.sleep(server.slow_seconds)
                self._answer(200, {"status": state})

            def _answer(self, status: int, body: dict[str, str]) -> None:
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.port}/health/{service}"

    def state(self, service: str) -> str:
        if service in self._pinned:
            return self._pinned[service]
        return self._state_of(service) if self._state_of is not None else "up"

    def set_state(self, service: str, state: str | None) -> None:
        """Pin a service's state (`up`, `degraded`, `down`), or None to follow `state_of` again."""
        if state is None:
            self._pinned.pop(service, None)
        else:
            self._pinned[service] = state

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sim-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
