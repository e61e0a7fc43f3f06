"""The nemesis: faults injected one at a time, each healed before the next.

Every kind is a method; `inject(kind)` runs it and returns an `Injection` (when, what exactly, whether a
failpoint was hit, and any problem seen while injecting, e.g. a graceful stop that did not exit 0).
Durations are drawn from the seeded `random.Random`, so a seed replays the same schedule (the moments
the faults land in the daemon's work still vary with timing, as in Jepsen).

Kinds (`KINDS`):
- `kill`: SIGKILL of the daemon at a random moment, restarted after a random pause.
- `failpoint:NAME` for every name in `ioc.failpoints.NAMES`: the daemon restarted with
  `IOC_FAILPOINTS=NAME=abort` until it kills itself there (the spool's points with InfluxDB cut, so the
  spool is written; `mqtt.poison` with a message carrying the poison marker), then restarted without.
- `spool-error`: restarted with `spool.write=error`, InfluxDB cut (every spool write fails: the sink
  holds the batch and its queue fills, so intake is pushed back), healed, then a graceful stop (SIGTERM
  must exit 0) and a restart.
- `influx-restart`, `broker-restart`: the server stopped and started again (same port and files).
- `influx-proxy:latency|reset|blackhole|slowclose|500|503|400` and
  `broker-proxy:latency|reset|blackhole|slowclose`: the fault proxy's modes (`proxy.py`); slowclose is
  paired with a restart of the server behind it, so there is a close to slow down.
- `poison`: an 8 MiB `[{},{},...]` and a bad UTF-8 message over MQTT, the same 8 MiB over HTTP: each
  MQTT one must come back as one dead letter, the HTTP one as a 413, and the daemon must stay up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import orjson

from ioc import failpoints
from tests.chaos.checker import DeadLetters, payload_bytes
from tests.chaos.linklog import LinkLog, describe
from tests.chaos.world import HTTP_TOKEN, MQTT_SOURCE, World
from tests.mqtt_tools import publish_all

POISON_MARKER = "IOC-FAILPOINT-POISON"  # what the `mqtt.poison` failpoint looks for in a payload
MAX_DELIVERIES = 3  # [intake] max_deliveries, the default the world's config keeps
# How long a start with a failpoint is watched once it answers /healthz: for the crash at the failpoint
# (the events that reach it flow within a second or two), or for the poison's crash or dead letter (the
# poison waits in the broker behind what the daemon had not acknowledged). START_LIMIT bounds a start
# that never answers.
FAILPOINT_WINDOW = 20.0
POISON_WINDOW = 30.0
START_LIMIT = 120.0
LINK_LOOK_BACK = 30.0  # seconds of the link's record shown before a fault
INFLUX_PROXY_FAULTS = ("latency", "reset", "blackhole", "slowclose", "500", "503", "400")
BROKER_PROXY_FAULTS = ("latency", "reset", "blackhole", "slowclose")
# Points that are only reached while InfluxDB cannot take the points.
_NEEDS_OUTAGE = frozenset({"spool.write", "spool.after_write"})


def kinds() -> list[str]:
    """Every fault kind, in a fixed order (the schedule shuffles them)."""
    return ["kill", *(f"failpoint:{name}" for name in failpoints.NAMES), "spool-error", "influx-restart",
            "broker-restart", *(f"influx-proxy:{fault}" for fault in INFLUX_PROXY_FAULTS),
            *(f"broker-proxy:{fault}" for fault in BROKER_PROXY_FAULTS), "poison"]


@dataclass
class Injection:
    kind: str
    started: float  # monotonic
    healed: float = 0.0
    detail: str = ""
    hit: bool | None = None  # failpoints: whether the daemon died there
    problems: list[str] = field(default_factory=list)


@dataclass
class Links:
    """The daemon's broker link from its log (`linklog.py`), described around a fault."""

    log: LinkLog

    def describe_before(self, moment: float, look_back: float = LINK_LOOK_BACK) -> str:
        return describe(self.log.between(moment - look_back, moment), moment)

    def describe_during(self, start: float, end: float) -> str:
        return describe(self.log.between(start, end), start)


class Nemesis:
    def __init__(self, world: World, rng: random.Random, dead_letters: DeadLetters, *,
                 hold: tuple[float, float] = (2.0, 4.0), poison_bytes: int = 8 * 1024 * 1024,
                 backlog: Callable[[], int] | None = None) -> None:
        self.world = world
        self.links = Links(LinkLog(world.daemon.log_path))
        self.backlog = backlog  # how many MQTT events have no point yet (checker.backlog)
        self.rng = rng
        self.dead_letters = dead_letters
        self.hold = hold  # how long a fault lasts, seconds (uniform)
        self.poison_bytes = poison_bytes
        self._poisons = 0

    def inject(self, kind: str) -> Injection:
        injection = Injection(kind, time.monotonic())
        name, _, variant = kind.partition(":")
        handler = {"kill": self._kill, "failpoint": self._failpoint, "spool-error": self._spool_error,
                   "influx-restart": self._influx_restart, "broker-restart": self._broker_restart,
                   "influx-proxy": self._influx_proxy, "broker-proxy": self._broker_proxy,
                   "poison": self._poison}[name]
        try:
            handler(injection, variant)
        except Exception as error:  # noqa: BLE001 - e.g. the daemon did not come back: recorded, healed
            injection.problems.append(f"{kind}: {type(error).__name__}: {error}"[:2000])
        injection.healed = time.monotonic()
        return injection

    def annotate(self, injections: list[Injection]) -> None:
        """After the run: each fault on the broker link gets the link's record from its start to the next
        fault's (the daemon's disconnects and reconnects, from its log)."""
        ends = [injection.started for injection in injections[1:]] + [float("inf")]
        for injection, end in zip(injections, ends, strict=True):
            if injection.kind.startswith(("broker-", "failpoint:mqtt.poison")):
                injection.detail += f"; link from the fault's start: {self.links.describe_during(injection.started, end)}"

    def _pause(self, low: float | None = None, high: float | None = None) -> float:
        seconds = self.rng.uniform(low if low is not None else self.hold[0],
                                   high if high is not None else self.hold[1])
        time.sleep(seconds)
        return seconds

    # --- the daemon ----------------------------------------------------------------------------------

    def _kill(self, injection: Injection, _: str) -> None:
        after = self._pause(0.0, 1.5)
        status = self.world.kill_daemon()
        down = self._pause(0.1, 1.5)
        self.world.start_daemon()
        injection.detail = f"SIGKILL after {after:.1f}s (status {status}), down {down:.1f}s"

    def _failpoint(self, injection: Injection, name: str) -> None:
        if name == "mqtt.poison":
            self._mqtt_poison(injection)
            return
        world = self.world
        world.kill_daemon()
        if name in _NEEDS_OUTAGE:
            world.influx_proxy.set("reset")
        spec = f"{name}=abort"
        world.start_daemon(spec, wait=False)
        _, took, ready = self._watch(lambda: None, after_ready=FAILPOINT_WINDOW)
        process = world.daemon.process
        status = None if process is None else process.poll()
        injection.hit = status == -9
        world.kill_daemon()
        world.influx_proxy.set("pass")
        world.start_daemon()
        injection.detail = (f"IOC_FAILPOINTS={spec}: " + ("hit" if injection.hit else f"not hit (status {status})")
                            + f" {took:.1f}s after its start ({_ready(ready)})")
        if status not in (None, -9):
            injection.problems.append(f"{injection.kind}: ioc run exited with {status}, not at the failpoint")

    def _mqtt_poison(self, injection: Injection) -> None:
        """A message whose handling kills the daemon (`mqtt.poison=abort` and the marker in it): the daemon
        must die on it at most `max_deliveries` (3) times, then quarantine it as a `poison` dead letter.

        Each start is watched until the daemon dies, the dead letter comes, or `POISON_WINDOW` passes: the
        poison waits in the broker behind whatever the daemon had not acknowledged when it was killed (after
        a black hole on the broker link, seconds of the generator's traffic), so the time it takes to reach
        the daemon is not a fixed few seconds. The detail records the link (the daemon's own log) before the
        fault, the backlog, and each start: when it connected and when it died or quarantined."""
        world = self.world
        links = self.links.describe_before(injection.started)
        world.kill_daemon()
        self._poisons += 1
        event_id = f"chaos-poison-{self._poisons}"
        before = len(self.dead_letters.all())
        behind = self._backlog()
        self._publish([orjson.dumps({"id": event_id, "source": MQTT_SOURCE, "type": "telemetry",
                                     "time": datetime.now(UTC).isoformat(), "metric": "chaos.poison",
                                     "value": 1, "tags": {"note": POISON_MARKER}})])
        crashes, record, outcome = 0, [], "timeout"
        for number in range(1, MAX_DELIVERIES + 4):
            started = time.monotonic()
            world.start_daemon("mqtt.poison=abort", wait=False)
            outcome, took, ready = self._watch(
                lambda: "letter" if self._letters(event_id, before, "poison") else None, after_ready=POISON_WINDOW)
            connected = self.links.log.first("mqtt.connected", started)
            record.append(f"start {number}: {_ready(ready)}, " + (f"connected +{connected.at - started:.1f}s, "
                                                                  if connected else "not connected, ")
                          + f"{outcome} +{took:.1f}s")
            if outcome != "crash":
                break
            crashes += 1
        injection.hit = crashes > 0
        letters = self._expect_letters(injection, 1, event_id, timeout=20.0, since=before, reason="poison")
        late = not world.daemon_running()  # it died after its window: a crash no window saw
        world.kill_daemon()
        world.start_daemon()
        injection.detail = (f"mqtt.poison=abort: {crashes} crashes, then {letters} dead letter(s) 'poison'; "
                            f"link before: {links}; backlog {behind}; " + "; ".join(record)
                            + ("; died after its window" if late else ""))
        if crashes > MAX_DELIVERIES:
            injection.problems.append(f"{injection.kind}: the daemon died {crashes} times on one message, "
                                      f"over max_deliveries = {MAX_DELIVERIES}")
        if outcome == "timeout":
            injection.problems.append(f"{injection.kind}: neither a crash nor a dead letter {POISON_WINDOW:g}s "
                                      f"after a start was ready ({injection.detail})")

    def _watch(self, until: Callable[[], str | None], *, after_ready: float,
               limit: float = START_LIMIT) -> tuple[str, float, float | None]:
        """Watch a daemon just started with `wait=False` (a failpoint may fire while it starts) until it
        dies ("crash"), `until()` names an outcome, or `after_ready` seconds have passed since it first
        answered /healthz, or `limit` since its start ("timeout"). Returns the outcome, the seconds since
        the start, and the seconds the start took to answer /healthz (None: it never did).

        The windows count from readiness, not from the start: a start took from 2 s to over 20 s in the
        seed-61 run (a box shared with benchmarks; the dedup index loads first), and a fixed window from
        the start missed the crash it was waiting for (issue 9)."""
        started = time.monotonic()
        ready: float | None = None
        probe = started
        while True:
            now = time.monotonic()
            took = now - started
            if not self.world.daemon_running():
                return "crash", took, ready
            outcome = until()
            if outcome is not None:
                return outcome, took, ready
            if ready is None and now >= probe:
                probe = now + 0.2
                if self._healthy():
                    ready = time.monotonic() - started
            if (ready is not None and took - ready >= after_ready) or took >= limit:
                return "timeout", took, ready
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.world.daemon.api}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _backlog(self) -> str:
        if self.backlog is None:
            return "unknown"
        try:
            return f"{self.backlog()} MQTT events without a point"
        except Exception as error:  # noqa: BLE001 - InfluxDB busy: the record says so, the fault goes on
            return f"unknown ({type(error).__name__})"

    def _spool_error(self, injection: Injection, _: str) -> None:
        world = self.world
        world.kill_daemon()
        world.start_daemon("spool.write=error")
        world.influx_proxy.set("reset")
        cut = self._pause(5.0, 8.0)  # long enough for the sink's queue to fill: back-pressure to intake
        world.influx_proxy.set("pass")
        time.sleep(1.5)  # the held batch goes to InfluxDB
        status = world.terminate_daemon()
        if status != 0:
            injection.problems.append(f"spool-error: SIGTERM exited {status}, not 0")
        world.start_daemon()
        injection.detail = f"spool.write=error with InfluxDB cut {cut:.1f}s; SIGTERM exit {status}"

    # --- servers and proxies -------------------------------------------------------------------------

    def _influx_restart(self, injection: Injection, _: str) -> None:
        self.world.influxdb.stop()
        down = self._pause()
        self.world.influxdb.start()
        injection.detail = f"InfluxDB down {down:.1f}s"

    def _broker_restart(self, injection: Injection, _: str) -> None:
        self.world.mosquitto.stop()
        down = self._pause(0.3, 2.0)
        self.world.mosquitto.start()
        injection.detail = f"Mosquitto down {down:.1f}s"

    def _influx_proxy(self, injection: Injection, fault: str) -> None:
        proxy, world = self.world.influx_proxy, self.world
        if fault == "latency":
            ms = self.rng.choice([300, 800, 1500])
            proxy.set("latency", ms=ms)
            injection.detail = f"{ms} ms each way for {self._pause():.1f}s"
        elif fault == "slowclose":
            proxy.set("slowclose", ms=3000)
            world.influxdb.stop()
            time.sleep(0.5)
            world.influxdb.start()
            injection.detail = f"close delayed 3 s around an InfluxDB restart, {self._pause():.1f}s"
        elif fault in ("500", "503", "400"):
            proxy.set("http", status=int(fault))
            # A 400 makes the daemon split batches down to single points and dead-letter each: keep it short.
            held = self._pause(0.5, 1.0) if fault == "400" else self._pause()
            injection.detail = f"every request answered {fault} for {held:.1f}s"
        else:
            proxy.set(fault)
            injection.detail = f"{fault} for {self._pause():.1f}s"
        proxy.set("pass")

    def _broker_proxy(self, injection: Injection, fault: str) -> None:
        proxy, world = self.world.broker_proxy, self.world
        if fault == "latency":
            ms = self.rng.choice([100, 300, 600])
            proxy.set("latency", ms=ms)
            injection.detail = f"{ms} ms each way for {self._pause():.1f}s"
        elif fault == "slowclose":
            proxy.set("slowclose", ms=3000)
            world.mosquitto.stop()
            time.sleep(0.5)
            world.mosquitto.start()
            injection.detail = f"close delayed 3 s around a Mosquitto restart, {self._pause():.1f}s"
        elif fault == "blackhole":
            proxy.set("blackhole")  # long enough for the daemon's keepalive (5 s) to notice
            injection.detail = f"blackhole for {self._pause(8.0, 10.0):.1f}s"
        else:
            proxy.set(fault)
            injection.detail = f"{fault} for {self._pause():.1f}s"
        proxy.set("pass")

    # --- poison --------------------------------------------------------------------------------------

    def _poison_payload(self, first: bytes) -> bytes:
        """`[first,{},{},...]` of about `poison_bytes` (the first item makes each one recognisable)."""
        count = max(0, (self.poison_bytes - len(first) - 2) // 3)
        return b"[" + first + b",{}" * count + b"]"

    def _publish(self, payloads: list[bytes]) -> None:
        publish_all("127.0.0.1", self.world.mosquitto.port,
                    [(f"ioc/v1/events/{MQTT_SOURCE}", payload) for payload in payloads], timeout=60)

    def _poison(self, injection: Injection, _: str) -> None:
        self._poisons += 1
        marker = f"chaos-poison-{self._poisons}".encode()
        big = self._poison_payload(b'{"chaos": "' + marker + b'"}')
        bad_utf8 = b'{"id": "' + marker + b'", "note": "\xff\xfe\xfd"}'
        before = len(self.dead_letters.all())
        self._publish([big, bad_utf8])
        started = time.monotonic()
        try:
            response = httpx.post(f"{self.world.daemon.api}/api/v1/events", content=big, timeout=30,
                                  headers={"Authorization": f"Bearer {HTTP_TOKEN}",
                                           "Content-Type": "application/json"})
            answer = f"HTTP {response.status_code} in {time.monotonic() - started:.1f}s"
            if response.status_code != 413:
                injection.problems.append(f"poison over HTTP: {answer}: {response.text[:200]}, not 413")
        except httpx.HTTPError as error:
            answer = f"{type(error).__name__}"
            injection.problems.append(f"poison over HTTP: {answer}")
        letters = self._expect_letters(injection, 2, marker.decode(), timeout=30.0, since=before)
        injection.detail = (f"{len(big) / 2**20:.1f} MiB [{{}},...] and bad UTF-8 over MQTT "
                            f"({letters} dead letters), {len(big) / 2**20:.1f} MiB over HTTP: {answer}")

    def _expect_letters(self, injection: Injection, count: int, marker: str, *, timeout: float,
                        since: int = 0, reason: str = "") -> int:
        """Wait for `count` dead letters whose payload holds `marker` (and whose reason holds `reason`)."""
        deadline = time.monotonic() + timeout
        found = 0
        while time.monotonic() < deadline:
            found = self._letters(marker, since, reason)
            if found >= count:
                return found
            time.sleep(0.2)
        injection.problems.append(f"{injection.kind}: {found} of {count} dead letters with {marker!r} "
                                  f"within {timeout:g}s")
        return found

    def _letters(self, marker: str, since: int, reason: str = "") -> int:
        """Dead letters since the `since`-th whose payload holds `marker` and whose reason holds `reason`."""
        return sum(1 for _, _, letter in self.dead_letters.all()[since:]
                   if marker.encode() in payload_bytes(letter) and reason in str(letter.get("reason")))


def _ready(seconds: float | None) -> str:
    return f"serving +{seconds:.1f}s" if seconds is not None else "not serving yet"
