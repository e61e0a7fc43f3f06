"""Secrets kept out of what the daemon shows (docs/operations.md): no token, password or password in a URL in
a log line, an error message, an API answer or `/readyz`.

The configuration keeps passwords and tokens as `SecretStr` (shown as `**********`) and bearer tokens only
as their SHA-256, so the one secret that travels in plain text is a URL with credentials in it, such as
`http://ioc:s3cret@influx:8086`. Wherever a URL is shown it goes through `redact_url` first, which keeps
what a person needs to find the server and masks the password: `http://ioc:***@influx:8086`. Query
parameters that carry credentials by name (`?token=`, `&password=`, ...) are masked the same way.

`redact_text` does the same for every URL inside a free text (an exception's message names the URL it
could not reach), and `redact_secrets` is a structlog processor applying it to every string of a log
event, and masking the values of keys that name a secret (`password=`, `token=`, `authorization=`), so
a secret slipped into a log call by mistake is still not written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

MASK = "***"

# scheme://user:password@ — the password runs to the last `@` before the path (a raw `@` in a password is
# a common mistake); `user` may be empty (`redis://:password@host`).
_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:'\"<>]*):[^\s/?#'\"<>]*@")
# ?token=... or &password=... (any case; also access_token, api_key, secret, signature, sig, auth).
_SECRET_PARAMETER = re.compile(
    r"(?P<head>[?&](?:[A-Za-z0-9_.\-]*(?:token|password|passwd|pwd|secret|api_?key|signature|auth))=)"
    r"[^&#\s'\"<>]*",
    re.IGNORECASE,
)
# Keys of a log event whose value is a secret whatever it looks like.
_SECRET_KEY = re.compile(r"(?:^|_)(?:password|passwd|token|secret|authorization|api_?key|credentials?)$",
                         re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with the password of its user info and credential query parameters masked:
    `mqtts://ioc:***@broker:8883`; a URL without them is returned unchanged."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted as `redact_url` does. Cheap when there is no URL in it."""
    if "://" not in text and "=" not in text:
        return text
    text = _CREDENTIALS.sub(rf"\g<head>:{MASK}@", text)
    return _SECRET_PARAMETER.sub(rf"\g<head>{MASK}", text)


def redact_value(value: Any) -> Any:
    """A copy of `value` (a string, or lists, tuples and dicts of them, e.g. a traceback as a dict) with
    every string redacted and the values of secret-named keys masked; other values as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: MASK if _is_secret_key(key) and item else redact_value(item)
                for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item) for item in value)
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def redact_secrets(_logger: Any, _method: str,
                   event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every string of the event redacted (see `redact_value`). Put it last before the
    renderer (after `dict_tracebacks`, so a traceback's messages are redacted too)."""
    for key, value in event_dict.items():
        if _is_secret_key(key) and value:
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = redact_value(value)
    return event_dict
