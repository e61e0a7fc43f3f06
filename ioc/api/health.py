"""`/healthz`, `/readyz` and `/metrics` (docs/metrics.md): what orchestrators and Prometheus scrape.

`/healthz` says only that the process answers; `/readyz` runs the daemon's readiness checks (broker
connected, every sink can take points, the shared PostgreSQL store reachable) and names the failing ones,
and in a cluster the node's role (`"role": "leader" | "follower"`); `/metrics` renders the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ioc.metrics import Metrics

# The Prometheus text format version that `generate_latest` writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Readiness = Callable[[], list[str]]
Role = Callable[[], str | None]  # "leader" / "follower" in a cluster, None without one (SQLite)


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    role: str | None = Field(default=None, examples=["leader"],
                             description="In a cluster (a PostgreSQL store): `leader` or `follower`.")


class Readiness503(BaseModel):
    status: str = Field(examples=["not ready"])
    problems: list[str] = Field(examples=[["mqtt: not connected to 127.0.0.1:1883"]])
    role: str | None = Field(default=None, examples=["follower"])


def health_router(*, metrics: Metrics, readiness: Readiness, role: Role | None = None) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok")

    # Plain `def`: the checks may take a lock or touch a socket, so they run in a worker thread.
    @router.get("/readyz", response_model=Ready, summary="The daemon can take events",
                responses={503: {"model": Readiness503, "description": "The failing checks, named."}})
    def readyz() -> Response:
        problems = readiness()
        named = {"role": found} if role is not None and (found := role()) is not None else {}
        if problems:
            return JSONResponse({"status": "not ready", "problems": problems, **named}, status_code=503)
        return JSONResponse({"status": "ready", **named})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {METRICS_CONTENT_TYPE: {}},
                                 "description": "Prometheus text format 0.0.4."}})
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return router
