"""The dead-letter body of docs/transports.md and docs/operations.md: `{"reason", "payload"}`, at most 64 KiB
of the payload, and the letter's `id`.

The payload is the rejected item's text, or base64 of its bytes with `"encoding": "base64"` when they are
not UTF-8. A payload longer than `DEAD_LETTER_MAX_BYTES` is cut there, at a UTF-8 character boundary when
it is text, and the body says `"truncated": true`: a dead letter never costs more than a bounded copy,
whatever was sent.

`id` is the same on every node for the same rejected message (a hash of its source, reason and whole
payload): in a cluster a dead letter may be published twice around a failover (at least once, never zero,
see ioc/ingest/letter_gate.py), and a reader drops the repeat by its `id`.
"""

from __future__ import annotations

import base64
import hashlib

import orjson

DEAD_LETTER_MAX_BYTES = 64 * 1024


def letter_id(source: str, reason: str, payload: bytes) -> str:
    """The dead letter's id: 128 bits of BLAKE2b over its source, reason and whole payload (not the cut
    one: two payloads that differ past 64 KiB are two letters)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (source.encode(), b"\0", reason.encode(), b"\0", payload):
        digest.update(part)
    return digest.hexdigest()


def dead_letter_body(reason: str, payload: bytes, *, limit: int = DEAD_LETTER_MAX_BYTES,
                     source: str | None = None) -> bytes:
    """The JSON body of a dead letter for `payload` refused with `reason`; with its `id` when `source` is
    given (as the daemon always does)."""
    truncated = len(payload) > limit
    head = payload[:limit] if truncated else payload
    body: dict[str, object] = {"id": letter_id(source, reason, payload)} if source is not None else {}
    body["reason"] = reason
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
