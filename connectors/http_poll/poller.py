"""The HTTP poll connector: probe service health URLs and turn every probe into a `status` event.

Each `[[poll]]` target is probed every `interval` with a GET; the answer becomes `up` (an expected status
within `degraded_after`), `degraded` (an expected status, but slower) or `down` (another status, a
connection error or no answer within `timeout`), with `detail` saying why. The event goes through
`intake.ingest` as JSON, so it is validated, deduplicated and counted like a vendor's. A hand-over the
intake refuses for now (its sinks full or failing) is tried again with the daemon's one backoff
(ioc/retry.py) until the next probe is due; a probe itself is never retried (a failed one is data: `down`).

Targets are probed concurrently, each on its own schedule; one target failing (or the code probing it
failing) never delays or stops the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import structlog
import tenacity
from prometheus_client.core import Metric

from ioc import __version__
from ioc.config import PollTarget
from ioc.envelope import StatusState
from ioc.ingest.port import Intake, Outcome, retry_later
from ioc.metrics import MetricSource, counter, gauge
from ioc.retry import RetryPolicy

log = structlog.get_logger("ioc.connectors.http_poll")

MIN_INTERVAL = 0.05  # a zero interval would spin
MAX_DETAIL = 1024  # the envelope's limit on `detail`
MAX_ID = 128  # the envelope's limit on `id`
# Hand-overs refused for now: tried again from 0.1 s, doubling up to 5 s, until the next probe is due.
HANDOVER_RETRY = RetryPolicy(max_attempts=0, backoff_min=0.1, backoff_max=5.0)


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of one probe: when it started (Unix seconds), the state, why, and how long it took."""

    at: float
    state: StatusState
    detail: str | None
    seconds: float


def _seconds(value: float) -> str:
    return f"{value:g}s"


class HttpPoller:
    """Probes `targets` forever (`run()`), emitting one `status` event per probe into `intake`."""

    def __init__(self, targets: list[PollTarget], intake: Intake, *,
                 client: httpx.AsyncClient | None = None, retry: RetryPolicy = HANDOVER_RETRY) -> None:
        self.targets = list(targets)
        self.intake = intake
        self.retry = retry
        self._client = client
        self.probes: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.last_seconds: dict[tuple[str, ...], float] = {}

    # --- the connector interface ----------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every target on its schedule until cancelled."""
        if not self.targets:
            return
        client = self._client or httpx.AsyncClient(
            follow_redirects=True, headers={"User-Agent": f"ioc/{__version__} (health probe)"})
        try:
            async with asyncio.TaskGroup() as tasks:
                for target in self.targets:
                    tasks.create_task(self._probe_forever(client, target), name=f"poll:{target.entity}")
        finally:
            if self._client is None:
                await client.aclose()

    def problems(self) -> list[str]:
        """Readiness: a target being down is data (a `status` event), not a problem of the daemon."""
        return []

    def metrics(self) -> MetricSource:
        return self._metrics

    # --- probing ----------------------------------------------------------------------------------------

    async def _probe_forever(self, client: httpx.AsyncClient, target: PollTarget) -> None:
        loop = asyncio.get_running_loop()
        interval = max(MIN_INTERVAL, target.interval)
        next_at = loop.time()
        while True:
            try:
                await self.probe_and_emit(client, target)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug for one target must not end the others (TaskGroup would cancel them)
                log.exception("poll.probe_failed", entity=target.entity, url=target.url)
            next_at += interval
            now = loop.time()
            if next_at < now:  # we fell behind (a slow emit): skip the missed slots, keep the cadence
                next_at = now + (next_at - now) % interval
            await asyncio.sleep(next_at - now)

    async def probe_and_emit(self, client: httpx.AsyncClient, target: PollTarget) -> Probe:
        """Probe `target` once and hand its `status` event to the intake."""
        outcome = await probe(client, target)
        self.probes[(target.entity, outcome.state)] += 1
        self.last_seconds[(target.entity,)] = outcome.seconds
        payload = orjson.dumps(status_event(target, outcome))
        interval = max(MIN_INTERVAL, target.interval)

        def refused(state: tenacity.RetryCallState) -> None:
            log.info("poll.handover_retry", entity=target.entity, attempt=state.attempt_number,
                     retry_in=round(state.upcoming_sleep, 3))

        # `ingest` may block briefly on sink back-pressure: keep it off the event loop, and bounded.
        handover = self.retry.retrying_async(retry_result=retry_later, within=interval, before_sleep=refused)
        result: Outcome = await handover(asyncio.to_thread, self.intake.ingest, payload, topic_source=None,
                                         timeout=interval)
        if result.rejected:
            log.warning("poll.event_rejected", entity=target.entity, error=result.rejected[0][1])
        return outcome

    def _metrics(self) -> Iterable[Metric]:
        probes = self.probes.copy()
        for target in self.targets:  # every target shows every state, zeros included
            for state in ("up", "degraded", "down"):
                probes.setdefault((target.entity, state), 0)
        yield counter("ioc_poll_probes", "Health probes by target entity and resulting state.",
                      ("entity", "state"), probes)
        yield gauge("ioc_poll_probe_seconds", "How long the last probe of each target took.", ("entity",),
                    self.last_seconds.copy())


async def probe(client: httpx.AsyncClient, target: PollTarget) -> Probe:
    """GET `target.url` once and judge the answer (the body is not read: the status line is enough)."""
    at = time.time()
    started = time.monotonic()
    state: StatusState
    detail: str | None
    try:
        async with asyncio.timeout(target.timeout):  # httpx's timeouts are per phase; this bounds the whole
            async with client.stream("GET", target.url, timeout=target.timeout) as response:
                status = response.status_code
        seconds = time.monotonic() - started
        if status not in target.expect_status:
            state, detail = "down", f"HTTP {status}"
        elif seconds > target.degraded_after:
            state = "degraded"
            detail = f"slow: HTTP {status} after {seconds:.2f}s (over {_seconds(target.degraded_after)})"
        else:
            state, detail = "up", None
    except (TimeoutError, httpx.TimeoutException):
        state, detail = "down", f"timeout after {_seconds(target.timeout)}"
    except httpx.HTTPError as error:
        kind = "connection failed" if isinstance(error, httpx.ConnectError) else type(error).__name__
        state, detail = "down", f"{kind}: {error}" if str(error) else kind
    except OSError as error:
        state, detail = "down", f"connection failed: {error.strerror or error}"
    return Probe(at, state, detail, time.monotonic() - started)


def status_event(target: PollTarget, probe: Probe) -> dict[str, Any]:
    """The docs/events.md `status` event of a probe: id `{entity}-{probe time in ms}`."""
    millis = str(int(probe.at * 1000))
    event: dict[str, Any] = {
        "id": f"{target.entity[:MAX_ID - len(millis) - 1]}-{millis}",
        "source": target.source,
        "type": "status",
        "time": datetime.fromtimestamp(probe.at, UTC).isoformat(),
        "entity": target.entity,
        "state": probe.state,
    }
    if target.area:
        event["area"] = target.area
    if probe.detail:
        event["detail"] = probe.detail[:MAX_DETAIL]
    return event
