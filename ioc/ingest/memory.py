"""Giving memory back to the system after a big payload (docs/operations.md: RSS returns near its baseline).

Python frees a payload's objects at once, but glibc keeps much of what it freed:
- its thresholds follow the largest block ever freed: after one 8 MiB payload, blocks of up to 8 MiB come
  from the heaps instead of their own mappings, and each thread's heap keeps up to twice that at its top
  (`malloc_trim` does not shrink the heaps of threads other than the main one). `configure()` pins both
  thresholds (`mallopt`), which turns that adjustment off: a block of `MMAP_THRESHOLD` or more is always
  its own mapping, unmapped when freed, and a heap keeps at most `TRIM_THRESHOLD` free at its top.
- free pages in the middle of the heaps, left by a payload's many small objects: `malloc_trim(0)` hands
  them back. It walks the heaps (about a millisecond), so it runs only after a payload of
  `TRIM_AFTER_BYTES` or more, on a timer thread shortly after (when the request that held the payload is
  answered), and at most once per `_PAUSE` seconds.
Both touch only big blocks and rare moments: the hot path (events of a few hundred bytes) is unchanged.
Elsewhere than glibc they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

TRIM_AFTER_BYTES = 1 << 20
# glibc's starting values, then pinned (its own adjustment raises them up to 32 and 64 MiB). The same
# mmap threshold as `ioc.app`'s start-up sets, so their order does not matter.
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 1 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_DELAY = 0.5  # seconds after the request: its body and items are gone by then
_PAUSE = 1.0  # seconds between two trims at most


def _libc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None
    if function is None:
        return None
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _libc_function("malloc_trim", ctypes.c_size_t)
_mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
_lock = threading.Lock()
_pending = False
_last = 0.0
_configured = False


def configure() -> None:
    """Pin glibc's thresholds (see the module's docstring). Idempotent; the pipeline calls it."""
    global _configured
    if _configured or _mallopt is None:
        return
    _configured = True
    _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def after_payload(size: int) -> None:
    """Call after handling a payload of `size` bytes; cheap (a comparison) for the usual small ones."""
    global _pending
    if size < TRIM_AFTER_BYTES or _malloc_trim is None:
        return
    with _lock:
        if _pending:
            return
        _pending = True
    delay = max(_DELAY, _last + _PAUSE - time.monotonic())
    timer = threading.Timer(delay, _trim)
    timer.name = "ioc-malloc-trim"
    timer.daemon = True
    timer.start()


def _trim() -> None:
    global _pending, _last
    with _lock:
        _pending = False
        _last = time.monotonic()
    if _malloc_trim is not None:
        _malloc_trim(0)
