"""The dead-letter body of docs/transports.md and docs/operations.md: `{"reason", "payload"}`, at most 64 KiB
of the payload.

The payload is the rejected item's text, or base64 of its bytes with `"encoding": "base64"` when they are
not UTF-8. A payload longer than `DEAD_LETTER_MAX_BYTES` is cut there, at a UTF-8 character boundary when
it is text, and the body says `"truncated": true`: a dead letter never costs more than a bounded copy,
whatever was sent.
"""

from __future__ import annotations

import base64

import orjson

DEAD_LETTER_MAX_BYTES = 64 * 1024


def dead_letter_body(reason: str, payload: bytes, *, limit: int = DEAD_LETTER_MAX_BYTES) -> bytes:
    """The JSON body of a dead letter for `payload` refused with `reason`."""
    truncated = len(payload) > limit
    head = payload[:limit] if truncated else payload
    body: dict[str, object] = {"reason": reason}
    try:
        body["payload"] = head.decode("utf-8")
    except UnicodeDecodeError as error:
        # Cut inside a character: keep the text up to it. Invalid anywhere else: the bytes in base64.
        if truncated and error.reason == "unexpected end of data" and error.start >= len(head) - 3:
            body["payload"] = head[:error.start].decode("utf-8")
        else:
            body["payload"] = base64.b64encode(head).decode("ascii")
            body["encoding"] = "base64"
    if truncated:
        body["truncated"] = True
    return orjson.dumps(body)
