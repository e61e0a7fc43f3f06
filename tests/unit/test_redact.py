"""The one redaction helper (ioc.redact): URLs shown without their password, secrets kept out of logs."""

from __future__ import annotations

import pytest
import structlog

from ioc.redact import redact_secrets, redact_text, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("http://ioc:pw@influx:8086", "http://ioc:***@influx:8086"),
    ("mqtts://ioc:p@ss:w@broker:8883/", "mqtts://ioc:***@broker:8883/"),  # a raw '@' in the password
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("https://hooks.example/x?access_token=abc&room=1", "https://hooks.example/x?access_token=***&room=1"),
    ("https://h/x?PASSWORD=abc", "https://h/x?PASSWORD=***"),
    ("http://influx:8086/write?db=ioc&precision=ns", "http://influx:8086/write?db=ioc&precision=ns"),
    ("http://ioc@influx:8086", "http://ioc@influx:8086"),  # a user alone is no secret
    ("embedded", "embedded"),
    ("", ""),
])
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_url_in_a_text_is_redacted() -> None:
    text = "Failed to parse: http://ioc:pw@127.0.0.1:99999/write?db=ioc (then mqtt://a:b@c:1883)"
    assert redact_text(text) == ("Failed to parse: http://ioc:***@127.0.0.1:99999/write?db=ioc "
                                 "(then mqtt://a:***@c:1883)")


def test_the_log_processor_masks_urls_and_secret_keys() -> None:
    event = {"event": "x", "url": "http://u:pw@h:1", "password": "pw", "api_key": "k", "token_sha256": "ab",
             "problems": ["mqtt://u:pw@h"], "exception": [{"exc_value": "cannot reach http://u:pw@h:1/"}],
             "count": 3, "empty_token": ""}
    assert redact_secrets(None, "info", event) == {
        "event": "x", "url": "http://u:***@h:1", "password": "***", "api_key": "***", "token_sha256": "ab",
        "problems": ["mqtt://u:***@h"], "exception": [{"exc_value": "cannot reach http://u:***@h:1/"}],
        "count": 3, "empty_token": ""}
    rendered = structlog.processors.JSONRenderer()(None, "info", redact_secrets(None, "info", {
        "event": "sink.write_failed", "error": "LocationParseError: http://ioc:pw-123@h:99999"}))
    assert "pw-123" not in rendered
