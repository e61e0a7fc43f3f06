"""The evaluation thread and its clock: order, isolation of failing stages, bounded queue, timers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from ioc.clock import EventClock
from ioc.envelope import AnyEvent, TelemetryEvent
from ioc.evaluation import Evaluator


class FakeWall:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(index: int, at: float) -> TelemetryEvent:
    return TelemetryEvent(id=f"e{index}", source="qtmt-aqi", type="telemetry",
                          time=datetime.fromtimestamp(at, UTC), metric="env.aqi", value=float(index))


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.advanced: list[float] = []

    def observe(self, event: AnyEvent) -> None:
        self.seen.append(event.id)

    def advance(self, now: float) -> None:
        self.advanced.append(now)


class Broken:
    def observe(self, event: AnyEvent) -> None:
        raise RuntimeError("a bug")

    def advance(self, now: float) -> None:
        raise RuntimeError("a bug")


def test_clock_is_unknown_until_hold_then_wall_without_events() -> None:
    wall = FakeWall()
    clock = EventClock(wall, hold=60)
    assert clock.now() is None
    wall.now += 60
    assert clock.now() == wall.now


def test_clock_follows_event_time_carried_by_wall_time() -> None:
    wall = FakeWall()
    clock = EventClock(wall, hold=60)
    clock.observe(500.0)  # a replay of the past, long before the wall clock
    assert clock.now() == 500.0
    wall.now += 7
    assert clock.now() == 507.0
    clock.observe(400.0)  # older events never move it back
    assert clock.now() == 507.0
    clock.observe(900.0)
    assert clock.now() == 900.0


def test_stages_see_events_in_order_and_a_failing_stage_costs_only_itself() -> None:
    wall = FakeWall()
    recorder = Recorder()
    evaluator = Evaluator([Broken(), recorder], EventClock(wall, hold=0))
    evaluator.start()
    try:
        evaluator.offer([event(i, 100.0 + i) for i in range(5)])
        evaluator.offer([event(5, 200.0)])
        assert evaluator.drain(5)
    finally:
        evaluator.close(5)
    assert recorder.seen == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert recorder.advanced and recorder.advanced[-1] == 200.0  # the clock reached the latest event
    errors = {sample.labels["stage"]: sample.value for family in evaluator.metrics()()
              if family.name == "ioc_evaluation_errors" for sample in family.samples}
    assert errors["Broken"] >= 6


def test_timers_wait_while_the_clock_is_unknown_but_housekeeping_runs() -> None:
    recorder = Recorder()
    ticks: list[int] = []
    evaluator = Evaluator([recorder], EventClock(FakeWall(), hold=60), on_tick=[lambda: ticks.append(1)])
    evaluator.tick()
    assert recorder.advanced == [] and ticks == [1]


def test_a_full_queue_makes_the_intake_wait_not_lose() -> None:
    release = threading.Event()

    class Slow(Recorder):
        def observe(self, event: AnyEvent) -> None:
            release.wait(5)
            super().observe(event)

    slow = Slow()
    evaluator = Evaluator([slow], EventClock(FakeWall(), hold=0), max_events=2)
    evaluator.start()
    offered = threading.Event()

    def intake() -> None:
        for index in range(6):
            evaluator.offer([event(index, 100.0 + index)])
        offered.set()

    thread = threading.Thread(target=intake)
    thread.start()
    assert not offered.wait(0.3)  # the intake waits: the queue is full while the stage is stuck
    release.set()
    thread.join(5)
    assert offered.is_set() and evaluator.drain(5)
    evaluator.close(5)
    assert slow.seen == [f"e{i}" for i in range(6)]
    waits = [sample.value for family in evaluator.metrics()() if family.name == "ioc_evaluation_waits"
             for sample in family.samples]
    assert waits[0] >= 1


def test_each_batch_runs_inside_around_batch() -> None:
    from contextlib import contextmanager

    log: list[str] = []

    class Logging(Recorder):
        def observe(self, event: AnyEvent) -> None:
            log.append(event.id)

    @contextmanager
    def around() -> Iterator[None]:
        log.append("enter")
        yield
        log.append("exit")

    evaluator = Evaluator([Logging()], EventClock(FakeWall(), hold=0), around_batch=around)
    evaluator.start()
    evaluator.offer([event(0, 100.0), event(1, 101.0)])
    assert evaluator.drain(5)
    evaluator.close(5)
    inside = log[log.index("e0") - 1:log.index("e1") + 2]
    assert inside == ["enter", "e0", "e1", "exit"]
