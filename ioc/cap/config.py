"""`[cap]`: the CAP 1.2 feed of public alerts (`ioc.cap`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ioc.config_types import _Section


class CapSettings(_Section):
    # CAP <sender>: who publishes, unique to this center (e.g. its domain); no spaces, commas, < or &.
    sender: str = "ioc"
    sender_name: str = "Trung tâm Điều hành thông minh"  # CAP <senderName>, shown to the public
    keep: int = Field(default=500, ge=1, le=100_000)  # messages kept for the feed (the oldest go first)
    # The feed's public base URL (e.g. https://ioc.example.vn/) for its links; default: the request's.
    url: str | None = None

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not value or any(char.isspace() or char in ",<&" for char in value):
            raise ValueError("a CAP sender may not be empty or hold spaces, commas, '<' or '&'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return None if value is None else value.rstrip("/") + "/"
