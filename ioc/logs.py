"""structlog setup: JSON lines in production, a readable console on a TTY. Events have names
(`sink.write_failed`), not prose; context goes in keys.

The log never fills up (docs/operations.md): a warning or error that repeats is written at most once per
`REPEAT_WINDOW` seconds per logger and event; the next line of it that gets through carries
`repeated=N`, the number held back since the last one. `RepeatLimiter` is that rule; the structlog
processor `limit_repeats` applies it to the daemon's own events and `RepeatFilter` (a `logging.Filter`
on the one stderr handler) to the libraries' records: asyncio's `socket.accept() out of system
resource` once came 634,879 times in 20 s, each with a traceback. Library records are rendered by the
same pipeline as the daemon's, so every record is one line (a traceback included) in the JSON format.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, Literal

import orjson
import structlog

from ioc.redact import redact_secrets

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
REPEAT_WINDOW = 10.0  # seconds: docs/operations.md, "at most once per 10 s, with a count"
# structlog method names at warning and above (the level names of `make_filtering_bound_logger`).
_LIMITED_METHODS = frozenset({"warning", "warn", "error", "err", "exception", "critical", "fatal"})


class RepeatLimiter:
    """Lets the first occurrence of a key through, then at most one every `window` seconds, and counts
    those held back in between. Thread-safe; `clock` is injectable for tests.

    Memory is bounded: at most `max_keys` keys are remembered. When that many are held, keys whose
    window has passed with nothing held back are forgotten first (forgetting them changes nothing:
    their next occurrence passes either way), then the oldest."""

    def __init__(self, window: float = REPEAT_WINDOW, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 4096) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._passed_at: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def check(self, key: Hashable) -> int | None:
        """None: hold this occurrence back (it is counted). Otherwise let it through; the value is how
        many of the key were held back since the last one that went through."""
        now = self._clock()
        with self._lock:
            last = self._passed_at.get(key)
            if last is not None and now - last < self.window:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if last is None and len(self._passed_at) >= self.max_keys:
                self._forget(now)
            self._passed_at.pop(key, None)  # re-inserted last: dict order is then oldest first
            self._passed_at[key] = now
            return self._held.pop(key, 0)

    def _forget(self, now: float) -> None:
        for key, last in list(self._passed_at.items()):
            if now - last >= self.window and key not in self._held:
                del self._passed_at[key]
        while len(self._passed_at) >= self.max_keys:
            oldest = next(iter(self._passed_at))
            del self._passed_at[oldest]
            self._held.pop(oldest, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._passed_at)


class RepeatProcessor:
    """The structlog processor: warnings and errors keyed by logger name and event; a repeat inside
    the window raises `DropEvent`, the next one through gets `repeated=N` (N > 0 only)."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        self.limiter = limiter if limiter is not None else RepeatLimiter()

    def __call__(self, logger: Any, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if method_name not in _LIMITED_METHODS:
            return event_dict
        name = getattr(logger, "name", None) or event_dict.get("logger") or ""
        held = self.limiter.check((name, event_dict.get("event")))
        if held is None:
            raise structlog.DropEvent
        if held:
            event_dict["repeated"] = held
        return event_dict


# Numbers and addresses in a library's message (`<Handle at 0x7f...>`, a port, a count) make every
# record look new; they are masked in the key so that one kind of message is one key.
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")


class RepeatFilter(logging.Filter):
    """The same rule for the standard `logging` module (uvicorn, asyncio, paho): records at WARNING and
    above, keyed by logger name and the first line of the message with numbers masked. A record that
    gets through after some were held back has the attribute `repeated` (rendered as a key)."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter if limiter is not None else RepeatLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        first_line = str(record.msg).partition("\n")[0][:200]
        held = self.limiter.check((record.name, _VARYING.sub("#", first_line)))
        if held is None:
            return False
        if held:
            record.repeated = held
        return True


# Tracebacks as data, without the frames' local variables: a local may hold a token or a password.
_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


def _console_tracebacks() -> structlog.typing.ExceptionRenderer:
    """Tracebacks on a terminal (rich, a dependency), also without local variables."""
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def _json_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


_handler: logging.Handler | None = None  # the stderr handler installed by configure_logging


def configure_logging(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    global _handler
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    repeats = RepeatProcessor()
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    processors: list[structlog.typing.Processor] = [
        repeats,  # first: a held-back event costs nothing more
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        stamp,
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.typing.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=_console_tracebacks())
        processors += [redact_secrets, renderer]
        factory: structlog.typing.WrappedLogger = structlog.PrintLoggerFactory(sys.stderr)
        library_chain: list[structlog.typing.Processor] = [redact_secrets, renderer]
    else:
        processors += [
            _tracebacks,
            redact_secrets,  # after the tracebacks are dicts, so their messages are redacted too
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
        library_chain = [_tracebacks, redact_secrets,
                         structlog.processors.JSONRenderer(serializer=_json_text)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard logging module (uvicorn, asyncio, paho) go to the same stream, one
    # line per record in the same format, through the same limit on repeats (one limiter: a key is
    # (logger, message) either way).
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter(repeats.limiter))
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *library_chain],
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.stdlib.ExtraAdder(allow=["repeated"]), stamp],
    ))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    root.setLevel(max(_LEVELS[level], logging.INFO))
    # httpx logs every request at INFO: the poll connector would fill the log with its probes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
