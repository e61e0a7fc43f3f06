"""One OASIS CAP 1.2 message as XML (`render`), in the schema's element order, escaped by ElementTree.

Times are written in Vietnam's offset (`2026-03-02T08:00:00+07:00`): the schema's `sent`, `onset` and
`effective` allow no fractional seconds and no `Z`. A `circle` is `lat,lon radius` (WGS 84, km).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, TypeAlias

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
VN_OFFSET = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh has had no DST since 1975

MsgType: TypeAlias = Literal["Alert", "Update", "Cancel"]


def cap_time(timestamp: float) -> str:
    """Unix seconds as CAP's dateTime: whole seconds with the +07:00 offset."""
    return datetime.fromtimestamp(int(timestamp), VN_OFFSET).isoformat()


@dataclass(frozen=True, slots=True)
class CapText:
    """The language-dependent part of an `info` block."""

    language: str  # RFC 3066: vi-VN, en-US
    event: str
    headline: str
    description: str
    instruction: str | None = None


@dataclass(frozen=True, slots=True)
class CapArea:
    description: str  # areaDesc: the names, the unit's first
    geocode: str | None = None  # the registry's (GSO) code
    circle: str | None = None  # "lat,lon radius_km"


@dataclass(frozen=True, slots=True)
class Reference:
    """An earlier message this one follows (CAP `references`: `sender,identifier,sent`)."""

    sender: str
    identifier: str
    sent: float

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{cap_time(self.sent)}"


@dataclass(frozen=True, slots=True)
class CapMessage:
    identifier: str
    sender: str
    sent: float
    msg_type: MsgType
    incident: str  # the alert's id: every message of one episode shares it
    category: str
    urgency: str
    severity: str
    certainty: str
    texts: tuple[CapText, ...]
    area: CapArea
    sender_name: str | None = None
    onset: float | None = None
    response_type: str | None = None
    references: tuple[Reference, ...] = ()
    event_code: tuple[str, str] | None = None  # (valueName, value)
    parameters: tuple[tuple[str, str], ...] = ()


def _add(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        element.text = text
    return element


def _pair(parent: ET.Element, tag: str, name: str, value: str) -> None:
    element = _add(parent, tag)
    _add(element, "valueName", name)
    _add(element, "value", value)


def render(message: CapMessage) -> bytes:
    """The message as a UTF-8 XML document with the CAP 1.2 namespace as its default."""
    root = ET.Element(f"{{{CAP_NS}}}alert")
    _add(root, "identifier", message.identifier)
    _add(root, "sender", message.sender)
    _add(root, "sent", cap_time(message.sent))
    _add(root, "status", "Actual")
    _add(root, "msgType", message.msg_type)
    _add(root, "scope", "Public")
    if message.references:
        _add(root, "references", " ".join(str(reference) for reference in message.references))
    _add(root, "incidents", message.incident)
    for text in message.texts:
        info = _add(root, "info")
        _add(info, "language", text.language)
        _add(info, "category", message.category)
        _add(info, "event", text.event)
        if message.response_type is not None:
            _add(info, "responseType", message.response_type)
        _add(info, "urgency", message.urgency)
        _add(info, "severity", message.severity)
        _add(info, "certainty", message.certainty)
        if message.event_code is not None:
            _pair(info, "eventCode", *message.event_code)
        _add(info, "effective", cap_time(message.sent))
        if message.onset is not None:
            _add(info, "onset", cap_time(message.onset))
        if message.sender_name:
            _add(info, "senderName", message.sender_name)
        _add(info, "headline", text.headline)
        _add(info, "description", text.description)
        if text.instruction:
            _add(info, "instruction", text.instruction)
        for name, value in message.parameters:
            _pair(info, "parameter", name, value)
        area = _add(info, "area")
        _add(area, "areaDesc", message.area.description)
        if message.area.circle is not None:
            _add(area, "circle", message.area.circle)
        if message.area.geocode is not None:
            _pair(area, "geocode", "GSO", message.area.geocode)
    ET.register_namespace("", CAP_NS)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
