"""The items of a payload, counted and split without a Python object per nested value (docs/operations.md).

A payload holds at most `[intake] max_items` items; more is refused whole, so the count comes before any
parsing, must be exact (a legit array of 5,000 events holds ~60,000 commas) and must cost memory in
proportion to the payload whatever its shape: `[{},{},...]`, `[[[[...]]]]`, a million 1-byte NDJSON lines.

- NDJSON: one `split` bounded to a few times `max_items` parts; past that (a flood of blank or tiny
  lines) the non-blank lines are counted with two C-speed passes (`translate`, `count`) and found by a
  regex, never split into an object each.
- JSON arrays: `payload.count(b",") + 1` bounds the count from above. Only when that bound is over the
  limit and the commas are dense (hostile shapes; events hold one comma in ~20 bytes) is the exact count
  taken from a skeleton of the payload: escapes and strings dropped, then the commas at depth 1 counted
  with C iterators, a chunk at a time. Otherwise the array is split at once by msgspec into `Raw` items,
  zero-copy views of the payload (one small object per top-level item, none per nested value).
"""

from __future__ import annotations

import codecs
import itertools
import operator
import re

import msgspec

__all__ = ["ItemsError", "TooManyItems", "array_count", "ndjson_count", "ndjson_lines", "split_array",
           "utf8_error"]

_CHUNK = 1 << 18  # bytes handled per step of a loop: bounds temporaries, lets other threads take the GIL
_NDJSON_SPACE = b" \t\r\x0b\x0c"  # bytes.isspace() less the newline: a line of only these is blank
_NDJSON_MARK = bytes(10 if byte == 10 else ord("x") for byte in range(256))  # every byte but "\n" -> "x"
_NDJSON_LINE = re.compile(rb"(?m)^[ \t\r\x0b\x0c]*+[^ \t\r\x0b\x0c\n][^\n]*")
_SKELETON_DELETE = bytes(byte for byte in range(256) if byte not in b'"[]{},')
_DELTA = [0] * 256  # depth change of each skeleton byte
for _byte in b"[{":
    _DELTA[_byte] = 1
for _byte in b"]}":
    _DELTA[_byte] = -1
_IS_COMMA = [0] * 256
_IS_COMMA[ord(",")] = 1
# Above this many commas per byte, splitting with msgspec (~56 bytes per top-level item) could cost more
# than a few times the payload, so the exact count comes first. Events hold one comma in ~20 bytes.
_DENSE_COMMAS = 1 / 16
_SPLIT = msgspec.json.Decoder(list[msgspec.Raw])


class ItemsError(ValueError):
    """The payload is not a JSON array (the message says why, for people)."""


class TooManyItems(ValueError):
    """More items than `[intake] max_items`; `count` is how many."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} items")
        self.count = count


def ndjson_count(payload: bytes) -> int:
    """Non-blank lines of an NDJSON payload, exactly; one copy of the payload, no object per line."""
    if b"\n" not in payload:
        return 0 if payload.isspace() or not payload else 1
    # Blank characters gone and every other byte but the newline turned into "x": a non-blank line is
    # then a run of "x", counted by the newlines right before one (plus the first line).
    marks = payload.translate(_NDJSON_MARK, _NDJSON_SPACE)
    return marks.count(b"\nx") + (marks[:1] == b"x")


def ndjson_lines(payload: bytes, max_items: int) -> list[bytes]:
    """The non-blank lines, in order. Raises `TooManyItems` past `max_items` (counted exactly).

    One `split`, as the happy path always did, but bounded: a payload of far more newlines than allowed
    lines (blank lines cost an object each in a split) is counted first and its lines found by a regex."""
    limit = 4 * max_items + 64
    parts = payload.split(b"\n", limit)
    if len(parts) <= limit:
        lines = [line for line in parts if line and not line.isspace()]
    else:
        count = ndjson_count(payload)
        if count > max_items:
            raise TooManyItems(count)
        lines = [match.group() for match in _NDJSON_LINE.finditer(payload)]
    if len(lines) > max_items:
        raise TooManyItems(len(lines))
    return lines


def array_count(payload: bytes) -> int:
    """The number of top-level items of a JSON array: exact for valid JSON (an empty array counts 1),
    never below what a parser would find before an error. Memory: a few copies of the payload at most."""
    skeleton = payload
    if b"\\" in skeleton:  # escapes pair up from the left inside a string; outside one they are invalid
        skeleton = skeleton.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = skeleton.translate(None, _SKELETON_DELETE)  # only " [ ] { } , remain
    if b'"' in skeleton:
        skeleton = _drop_strings(skeleton)
    for _ in range(2):  # empty groups hold no comma: gone, most hostile shapes are then flat
        before = len(skeleton)
        skeleton = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(skeleton) == before:
            break
    opened = skeleton.count(b"[") + skeleton.count(b"{")
    if opened <= 1:  # no nested group left: every comma is at the top level
        return skeleton.count(b",") + 1
    return _top_level_commas(skeleton) + 1


def _drop_strings(skeleton: bytes) -> bytes:
    """The skeleton without what lies between quotes (no escaped quote is left in it)."""
    kept: list[bytes] = []
    inside = False
    for start in range(0, len(skeleton), _CHUNK):
        pieces = skeleton[start:start + _CHUNK].split(b'"')
        kept.append(b"".join(pieces[1::2] if inside else pieces[0::2]))
        if not len(pieces) & 1:  # an odd number of quotes in the chunk
            inside = not inside
    return b"".join(kept)


def _top_level_commas(skeleton: bytes) -> int:
    """Commas at depth 1 of a skeleton of brackets and commas, with C iterators (no Python per byte)."""
    found, depth = 0, 0
    view = memoryview(skeleton)
    for start in range(0, len(skeleton), _CHUNK):
        chunk = view[start:start + _CHUNK]
        # Depth after each byte (a comma leaves it unchanged), times 1 for a comma and 0 otherwise:
        # a 1 is a comma at depth 1. The leading `depth` (from `initial`) is paired with a 0.
        depths = itertools.accumulate(map(_DELTA.__getitem__, chunk), initial=depth)
        commas = itertools.chain((0,), map(_IS_COMMA.__getitem__, chunk))
        found += operator.countOf(map(operator.mul, depths, commas), 1)
        part = chunk.tobytes()
        depth += part.count(b"[") + part.count(b"{") - part.count(b"]") - part.count(b"}")
    return found


def split_array(payload: bytes, max_items: int) -> list[msgspec.Raw]:
    """The top-level items of a JSON array as zero-copy views of `payload`.

    Raises `TooManyItems` past `max_items` (counted first when the commas are dense, so that a million
    tiny items are never split) and `ItemsError` for a payload that is not a JSON array."""
    commas = payload.count(b",")
    if commas + 1 > max_items and commas > len(payload) * _DENSE_COMMAS:
        count = array_count(payload)
        if count > max_items:
            raise TooManyItems(count)
    try:
        items = _SPLIT.decode(payload)
    except msgspec.ValidationError as error:  # valid JSON, but not an array
        raise ItemsError(f"expected a JSON array or object: {error}") from None
    except msgspec.DecodeError as error:
        raise ItemsError(f"invalid JSON: {error}") from None
    except RecursionError:
        raise ItemsError("invalid JSON: nested too deeply") from None
    if len(items) > max_items:
        raise TooManyItems(len(items))
    return items


def utf8_error(payload: bytes) -> int | None:
    """The offset of the first byte that is not valid UTF-8, or None; decoded a chunk at a time so that a
    payload of ASCII and one emoji never becomes a str four times its size."""
    if payload.isascii():
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(payload)
    for start in range(0, len(payload), _CHUNK):
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(view[start:start + _CHUNK], final=start + _CHUNK >= len(payload))
        except UnicodeDecodeError as error:
            return start - pending + error.start
    return None
