"""SSE resume (CONTRACT §9) through a real uvicorn server on a loopback port: every change event has an
id; a client reconnecting with `Last-Event-ID` gets exactly the events it missed, in order, then the live
stream; when they are no longer kept, or the id is from another run or no id at all, one `reset` event."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from ioc.api import create_app, serve
from ioc.api.stream import Broadcaster
from ioc.config import Settings
from ioc.ingest.dedup import DedupIndex
from ioc.ingest.pipeline import Pipeline
from ioc.metrics import Metrics
from tests.servers import free_port


@dataclass
class Frame:
    """One dispatched SSE event (`event` empty for an id-only frame, which dispatches nothing)."""

    id: str | None
    event: str
    data: Any


class StreamEnded(AssertionError):
    """The server ended the stream (e.g. cut off a client that fell behind)."""


@dataclass
class Reader:
    """Reads a stream the way the EventSource algorithm does: `last_id` takes the `id:` field of every
    complete frame, also of frames without data; events without data are not dispatched."""

    lines: AsyncIterator[str]
    last_id: str | None = None
    frames: list[Frame] = field(default_factory=list)

    async def next(self, *, skip_pings: bool = True, timeout: float = 10.0) -> Frame:
        async def read() -> Frame:
            event, data, frame_id = "", [], None
            async for line in self.lines:
                if line == "":
                    if frame_id is not None:
                        self.last_id = frame_id
                    if data and (event != "ping" or not skip_pings):
                        frame = Frame(frame_id, event or "message", orjson.loads("\n".join(data)))
                        self.frames.append(frame)
                        return frame
                    event, data, frame_id = "", [], None
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    frame_id = value
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
            raise StreamEnded("the stream ended")

        return await asyncio.wait_for(read(), timeout)


@dataclass
class Server:
    url: str
    stream: Broadcaster
    metrics: Metrics

    @contextlib.asynccontextmanager
    async def open(self, last_event_id: str | None = None) -> AsyncIterator[Reader]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client, \
                client.stream("GET", "/api/v1/stream", headers=headers) as response:
            assert response.status_code == 200
            yield Reader(response.aiter_lines())


@contextlib.asynccontextmanager
async def running(replay: int, run: str | None = None, queue_max: int = 1000) -> AsyncIterator[Server]:
    port = free_port()
    settings = Settings.model_validate({"http": {"listen": f"127.0.0.1:{port}", "sse_replay": replay}})
    pipeline = Pipeline(sinks=[], dedup=DedupIndex(None, window=60, max_keys=10), max_bytes=1 << 20,
                        max_future=300)
    stream = Broadcaster(heartbeat=30, replay=settings.http.sse_replay, run=run, queue_max=queue_max)
    metrics = Metrics()
    metrics.add(stream.metrics)
    app = create_app(settings=settings, pipeline=pipeline, metrics=metrics, readiness=list, stream=stream)
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, settings.http, started=started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        yield Server(f"http://127.0.0.1:{port}", stream, metrics)
    finally:
        stream.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kpi(n: int) -> dict[str, Any]:
    return {"kpi": "kpi.coverage.down", "area": "22723", "level": "commune", "value": float(n), "target": None,
            "updated_at": "2026-03-02T00:00:00+00:00"}


def resumes(server: Server) -> dict[str, float]:
    return {sample.labels["outcome"]: sample.value for family in server.stream.metrics()
            for sample in family.samples if sample.name == "ioc_sse_resumes_total"}


async def test_a_resumed_stream_gets_exactly_the_missed_events_in_order_then_the_live_ones() -> None:
    async with running(replay=100) as server:
        run = server.stream.run
        async with server.open() as reader:
            assert (await reader.next(skip_pings=False)).event == "ping"  # the opening frame, then a ping
            assert reader.last_id == f"{run}-0"  # a fresh stream's position, before any event
            for n in range(1, 4):
                server.stream.publish("kpi", kpi(n))
            got = [await reader.next() for _ in range(3)]
            assert [(f.id, f.event, f.data["value"]) for f in got] == [
                (f"{run}-{n}", "kpi", float(n)) for n in range(1, 4)]
            last = reader.last_id
        # Away: an alert and two KPIs change.
        server.stream.publish("alert", {"id": "a1", "change": "firing"})
        server.stream.publish("kpi", kpi(5))
        server.stream.publish("kpi", kpi(6))
        async with server.open(last) as reader:
            missed = [await reader.next() for _ in range(3)]
            assert [(f.id, f.event) for f in missed] == [
                (f"{run}-4", "alert"), (f"{run}-5", "kpi"), (f"{run}-6", "kpi")]
            assert missed[0].data == {"id": "a1", "change": "firing"}
            server.stream.publish("kpi", kpi(7))
            live = await reader.next()
            assert (live.id, live.data["value"]) == (f"{run}-7", 7.0)
            assert all(frame.event != "reset" for frame in reader.frames)
        # Nothing missed: the stream resumes with nothing to replay, no reset.
        async with server.open(f"{run}-7") as reader:
            server.stream.publish("kpi", kpi(8))
            assert (await reader.next()).id == f"{run}-8"
            assert [frame.event for frame in reader.frames] == ["kpi"]
        assert resumes(server)["replayed"] == 2


async def test_a_client_too_far_behind_gets_a_reset_with_the_latest_id_then_the_stream() -> None:
    async with running(replay=5) as server:
        run = server.stream.run
        server.stream.publish("kpi", kpi(1))
        for n in range(2, 12):  # ids 2..11: only 7..11 are kept; a client at 1 missed 2..6 for good
            server.stream.publish("kpi", kpi(n))
        async with server.open(f"{run}-1") as reader:
            reset = await reader.next()
            assert (reset.event, reset.data, reset.id) == ("reset", {"reason": "expired"}, f"{run}-11")
            server.stream.publish("kpi", kpi(12))
            assert (await reader.next()).id == f"{run}-12"
        # At the edge: 8..12 are kept now, so a client at 7 missed nothing that is gone; one at 6 did.
        async with server.open(f"{run}-7") as reader:
            assert [(await reader.next()).id for _ in range(5)] == [f"{run}-{n}" for n in range(8, 13)]
            assert all(frame.event == "kpi" for frame in reader.frames)
        async with server.open(f"{run}-6") as reader:
            assert (await reader.next()).data == {"reason": "expired"}
        assert resumes(server) == {"replayed": 1, "reset_expired": 2, "reset_other_run": 0,
                                   "reset_unknown": 0}


@pytest.mark.parametrize(("last_event_id", "reason"), [
    ("0badc0de-2", "other_run"),   # an id of an earlier run of the daemon (restarted meanwhile)
    ("{run}-99", "unknown"),       # this run, but an event it never published
    ("not-an-id", "unknown"),
    ("", "unknown"),
])
async def test_an_unknown_or_foreign_id_gets_a_reset(last_event_id: str, reason: str) -> None:
    async with running(replay=100, run="a1b2c3d4") as server:
        server.stream.publish("kpi", kpi(1))
        server.stream.publish("kpi", kpi(2))
        async with server.open(last_event_id.format(run="a1b2c3d4")) as reader:
            reset = await reader.next()
            assert (reset.event, reset.data, reset.id) == ("reset", {"reason": reason}, "a1b2c3d4-2")
            server.stream.publish("kpi", kpi(3))
            assert (await reader.next()).id == "a1b2c3d4-3"
        assert resumes(server)[f"reset_{reason}"] == 1


async def test_an_id_from_before_a_restart_gets_a_reset() -> None:
    async with running(replay=100) as before:
        before.stream.publish("kpi", kpi(1))
        old = before.stream.last_event_id
    async with running(replay=100) as after:
        assert after.stream.run != before.stream.run
        async with after.open(old) as reader:
            reset = await reader.next()
            assert (reset.event, reset.data) == ("reset", {"reason": "other_run"})


async def test_resuming_under_concurrent_publishers_loses_and_repeats_nothing() -> None:
    """Four threads publish while the client drops its stream every few events and resumes (and resumes
    too when the server cuts it off for falling behind, as it may on a busy machine): the ids it gets are
    every id once, in order (publishers reach the stream in id order)."""
    total = 4 * 300
    async with running(replay=total, queue_max=50) as server:  # a small queue: cut-offs happen
        run = server.stream.run
        seen: list[int] = []
        values: list[float] = []
        last: str | None = None
        cut = 0
        go = threading.Event()

        def publisher(thread: int) -> None:
            go.wait(10)
            for n in range(300):
                server.stream.publish("kpi", kpi(thread * 1000 + n))

        threads = [threading.Thread(target=publisher, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        try:
            while len(seen) < total:
                async with server.open(last) as reader:
                    go.set()
                    try:
                        for _ in range(min(97, total - len(seen))):
                            frame = await reader.next()
                            assert frame.event == "kpi" and frame.id is not None
                            frame_run, _, n = frame.id.partition("-")
                            assert frame_run == run
                            seen.append(int(n))
                            values.append(frame.data["value"])
                    except StreamEnded:
                        cut += 1
                    last = reader.last_id
        finally:
            go.set()
            for thread in threads:
                thread.join(10)
        assert seen == list(range(1, total + 1))
        for thread in range(4):  # and each publisher's events in the order it published them
            own = [value for value in values if value // 1000 == thread]
            assert own == [float(thread * 1000 + n) for n in range(300)]
        assert resumes(server)["replayed"] >= (total + 96) // 97 - 1
        assert resumes(server)["reset_expired"] == 0
        disconnects = {s.labels["reason"]: s.value for m in server.stream.metrics() for s in m.samples
                       if s.name == "ioc_sse_disconnects_total"}
        # Every cut the reader saw was the server's for slowness; on a loaded box the server may also find a
        # queue full just as the reader closes after its 97 frames, a cut the reader never sees.
        assert disconnects.get("slow", 0) >= cut
        print(f"resumed {resumes(server)['replayed']:g} times, {cut} of them after a cut-off")
