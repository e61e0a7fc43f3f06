"""The HTTP API assembled (docs/http-api.md): routers, error shape, request counters, OpenAPI.

Every error is `{"error": "..."}` with a 4xx status for anything the caller sent (unknown route, wrong
method, bad parameters, bad body); a 5xx means a bug or an overloaded daemon, never bad input.

`/docs` is Swagger UI served from installed packages with a Content-Security-Policy (`ioc.api.docs`): no CDN.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client.core import Metric
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ioc import __version__
from ioc.alerts.manager import AlertManager
from ioc.api.alertmanager_v2 import alertmanager_v2_router
from ioc.api.alerts import alerts_router, kpis_router
from ioc.api.areas_api import areas_router
from ioc.api.docs import docs_router
from ioc.api.events import EventIntake, Republish, event_schemas, events_router
from ioc.api.health import health_router
from ioc.api.stream import Broadcaster, stream_router
from ioc.areas import AreaRegistry
from ioc.auth import Authenticator, bearer_token
from ioc.config import Settings
from ioc.ingest.pipeline import Pipeline
from ioc.kpis import KpiBoard
from ioc.metrics import Metrics, counter
from ioc.ratelimit import RateLimiter
from ioc.store import StoreError

log = structlog.get_logger("ioc.api")

DESCRIPTION = """\
The HTTP API of the IOC daemon, an event-aggregation service for a provincial Intelligent Operations
Center.

**Vendors** push events (telemetry, status, dossier changes) to `POST /api/v1/events` with their bearer
token; every event is validated strictly and each bad item is named with the field and what was wrong.
A repeat of (`source`, `id`) is accepted and ignored, so pushes can be retried safely.

**Operators** read alerts (`GET /api/v1/alerts`, pending and firing by default; `?state=resolved`,
`?state=acknowledged`), the derived indicators (`GET /api/v1/kpis`) and a live stream of both
(`GET /api/v1/stream`, Server-Sent Events) with no token; acknowledging (`POST .../ack`, `.../unack`)
and silences (`POST`/`DELETE /api/v1/silences`) need an operator token, and every change is recorded
with who made it. The wall display is `GET /` (Vietnamese; `?lang=en` for English).

Errors are always `{"error": "..."}`. `/healthz`, `/readyz` and `/metrics` (Prometheus) are open.

With `[http] public_read = false` every route except `/healthz`, `/readyz` and the wall display's page
and assets needs `Authorization: Bearer <token>` of a vendor, an operator or a viewer (`[[viewers]]`),
`/metrics` and `/api/v1/stream` included; the page then asks for a viewer token.
"""

UNMATCHED_ROUTE = "unmatched"


class RequestCounter:
    """Pure ASGI middleware counting answers by route template and status (`ioc_http_requests_total`).

    The route label is the matched route's path template (never the raw path, so label values stay
    bounded); requests that matched no route are counted under `unmatched`.
    """

    def __init__(self, app: ASGIApp, counts: defaultdict[tuple[str, ...], int]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.counts[(path, str(status))] += 1


class ReadAccess:
    """Pure ASGI middleware for `[http] public_read = false` (docs/operations.md): every request needs the
    bearer token of a vendor, an operator or a viewer, else 401, except `/healthz` and `/readyz`
    (orchestrators probe them without credentials) and the wall display's shell, `GET /` and `/static/...`:
    static HTML, JavaScript and CSS with no data in them, which must load before the page can ask for a token.

    Only *whether* a caller is known is checked here, before routing; what each kind may do stays the
    route's own check (`ioc.auth.require`: a viewer's token cannot acknowledge). Installed only when
    reads are closed, so an open daemon pays nothing. The token travels only in the `Authorization`
    header, never in a URL, where proxies and browser history would keep it (the wall reads the SSE
    stream with `fetch`, which can send the header, instead of `EventSource`, which cannot)."""

    OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
    OPEN_PREFIX = "/static/"

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.OPEN_PATHS or path.startswith(self.OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        header = next((value.decode("latin-1") for name, value in scope.get("headers", ())
                       if name == b"authorization"), None)
        if self.authenticator.authenticate(header) is None:
            reason = "missing bearer token" if bearer_token(header) is None else "unknown token"
            response = _error(401, f"{reason}: reads need 'Authorization: Bearer <token>' of a viewer, an "
                                   "operator or a vendor ([http] public_read = false)",
                              headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, headers=headers,
                    media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"not found: {request.url.path}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"method {request.method} is not allowed on {request.url.path}"
    return _error(exc.status_code, message, dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path"))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg")))
    return _error(422, "; ".join(problems) or "invalid request")


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The shared store failed (PostgreSQL away, docs/operations.md): an operator's change is refused whole
    (nothing changed, nobody told), to be tried again."""
    log.warning("api.store_unavailable", path=request.url.path, error=str(exc))
    return _error(503, "the store is unavailable: nothing was changed, try again", {"Retry-After": "2"})


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("api.internal_error", path=request.url.path, error=repr(exc))
    return _error(500, "internal error")


def create_app(*, settings: Settings, pipeline: Pipeline, metrics: Metrics,
               readiness: Callable[[], list[str]], alerts: AlertManager | None = None,
               kpis: KpiBoard | None = None, stream: Broadcaster | None = None,
               web: APIRouter | None = None, cap: APIRouter | None = None,
               areas: AreaRegistry | None = None, cluster: APIRouter | None = None,
               role: Callable[[], str | None] | None = None, republish: Republish | None = None) -> FastAPI:
    """The FastAPI application of the daemon. Registers its own metric source into `metrics`
    (`ioc_http_requests_total{route,status}`, `ioc_http_rate_limited_total{vendor}`).

    The operators' routers are included when their objects are given: `alerts` (alerts, acks,
    silences), `kpis` (`/api/v1/kpis`), `stream` (`/api/v1/stream`); their metrics are the caller's to
    register (`metrics.add(alerts.metrics)`, `metrics.add(stream.metrics)`)."""
    app = FastAPI(
        title="IOC daemon API",
        description=DESCRIPTION,
        version=__version__,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN: ours is `ioc.api.docs`
        redoc_url=None,
        openapi_url="/openapi.json",
        exception_handlers={
            HTTPException: _http_error,
            RequestValidationError: _validation_error,
            StoreError: _store_unavailable,
            Exception: _internal_error,
        },
    )
    app.state.authenticator = Authenticator(settings)
    app.state.settings = settings
    app.state.pipeline = pipeline

    intake = EventIntake(pipeline=pipeline, http=settings.http, limiter=RateLimiter(settings.vendors),
                         republish=republish)
    app.include_router(events_router(intake))
    app.include_router(health_router(metrics=metrics, readiness=readiness, role=role))
    app.include_router(docs_router(title=app.title, openapi_url="/openapi.json"))
    if alerts is not None:
        app.include_router(alerts_router(alerts))
        app.include_router(alertmanager_v2_router(alerts, settings.alerts))  # CONTRACT §9: amtool, Grafana
    if kpis is not None:
        app.include_router(kpis_router(kpis))
    if stream is not None:
        app.include_router(stream_router(stream))
    if web is not None:  # the wall display (`ioc.api.web.web_router`): `/`, its assets, areas, sources
        app.include_router(web)
    if cap is not None:  # the CAP 1.2 feed (`ioc.cap.api.cap_router`): /api/v1/cap
        app.include_router(cap)
    if areas is not None:  # a province's units for vendors (`ioc.api.areas_api`): /api/v1/provinces/...
        app.include_router(areas_router(areas))
    if cluster is not None:  # CONTRACT §8 (`ioc.api.cluster.cluster_router`): /api/v1/cluster
        app.include_router(cluster)

    if not settings.http.public_read:
        app.add_middleware(ReadAccess, authenticator=app.state.authenticator)
    requests: defaultdict[tuple[str, ...], int] = defaultdict(int)
    app.add_middleware(RequestCounter, counts=requests)  # the outermost: it counts ReadAccess's 401s too

    def http_metrics() -> Iterable[Metric]:
        yield counter("ioc_http_requests", "HTTP requests answered, by route template and status.",
                      ("route", "status"), requests.copy())
        yield from intake.metrics()

    metrics.add(http_metrics)
    _add_event_schemas(app)
    return app


def _add_event_schemas(app: FastAPI) -> None:
    """Put the event models the request body refers to into the OpenAPI components."""
    build = app.openapi
    _, definitions = event_schemas()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
