"""paho-mqtt's client with a receive path fit for an intake: buffered reads and a lean PUBLISH decode.

Why: profiling the daemon's MQTT thread showed ~73 % of it in paho's own per-message work, measured
against the bare-paho baseline of bench/ingest_bench.py. Per packet stock paho does a `select()`, reads
the fixed header one byte per `recv()` call (3-4 system calls for a small message), builds an MQTT 5
`Properties` object even when the packet carries none, an `MQTTMessage` with its own
`threading.Condition`, and matches the topic against per-topic callbacks. `FastClient` keeps paho for
everything else (connecting, keepalive, acknowledgements, publishing, TLS, reconnects) and changes only
the receive side:

- `_sock_recv` serves reads from a 64 KiB buffer filled by one `recv()`: hundreds of packets per system
  call. Because bytes may now wait in the buffer while the socket itself is empty, `loop_read` keeps
  handling packets until the buffer holds no complete packet (else `select()` would sleep on them).
- `_packet_read` takes a packet whole from the buffer when it is complete there, and otherwise falls back
  to paho's own incremental reader (which reads through `_sock_recv`, so partial packets still work).
- `_handle_publish`: a QoS 0/1 PUBLISH without properties (what a broker relays from plain publishers)
  goes straight to `on_raw_message(topic, payload, mid, qos)` when that is set; anything else (QoS 2,
  properties present, no raw callback) takes paho's path unchanged.

And on the send side, only the wake-ups: paho writes one byte into a socket pair for every packet queued
(a PUBACK, a dead letter), so that its network thread leaves `select()` and writes it: a system call per
packet, measured at ~5 µs of the ~30 µs an acknowledged-and-refused message costs. A packet queued from
paho's own thread (in a message callback) needs none, since that thread asks `want_write()` before its
next `select()`; packets queued from another thread inside `batched()` share one wake-up.

The fence. It relies on paho-mqtt 2.x private names. Every use is tagged `# paho-private` and listed in
`PAHO_PRIVATE` below; the rarely called ones go through the `_paho_*` functions, the per-packet ones stay
inline (a call per message costs). tests/unit/test_fastclient_fence.py fails loudly when the installed paho
is outside `PAHO_VERSIONS` or lacks one of them (names, parameters, packet-record keys), and when a private
use here is not tagged and listed; tests/integration/test_mqtt_fastclient.py checks both paths against a
real broker. Should a paho release break it, the session notices at start (`paho_problems()`), logs
`mqtt.fastclient_unfit` and uses stock paho; `[mqtt] client = "paho"` chooses stock paho outright.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTErrorCode
from paho.mqtt.enums import CallbackAPIVersion

READ_SIZE = 65536
_PUBLISH = 0x30

RawMessageCallback = Callable[[bytes, bytes, int, int], None]

# --- the fence: what FastClient relies on in paho, checked by tests/unit/test_fastclient_fence.py ----------

PAHO_VERSIONS = ("2.2", "2.3")  # >= the first, < the second (pyproject.toml pins the same)
PAHO_PRIVATE: dict[str, tuple[str, ...] | None] = {
    # methods of paho.mqtt.client.Client, overridden or called: their parameters
    "_sock_recv": ("self", "bufsize"),
    "_packet_read": ("self",),
    "_packet_handle": ("self",),
    "_packet_queue": ("self", "command", "packet", "mid", "qos", "info"),
    "_handle_publish": ("self",),
    "_loop_rc_handle": ("self", "rc"),
    "_send_puback": ("self", "mid"),
    "_easy_log": ("self", "level", "fmt", "args"),
    # attributes of a Client (None: not a method)
    "_in_packet": None,  # dict with IN_PACKET_KEYS
    "_out_packet": None,  # deque of dicts with OUT_PACKET_KEYS
    "_sock": None,
    "_sockpairW": None,
    "_thread": None,
    "_protocol": None,
    "_manual_ack": None,
    "_in_callback_mutex": None,
    "_msgtime_mutex": None,
    "_last_bytes_received": None,
}
PAHO_MODULE_PRIVATE = ("time_func", "sockpair_data")  # undocumented names of paho.mqtt.client
IN_PACKET_KEYS = ("command", "have_remaining", "remaining_count", "remaining_mult", "remaining_length",
                  "packet", "to_process", "pos")
OUT_PACKET_KEYS = ("command", "mid", "qos", "pos", "to_process", "packet", "info")


def paho_problems(client_class: type[mqtt.Client] = mqtt.Client, version: str | None = None) -> list[str]:
    """What of FastClient's assumptions the installed paho breaks (empty: none): its version, the private
    names and parameters in PAHO_PRIVATE, the packet records' keys. The session checks it before using
    FastClient (and falls back to stock paho); tests/unit/test_fastclient_fence.py requires it empty."""
    problems = []
    version = version or importlib.metadata.version("paho-mqtt")
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    low, high = (tuple(int(part) for part in bound.split(".")) for bound in PAHO_VERSIONS)
    if not low <= numbers < high:
        problems.append(f"paho-mqtt {version} is outside {PAHO_VERSIONS[0]} <= version < {PAHO_VERSIONS[1]}")
    client = client_class(CallbackAPIVersion.VERSION2)
    for name, parameters in PAHO_PRIVATE.items():
        if parameters is None:
            if not hasattr(client, name):
                problems.append(f"paho's Client has no attribute {name}")
            continue
        method = getattr(client_class, name, None)
        if not callable(method):
            problems.append(f"paho's Client has no method {name}")
        elif tuple(inspect.signature(method).parameters) != parameters:
            problems.append(f"paho's Client.{name} takes {tuple(inspect.signature(method).parameters)}, "
                            f"not {parameters}")
    problems += [f"paho.mqtt.client has no {name}" for name in PAHO_MODULE_PRIVATE if not hasattr(mqtt, name)]
    in_packet = getattr(client, "_in_packet", None)  # paho-private
    if not isinstance(in_packet, dict) or tuple(in_packet) != IN_PACKET_KEYS:
        problems.append(f"paho's incoming packet record is {in_packet!r}, not keyed {IN_PACKET_KEYS}")
    out_packets = getattr(client, "_out_packet", None)  # paho-private
    if callable(getattr(client, "_packet_queue", None)) and hasattr(out_packets, "append"):
        try:
            client._packet_queue(_PUBLISH, b"", 0, 0)  # paho-private: no socket yet, so it stays queued
            record = out_packets[-1] if out_packets else None  # type: ignore[index]
        except Exception as error:  # noqa: BLE001  # whatever a changed paho raises is a finding
            record = error
        if not isinstance(record, dict) or tuple(record) != OUT_PACKET_KEYS:
            problems.append(f"paho's outgoing packet record is {record!r}, not keyed {OUT_PACKET_KEYS}")
    return problems

@functools.cache
def installed_paho_problems() -> tuple[str, ...]:
    """`paho_problems()` of the installed paho, looked at once per process."""
    return tuple(paho_problems())

def _fresh_in_packet() -> Any:  # paho-private: the `_InPacket` TypedDict
    """paho's empty incoming-packet state (the same keys its `reconnect` and `_packet_read` set)."""
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }



def _paho_wake(client: mqtt.Client) -> None:
    """Wake paho's network thread (a byte into its socket pair), as its own `_packet_queue` does."""
    pair = client._sockpairW  # paho-private
    if pair is not None:
        with contextlib.suppress(BlockingIOError):  # the pair is full of wake-ups already: it will wake
            pair.send(mqtt.sockpair_data)  # paho-private


def _paho_packet_done(client: mqtt.Client) -> None:
    """After a packet handled whole: paho's reader state reset, its keepalive clock told (as paho does)."""
    client._in_packet = _fresh_in_packet()  # paho-private
    with client._msgtime_mutex:  # paho-private
        client._last_bytes_received = mqtt.time_func()  # paho-private


def _paho_log(client: mqtt.Client, level: mqtt.LogLevel, message: str, *args: Any) -> None:
    client._easy_log(level, message, *args)  # paho-private

class FastClient(mqtt.Client):
    """A paho `Client` with buffered reads and `on_raw_message` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self.on_raw_message: RawMessageCallback | None = None
        self.raw_messages = 0  # PUBLISH packets that took the lean path (for tests and metrics)
        self._batch = threading.local()  # per thread: inside `batched()`, and whether a wake-up is owed

    # --- reading -------------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:  # paho-private: overrides
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            # paho-private: paho maps SSL and socket errors; may raise BlockingIOError
            buf = super()._sock_recv(READ_SIZE)  # paho-private
            if not buf:
                return buf  # the broker closed the connection
            pos = 0
        end = min(pos + bufsize, len(buf))
        self._rbuf, self._rpos = buf, end
        return buf[pos:end]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handled."""
        return len(self._rbuf) - self._rpos

    def reconnect(self) -> MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0  # bytes of the old connection must never be read as the new one's
        return super().reconnect()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho's loop reads (through `_sock_recv`, at most one refill of the buffer), then the packets
        # that are complete in the buffer are handled here, since select() cannot see them. What is left
        # is an incomplete tail, whose remainder the socket has yet to deliver: select() wakes for it.
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._next_packet():  # paho-private
            rc = self._packet_read()  # paho-private
            if rc > 0:
                return self._loop_rc_handle(rc)  # paho-private
        return MQTTErrorCode.MQTT_ERR_SUCCESS if rc <= 0 else rc

    def _next_packet(self) -> tuple[int, int] | None:
        """(start of the variable header, end) of the next packet if it is complete in the buffer."""
        buf, pos = self._rbuf, self._rpos
        size = len(buf)
        if pos >= size:
            return None
        # The fixed header: a command byte and a remaining length of 1-4 bytes (7 bits each).
        index, length, shift = pos + 1, 0, 0
        while True:
            if index >= size or shift > 21:
                return None  # incomplete here, or malformed: paho's own reader decides
            byte = buf[index]
            index += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = index + length
        return (index, end) if end <= size else None

    def _packet_read(self) -> MQTTErrorCode:  # paho-private: overrides
        in_packet = self._in_packet  # paho-private
        bounds = self._next_packet() if in_packet["command"] == 0 else None
        if bounds is None:
            # Partial packets: paho's incremental reader, via _sock_recv.
            return super()._packet_read()  # paho-private
        index, end = bounds
        buf = self._rbuf
        in_packet["command"] = buf[self._rpos]
        in_packet["have_remaining"] = 1
        in_packet["remaining_length"] = end - index
        in_packet["packet"] = buf[index:end]  # type: ignore[typeddict-item]  # its decoders take bytes too
        self._rpos = end
        try:
            rc = self._packet_handle()  # paho-private
        except mqtt.MalformedPacket as error:
            _paho_log(self, mqtt.MQTT_LOG_DEBUG, "Received malformed packet: %s", error)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        _paho_packet_done(self)
        return rc

    # --- writing: fewer wake-ups ----------------------------------------------------------------------

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int,  # paho-private: overrides
                      qos: int, info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        thread = self._thread  # paho-private
        batch = self._batch
        own = threading.current_thread() is thread
        if thread is None or not (own or getattr(batch, "active", False)):
            return super()._packet_queue(command, packet, mid, qos, info)  # paho-private
        # paho's own packet record (OUT_PACKET_KEYS; see Client._packet_queue), without its wake-up byte.
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,  # paho-private
                                 "to_process": len(packet), "packet": packet, "info": info})
        if not own:
            batch.owed = True
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Packets queued by this thread inside (acknowledgements of a whole burst) wake paho's network
        thread once, at the end, instead of once each."""
        batch = self._batch
        if getattr(batch, "active", False):
            yield
            return
        batch.active, batch.owed = True, False
        try:
            yield
        finally:
            batch.active = False
            if batch.owed:
                _paho_wake(self)

    # --- the lean PUBLISH --------------------------------------------------------------------------

    def _handle_publish(self) -> MQTTErrorCode:  # paho-private: overrides
        callback = self.on_raw_message
        in_packet = self._in_packet  # paho-private
        header = in_packet["command"]
        qos = (header & 0x06) >> 1
        if callback is None or qos == 2:
            return super()._handle_publish()  # paho-private
        packet = in_packet["packet"]
        if len(packet) < 2:
            return super()._handle_publish()  # paho-private: it raises MalformedPacket for us
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        cursor = topic_end
        mid = 0
        if qos:
            if len(packet) < cursor + 2:
                return super()._handle_publish()  # paho-private
            mid = (packet[cursor] << 8) | packet[cursor + 1]
            cursor += 2
        if self._protocol == mqtt.MQTTv5:  # paho-private
            if len(packet) <= cursor or packet[cursor] != 0:
                return super()._handle_publish()  # paho-private: properties present, paho decodes them
            cursor += 1
        elif topic_end == 2:
            return super()._handle_publish()  # paho-private: an empty topic is an error before MQTT 5
        topic = bytes(packet[2:topic_end])
        payload = bytes(packet[cursor:])
        self.raw_messages += 1
        with self._in_callback_mutex:  # paho-private
            try:
                callback(topic, payload, mid, qos)
            except Exception as error:
                _paho_log(self, mqtt.MQTT_LOG_ERR, "Caught exception in on_raw_message: %s", error)
                if not self.suppress_exceptions:
                    raise
        if qos == 1 and not self._manual_ack:  # paho-private
            return self._send_puback(mid)  # paho-private
        return MQTTErrorCode.MQTT_ERR_SUCCESS
