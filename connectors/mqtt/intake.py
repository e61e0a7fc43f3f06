"""The MQTT intake: received messages into the ingest side, acknowledged once durable.

Durability is the point of this module. The session subscribes with QoS 1 on a persistent session, and a
message is acknowledged (PUBACK) only when the intake reports its points durable (in InfluxDB or the
sink's spool), so a crash or an outage never loses an acknowledged event: the broker redelivers anything
unacknowledged, and the pipeline's dedup recognises the repeats.

Messages are gathered while more wait in the socket and handed over as one burst (see
Pipeline.ingest_batch for why). Hostile vendors (docs/operations.md): a vendor's `rate` holds here too (the
excess is refused before it is decoded: acknowledged, dead-lettered `rate_limited`, counted), and a message
whose handling kills the process is quarantined after `max_deliveries` crashes (see poison.py). In a
cluster on MQTT 3.1.1, the node's own HTTP republish coming back is recognised and acknowledged, not
counted again (see echoes.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from operator import itemgetter
from pathlib import Path

import structlog
from ioc.connectors.mqtt.echoes import Echoes
from ioc.connectors.mqtt.poison import FAILPOINT_MARKER, PoisonGuard
from ioc.connectors.mqtt.session import Ack, MqttSession
from ioc.connectors.mqtt.topics import topic_source
from prometheus_client.core import Metric

from ioc import failpoints
from ioc.config import VendorSettings
from ioc.ingest.decode import Rejection
from ioc.ingest.port import DurableCallback, Intake
from ioc.metrics import counter
from ioc.ratelimit import RateLimiter

log = structlog.get_logger("ioc.mqtt")

BURST_MAX = 256  # messages handed to the intake at once
# Seconds a received message may wait for the rest of its burst: the floor of event -> alert latency when
# messages come in small clusters (50 ms with a 50 ms timer made it up to 100 ms; the timer now wakes only
# when a burst is pending, so a short wait costs nothing while idle).
BURST_MAX_AGE = 0.005
BURST_CHECK_EVERY = 16  # look at the socket for the burst's end on the first and every 16th message
POISON = "poison"  # dead-letter reason and `ioc_events_rejected` label of a quarantined message
RATE_LIMITED = "rate_limited"  # the same for a message over its vendor's rate
_SOURCE = itemgetter(1)  # of a burst entry (payload, source, generation, mid, qos)

Entry = tuple[bytes, str, int, int, int]  # a received message: (payload, source, generation, mid, qos)


class MqttIntake:
    """The session's `Receiver`: bursts of messages into `intake`, acknowledged through the session."""

    def __init__(self, session: MqttSession, intake: Intake, *, vendors: Sequence[VendorSettings] = (),
                 state_path: str | Path | None = None, max_deliveries: int = 3,
                 echoes: Echoes | None = None) -> None:
        """`vendors`: whose `rate` holds on MQTT, by the sources each owns (none: no limit).
        `state_path`: the daemon's store; with it, poison messages are quarantined after `max_deliveries`
        crashes (the in-flight journal lives beside it). Without it (tests), there is no such guard.
        `echoes`: in a cluster on MQTT 3.1.1, what this node republished, recognised when it comes back."""
        self.session = session
        self.intake = intake
        self._echoes = echoes
        self.name = session.name
        self._timer_stop: threading.Event | None = None  # set: the burst timer of the last start ends
        self._paused = False
        self._received = [0, 0, 0]  # by QoS; written only under the burst lock
        # Messages received but not yet handed to the intake: (payload, source, generation, mid, qos).
        self._burst: list[Entry] = []
        self._burst_since = 0.0
        self._burst_pending = threading.Event()  # set when a burst starts; the timer sleeps until then
        self._burst_lock = threading.Lock()  # held across a whole flush, so bursts reach the intake in order
        # Vendor fairness: a source belongs to one vendor (the first that lists it).
        self._vendor_of: dict[str, str] = {}
        for vendor in vendors:
            for source in vendor.sources:
                self._vendor_of.setdefault(source, vendor.name)
        self._limiter = RateLimiter(vendors) if self._vendor_of else None
        self._rate_limited: dict[str, int] = {vendor.name: 0 for vendor in vendors}  # under the burst lock
        # Poison messages: the journal and ledger (poison.py), read at the first start.
        self._guard = (PoisonGuard(state_path, name=self.name, max_deliveries=max_deliveries,
                                   expiry=session.settings.session_expiry)
                       if state_path is not None and str(state_path) != ":memory:" else None)
        self._recovered = False
        self._suspects_handled = 0
        self._quarantined = 0

    # --- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take messages again (after `stop`), recover the poison journal once, start the burst timer."""
        self._paused = False
        if self._guard is not None and not self._recovered:
            self._recovered = True
            in_flight = self._guard.recover()
            if in_flight:
                log.warning("mqtt.crash_recovery", connector=self.name, in_flight=in_flight,
                            effect="each is handled alone when the broker sends it again",
                            max_deliveries=self._guard.max_deliveries)
        if self._timer_stop is None:
            self._timer_stop = threading.Event()
            threading.Thread(target=self._flush_old_bursts, args=(self._timer_stop,), name=f"{self.name}-bursts",
                             daemon=True).start()

    def pause(self) -> None:
        """Stop processing messages: from now on they are neither handed over nor acknowledged, so the
        broker redelivers them after a restart. Acknowledgements of earlier messages still go out."""
        self._paused = True
        with self._burst_lock:
            self._flush_burst()  # received whole before the pause: processed, acknowledged once durable

    def stop(self) -> None:
        """End the burst timer (after `pause` and the session's close)."""
        if self._timer_stop is not None:
            self._timer_stop.set()
            self._timer_stop = None

    # --- the session's Receiver (paho's thread) ------------------------------------------------------

    def on_raw_message(self, topic: bytes, payload: bytes, mid: int, qos: int) -> None:
        self._receive(payload, topic.decode("utf-8", "replace"), mid, qos)

    def on_message(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self._receive(payload, topic, mid, qos)

    def on_session(self, present: bool) -> None:
        if self._guard is not None:
            self._guard.session(present)

    def _receive(self, payload: bytes, topic: str, mid: int, qos: int) -> None:
        # The hot path: no logging per message. The burst ends when the socket is drained, at BURST_MAX
        # messages, or after BURST_MAX_AGE (the timer thread). The socket is looked at only every
        # BURST_CHECK_EVERY messages (a poll costs ~5 % of this thread): a lone message goes at once, the
        # tail of a burst waits at most BURST_MAX_AGE.
        if self._paused:
            return
        with self._burst_lock:
            burst = self._burst
            if not burst:
                self._burst_since = time.monotonic()
                self._burst_pending.set()
            self._received[qos] += 1
            burst.append((payload, topic_source(topic), self.session.generation, mid, qos))
            size = len(burst)
            if size >= BURST_MAX or (size % BURST_CHECK_EVERY == 1 and not self.session.more_to_read()):
                self._flush_burst()

    def _flush_old_bursts(self, stop: threading.Event) -> None:
        """The timer thread: a burst whose end never came (a packet arriving slowly) still goes out
        BURST_MAX_AGE after its first message. Asleep while no burst is pending."""
        pending = self._burst_pending
        while not stop.is_set():
            if not pending.wait(0.5):  # idle; look at `stop` twice a second
                continue
            wait = self._burst_since + BURST_MAX_AGE - time.monotonic()
            if wait > 0 and stop.wait(wait):
                break
            with self._burst_lock:
                if self._burst and time.monotonic() - self._burst_since >= BURST_MAX_AGE:
                    self._flush_burst()
                if not self._burst:
                    pending.clear()  # under the lock: a burst started since has set it again

    # --- hand-over ---------------------------------------------------------------------------------------

    def _flush_burst(self) -> None:
        """Hand the gathered messages over (the caller holds the burst lock): the excess over each
        vendor's rate is refused first, undecoded; after a crash, suspects go one by one."""
        burst, self._burst = self._burst, []
        if not burst:
            return
        try:
            if failpoints.ACTIVE:
                failpoints.hit("mqtt.handle")  # before the journal: a crash here is no message's fault
            echo_acks: list[Ack] = []
            if self._echoes is not None and self._echoes.waiting:
                burst = self._drop_echoes(burst, self._echoes, echo_acks)
            if self._limiter is not None:
                burst = self._limit_rates(burst)
            guard = self._guard
            if guard is not None and guard.suspects:
                self._hand_over_with_suspects(burst, guard)
            elif burst:
                self._hand_over(burst)
            if echo_acks:  # acknowledged behind what came before, as a refusal is
                self.intake.admit((), on_durable=self._acker(echo_acks))
        except Exception:  # a bug here must not kill paho's thread; the messages stay unacknowledged
            log.exception("mqtt.message_failed", connector=self.name, messages=len(burst))

    def _drop_echoes(self, burst: list[Entry], echoes: Echoes, acks: list[Ack]) -> list[Entry]:
        """The burst without this node's own republished messages (their acks into `acks`): it counted
        those events when it took them over HTTP, so they are neither received nor duplicates again."""
        kept: list[Entry] = []
        guard = self._guard
        for entry in burst:
            if not echoes.take(entry[1], entry[0]):
                kept.append(entry)
            elif entry[4]:
                acks.append((entry[2], entry[3], entry[4]))
                if guard is not None and guard.suspects:  # not handled: its packet id is free again
                    guard.take_suspect(entry[3])
        return kept

    def _hand_over(self, burst: list[Entry]) -> None:
        """One intake call for the burst, journaled (QoS 1 packet ids) while it runs."""
        acks = [(generation, mid, qos) for _, _, generation, mid, qos in burst if qos]
        journal = self._guard.journal if self._guard is not None and acks else None
        if journal is not None:
            journal.write([mid for _, mid, _ in acks], alone=len(burst) == 1,
                          waiting=not self.intake.has_room(len(burst)))
        try:
            if failpoints.ACTIVE and "mqtt.poison" in failpoints.ACTIVE and any(
                    FAILPOINT_MARKER in entry[0] for entry in burst):
                failpoints.hit("mqtt.poison")
            self.intake.ingest_batch([(payload, source) for payload, source, _, _, _ in burst],
                                     on_durable=self._acker(acks) if acks else None)
        except Exception:  # a bug here must not kill paho's thread; the messages stay unacknowledged
            log.exception("mqtt.message_failed", connector=self.name, messages=len(burst))
        finally:
            if journal is not None:
                journal.clear()

    def _hand_over_with_suspects(self, burst: list[Entry], guard: PoisonGuard) -> None:
        """After a crash: the messages that were in flight then are handled alone, in order."""
        run: list[Entry] = []
        for entry in burst:
            if entry[4] and guard.take_suspect(entry[3]):
                if run:
                    self._hand_over(run)
                    run = []
                self._handle_suspect(entry, guard)
            else:
                run.append(entry)
        if run:
            self._hand_over(run)

    def _handle_suspect(self, entry: Entry, guard: PoisonGuard) -> None:
        payload, source = entry[0], entry[1]
        verdict = guard.judge(source, payload)
        if verdict.poison:
            self._quarantined += 1
            log.error("mqtt.poison_quarantined", connector=self.name, source=source, key=verdict.key.hex(),
                      crashes=verdict.crashes, size=len(payload),
                      effect="acknowledged and dead-lettered, unprocessed")
            self._refuse([entry], POISON)
            return
        self._suspects_handled += 1
        self._hand_over([entry])
        guard.ledger.clear(verdict.key)  # it was handled and we are alive: not poison

    def _limit_rates(self, burst: list[Entry]) -> list[Entry]:
        """Each vendor's messages in the burst take a token each; the excess (the vendor's last messages
        in the burst) is refused here, before anything is decoded. Returns the rest, in order."""
        vendor_of, limiter = self._vendor_of, self._limiter
        assert limiter is not None
        wanted: dict[str, int] = {}
        for source, count in Counter(map(_SOURCE, burst)).items():
            vendor = vendor_of.get(source)
            if vendor is not None:
                wanted[vendor] = wanted.get(vendor, 0) + count
        over: dict[str, int] = {}
        for vendor, count in wanted.items():
            granted = limiter.take_up_to(vendor, count)
            if granted < count:
                over[vendor] = count - granted
        if not over:
            return burst
        kept: list[Entry] = []
        refused: list[Entry] = []
        for entry in reversed(burst):
            vendor = vendor_of.get(entry[1])
            if vendor is not None and over.get(vendor, 0) > 0:
                over[vendor] -= 1
                refused.append(entry)
            else:
                kept.append(entry)
        kept.reverse()
        refused.reverse()
        counts = Counter(vendor_of[entry[1]] for entry in refused)
        for vendor, count in counts.items():
            self._rate_limited[vendor] = self._rate_limited.get(vendor, 0) + count
            log.warning("mqtt.rate_limited", connector=self.name, vendor=vendor, refused=count,
                        rate=limiter.buckets[vendor].rate)
        guard = self._guard
        if guard is not None and guard.suspects:  # not handled: their packet ids are free again
            for entry in refused:
                if entry[4]:
                    guard.take_suspect(entry[3])
        self._refuse(refused, RATE_LIMITED)
        return kept

    def _refuse(self, entries: list[Entry], code: str) -> None:
        """Reject whole messages undecoded: counted (`ioc_events_rejected{reason=code}`), dead-lettered with
        `code` as the reason, and acknowledged in order behind what came before."""
        acks = [(generation, mid, qos) for _, _, generation, mid, qos in entries if qos]
        self.intake.admit([Rejection(code=code, message=code, raw=payload, source=source or None)
                           for payload, source, _, _, _ in entries],
                          on_durable=self._acker(acks) if acks else None)

    def _acker(self, acks: list[Ack]) -> DurableCallback:
        session = self.session

        def ack() -> None:
            if failpoints.ACTIVE:
                try:
                    failpoints.hit("mqtt.before_ack")
                except failpoints.FailpointError:
                    # As when a socket write fails: the connection is dropped, so the broker sends the
                    # messages again on the next one.
                    log.error("mqtt.ack_failed", connector=self.name, messages=len(acks),
                              effect="reconnecting; redelivered")
                    session.drop_connection(skipped=len(acks))
                    return
            session.acknowledge(acks)

        return ack

    # --- metrics ---------------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        received = self._received
        yield counter("ioc_mqtt_messages_received", "Messages received, by QoS (while intake runs).", ("qos",),
                      {(str(qos),): float(received[qos]) for qos in (0, 1)})
        yield counter("ioc_mqtt_rate_limited", "Messages refused over their vendor's rate (dead-lettered "
                      "rate_limited, acknowledged).", ("vendor",),
                      {(vendor,): float(count) for vendor, count in self._rate_limited.copy().items()})
        yield counter("ioc_mqtt_poison_suspects",
                      "Messages handled alone because the process died while handling them.", (),
                      {(): float(self._suspects_handled)})
        yield counter("ioc_mqtt_poison_quarantined",
                      "Messages dead-lettered as poison: the process died max_deliveries times handling them.",
                      (), {(): float(self._quarantined)})
