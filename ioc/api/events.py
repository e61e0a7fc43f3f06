"""`POST /api/v1/events`: the HTTP push intake for vendors (docs/http-api.md), read top to bottom:

auth (401/403) -> content type (415) -> body with a byte limit (413) -> decode -> every event's source is
the vendor's (403, nothing admitted) -> room in the sinks (503) -> rate (429) -> admit in a worker thread
-> wait until the points are durable (up to `[http] durable_wait`) -> 202.

A 202 with `"durable": true` means every accepted point is in InfluxDB or the spool, so a vendor that got
it may forget the events. Room is checked before the rate so a 503 costs the vendor none of its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Protocol

import orjson
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client.core import Metric
from pydantic import BaseModel, Field, TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ioc import failpoints
from ioc.auth import Principal, require
from ioc.config import HttpSettings
from ioc.envelope import Event
from ioc.ingest import memory
from ioc.ingest.decode import TOO_MANY_ITEMS, Accepted, Decoded, Rejection
from ioc.ingest.letters import node_local
from ioc.ingest.pipeline import IngestResult, Pipeline
from ioc.metrics import counter
from ioc.ratelimit import RateLimiter

EVENTS_PATH = "/api/v1/events"
_CURL_DEFAULT = "application/x-www-form-urlencoded"  # what `curl -d` sends unless told otherwise
JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
# Decoding a body this big or bigger is moved off the event loop (~3 µs an event otherwise blocks it).
_DECODE_IN_THREAD = 64 * 1024
# A body over the limit but at most this many times it is read (and discarded) to its end before the 413.
_DRAIN_FACTOR = 2


# --- what the OpenAPI document shows vendors --------------------------------------------------------------

class RejectedItem(BaseModel):
    index: int = Field(description="Position of the item in the body (array index or NDJSON line, from 0).")
    error: str = Field(description="The field and what was wrong with it.",
                       examples=["value: expected a number, got a string"])


class IngestResponse(BaseModel):
    """The answer to a push: how many events were taken, repeats ignored, and each rejection."""

    accepted: int = Field(description="Events accepted (new (source, id) pairs).")
    duplicates: int = Field(description="Repeats of an already accepted (source, id), ignored.")
    rejected: list[RejectedItem] = Field(description="Items refused, one by one; the others went through.")
    durable: bool = Field(description="True when the accepted events are stored (in InfluxDB or the "
                                      "daemon's spool) before this answer; false when that took longer "
                                      "than `[http] durable_wait` (they are still queued).")

    model_config = {"json_schema_extra": {"examples": [
        {"accepted": 2, "duplicates": 1,
         "rejected": [{"index": 3, "error": "value: expected a number, got a string"}], "durable": True},
    ]}}


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, for people.")


_TELEMETRY = {"id": "aqi-22723-20250301T0800", "source": "qtmt-aqi", "type": "telemetry",
              "time": "2025-03-01T08:00:00+07:00", "area": "22723", "metric": "env.aqi", "value": 162,
              "unit": "VN_AQI", "tags": {"station": "Phan Thiết 1"}}
_STATUS = {"id": "cell-BTN0123-1740790800", "source": "viettel-ran", "type": "status",
           "time": "2025-03-01T08:00:00+07:00", "area": "22723", "entity": "BTN0123", "state": "down",
           "detail": "mất nguồn điện lưới"}
_DOSSIER = {"id": "000.00.60.H12-250301-0001-processing", "source": "dvc-binhthuan", "type": "dossier",
            "time": "2025-03-01T09:15:00+07:00", "area": "22723",
            "dossier_id": "000.00.60.H12-250301-0001", "procedure": "1.001234", "status": "processing",
            "received_at": "2025-03-01T08:30:00+07:00", "due_at": "2025-03-06T17:00:00+07:00",
            "channel": "online", "level": "commune"}

_BODY_ADAPTER: TypeAdapter[Any] = TypeAdapter(list[Event])


def event_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of the request body, the event models to add to `components.schemas`), from the models
    that validate events, so the documentation cannot drift from the validation."""
    schema = _BODY_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    one_event = schema["items"]
    body = {"anyOf": [one_event, {"type": "array", "items": one_event, "title": "A batch of events"}]}
    return body, definitions


def _openapi_request_body() -> dict[str, Any]:
    body, _ = event_schemas()
    ndjson = "\n".join(orjson.dumps(event).decode() for event in (_TELEMETRY, _STATUS)) + "\n"
    return {"requestBody": {
        "required": True,
        "description": "One event, a JSON array of events, or NDJSON (one event per line). At most "
                       "`[http] max_body` bytes (default 8 MiB). UTF-8.",
        "content": {
            "application/json": {"schema": body, "examples": {
                "telemetry": {"summary": "A measurement", "value": _TELEMETRY},
                "status": {"summary": "The state of an entity", "value": _STATUS},
                "dossier": {"summary": "A change of a one-stop-shop dossier", "value": _DOSSIER},
                "batch": {"summary": "A batch (JSON array)", "value": [_TELEMETRY, _STATUS, _DOSSIER]},
            }},
            "application/x-ndjson": {"schema": {"type": "string"},
                                     "examples": {"ndjson": {"summary": "One event per line",
                                                             "value": ndjson}}},
        },
    }}


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in {
        401: "No or an unknown bearer token (`WWW-Authenticate: Bearer`).",
        403: "A vendor token is required, or an event's `source` is not one of the vendor's sources "
             "(nothing of the request was taken).",
        413: "The body is over `[http] max_body`, or holds more than `[intake] max_items` items "
             "(`too many items: N > 10000`).",
        415: "The content type is neither JSON nor NDJSON.",
        429: "Over the vendor's rate: retry after `Retry-After` seconds (nothing was taken).",
        503: "The daemon's queues are full: retry after `Retry-After` seconds (nothing was taken).",
    }.items()
}


# --- the intake -----------------------------------------------------------------------------------------

def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


class EventIntake:
    """The state behind `POST /api/v1/events`: the pipeline, the vendors' buckets and the counters."""

    def __init__(self, *, pipeline: Pipeline, http: HttpSettings, limiter: RateLimiter,
                 republish: Republish | None = None) -> None:
        self.pipeline = pipeline
        self.republish = republish  # in a cluster: what was taken goes to the broker too (CONTRACT §8)
        self.http = http
        self.limiter = limiter
        self.rate_limited: defaultdict[tuple[str, ...], int] = defaultdict(int)
        for name in limiter.buckets:
            self.rate_limited[(name,)] = 0  # every vendor shows, zeros included

    def metrics(self) -> Iterable[Metric]:
        yield counter("ioc_http_rate_limited", "Event pushes refused with 429, by vendor.", ("vendor",),
                      self.rate_limited.copy())

    async def read_body(self, request: Request) -> bytes:
        """The body, read as a stream and refused (413) once it is known to be over the limit.

        A body declared (Content-Length) far over the limit is refused before any of it is read. A body
        at most `_DRAIN_FACTOR` times the limit is read to its end, discarding the excess, before the 413:
        most clients (httpx, requests) send the whole body before reading the answer, and a server that
        closes with unread data makes their kernel report a reset instead of the 413. A client that sent
        `Expect: 100-continue` (curl does for big bodies) gets the 413 before it sends anything.
        """
        limit = self.http.max_body
        drain_until = _DRAIN_FACTOR * limit
        expects_continue = "100-continue" in request.headers.get("expect", "").lower()
        declared: int | None = None
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise HTTPException(400, f"Content-Length {length!r} is not a number")
            declared = int(length)
            if declared > limit and (expects_continue or declared > drain_until):
                raise _too_big(f"body is {declared} bytes", limit)
        body = bytearray()
        received, complete = 0, True
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received <= limit:
                    body += chunk
                elif received > drain_until:
                    complete = False
                    break
        except ClientDisconnect:
            raise HTTPException(400, "the client went away before sending the whole body") from None
        if received > limit:
            if declared is not None or complete:
                raise _too_big(f"body is {declared or received} bytes", limit)
            raise _too_big(f"body is at least {received} bytes", limit)
        return bytes(body)

    async def post(self, request: Request, vendor: Principal) -> Response:
        ndjson = _is_ndjson(request.headers.get("content-type"))
        body = await self.read_body(request)
        try:
            return await self._take(body, ndjson, vendor)
        finally:
            memory.after_payload(len(body))  # on a timer: by then this request and its body are gone

    async def _take(self, body: bytes, ndjson: bool, vendor: Principal) -> Response:
        deadline = time.monotonic() + self.http.durable_wait
        if len(body) >= _DECODE_IN_THREAD:
            items = await run_in_threadpool(self.pipeline.decode, body, ndjson=ndjson)
        else:
            items = self.pipeline.decode(body, ndjson=ndjson)
        if len(items) == 1 and isinstance(items[0], Rejection) and items[0].code == TOO_MANY_ITEMS:
            # Refused whole, as a body over `max_body` is: nothing of it is taken or counted.
            return _json(413, {"error": items[0].message})

        foreign = sorted({item.event.source for item in items
                          if isinstance(item, Accepted) and item.event.source not in vendor.sources})
        if foreign:
            more = f" (nor for {', '.join(map(repr, foreign[1:]))})" if len(foreign) > 1 else ""
            raise HTTPException(403, f"vendor {vendor.name!r} may not send for source {foreign[0]!r}{more}")
        items = [_own_source(item, vendor) for item in items]

        points = sum(1 for item in items if isinstance(item, Accepted))
        if points and not self.pipeline.has_room(points):
            raise HTTPException(503, "the daemon's queues are full, retry later",
                                headers={"Retry-After": "1"})
        wait = self.limiter.take(vendor.name, len(items))
        if wait is not None:
            self.rate_limited[(vendor.name,)] += 1
            seconds = max(1, math.ceil(wait))
            raise HTTPException(429, f"vendor {vendor.name!r} is over its rate of "
                                     f"{self.limiter.buckets[vendor.name].rate:g} events/s; "
                                     f"retry in {seconds}s", headers={"Retry-After": str(seconds)})

        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()

        def on_durable() -> None:  # called from a sink's thread (or this worker thread without sinks)
            # RuntimeError: the loop is closed; the server is gone and nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, durable)

        def admit() -> IngestResult:
            # CONTRACT §8: this node answers the vendor, so its dead letters are its own (leader or not).
            with node_local():
                return self.pipeline.admit(items, fallback_source=vendor.default_source, on_durable=on_durable,
                                           timeout=max(0.0, deadline - time.monotonic()), payload=body)

        result = await run_in_threadpool(admit)
        is_durable = True
        if result.accepted or result.duplicates:  # duplicates: their first copy may still be in flight
            try:
                await asyncio.wait_for(durable, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                is_durable = False
        if self.republish is not None and (result.accepted or result.duplicates):
            # CONTRACT §8: every node must see it; a duplicate is sent too (its first copy may not have been).
            # A retry after a 503 is safe: a duplicate here, published again.
            refused = {index for index, _ in result.rejected}
            taken = [item for index, item in enumerate(items) if isinstance(item, Accepted) and index not in refused]
            if not await self.republish.publish(taken, max(0.0, deadline - time.monotonic())):
                raise HTTPException(503, "the broker did not take the events for the other nodes, retry",
                                    headers={"Retry-After": "1"})
        if failpoints.ACTIVE:
            failpoints.hit("http.before_reply")
        return _json(202, {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": [{"index": index, "error": error} for index, error in result.rejected],
            "durable": is_durable,
        })


class Republish(Protocol):
    """Where a cluster's node sends what it took over HTTP (`ioc.api.cluster.Republisher`)."""

    async def publish(self, items: Sequence[Accepted], timeout: float) -> bool: ...


def _too_big(what: str, limit: int) -> HTTPException:
    # `Connection: close`: the rest of the body (if any) is not read, so the connection cannot be reused.
    return HTTPException(413, f"{what}, over the limit of {limit}", headers={"Connection": "close"})


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _is_ndjson(content_type: str | None) -> bool:
    """Whether the body is NDJSON; JSON when absent (curl's `--data-binary` default is tolerated)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return True
    if not media or media in JSON_TYPES or media.endswith("+json") or media == _CURL_DEFAULT:
        return False
    raise HTTPException(415, f"content type {media!r} is not supported: send application/json (one event or "
                             "an array) or application/x-ndjson (one event per line)")


def _own_source(item: Decoded, vendor: Principal) -> Decoded:
    """A rejected item is counted (and dead-lettered) under the source it claims only when that source is
    the vendor's, so a vendor cannot write into another source's dead-letter topic or counters."""
    if isinstance(item, Rejection) and item.source is not None and item.source not in vendor.sources:
        return dataclasses.replace(item, source=None)
    return item


def events_router(intake: EventIntake) -> APIRouter:
    """The router of `POST /api/v1/events` bound to `intake`."""
    router = APIRouter(tags=["events"])

    @router.post(
        EVENTS_PATH,
        status_code=202,
        response_model=IngestResponse,
        responses=_ERRORS,
        summary="Push events",
        description=(
            "Send one event, a JSON array of events, or NDJSON (`Content-Type: application/x-ndjson`) "
            "with a vendor token (`Authorization: Bearer <token>`). Each item is validated on its own: "
            "bad items are listed in `rejected` with their index and reason, the good ones are accepted. "
            "A repeat of (`source`, `id`) is counted in `duplicates` and ignored, so a push may be "
            "retried safely. Every event's `source` must be one of the vendor's sources."
        ),
        openapi_extra=_openapi_request_body(),
    )
    async def post_events(request: Request,
                          vendor: Annotated[Principal, Depends(require("vendor"))]) -> Response:
        return await intake.post(request, vendor)

    return router
