"""`GET /api/v1/cap`: the CAP messages as an Atom feed (RFC 4287), newest first, each entry holding its CAP
document inline (`<content type="application/cap+xml">`) and linking to it; `GET /api/v1/cap/{identifier}.xml`:
one message. Public data, read like the alerts (no token unless `[http] public_read = false`)."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from ioc.cap.config import CapSettings
from ioc.cap.message import cap_time
from ioc.cap.store import CapStore

FEED_PATH = "/api/v1/cap"
ATOM = "application/atom+xml; charset=utf-8"
CAP_XML = "application/cap+xml; charset=utf-8"
_DECLARATION = b"<?xml version='1.0' encoding='utf-8'?>\n"


def _inline(xml: bytes) -> str:
    """A stored CAP document without its XML declaration, to sit inside an Atom entry."""
    text = xml.decode("utf-8")
    return text[text.index("?>") + 2:].lstrip() if text.startswith("<?xml") else text


def feed(store: CapStore, settings: CapSettings, base: str) -> bytes:
    messages = store.latest()
    updated = cap_time(messages[0].sent) if messages else "1970-01-01T07:00:00+07:00"
    self_url = f"{base}api/v1/cap"
    parts = ['<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">',
             f"<id>{escape(self_url)}</id>",
             f"<title>{escape(settings.sender_name)}: CAP</title>",
             f"<updated>{updated}</updated>",
             f"<author><name>{escape(settings.sender_name)}</name></author>",
             f"<link rel=\"self\" href={quoteattr(self_url)}/>"]
    for message in messages:
        url = f"{base}api/v1/cap/{message.identifier}.xml"
        parts += ["<entry>", f"<id>{escape(url)}</id>", f"<title>{escape(message.headline)}</title>",
                  f"<updated>{cap_time(message.sent)}</updated>",
                  f"<category term={quoteattr(message.msg_type)}/>",
                  f"<link rel=\"alternate\" type=\"application/cap+xml\" href={quoteattr(url)}/>",
                  "<content type=\"application/cap+xml\">", _inline(message.xml), "</content>", "</entry>"]
    parts.append("</feed>\n")
    return "\n".join(parts).encode("utf-8")


def cap_router(store: CapStore, settings: CapSettings | None = None) -> APIRouter:
    settings = settings or CapSettings()
    router = APIRouter(tags=["CAP"])

    @router.get(FEED_PATH, summary="Public alerts as CAP 1.2 messages (Atom feed)", response_class=Response,
                responses={200: {"content": {"application/atom+xml": {}}}},
                description="The CAP 1.2 messages of `public: true` rules, newest first (Alert when one fires, "
                            "Update when what the public sees changes, Cancel when it resolves), each "
                            "entry's content the CAP document itself.")
    def cap_feed(request: Request) -> Response:
        base = settings.url or str(request.base_url)
        return Response(feed(store, settings, base), media_type=ATOM)

    @router.get(FEED_PATH + "/{identifier}.xml", summary="One CAP 1.2 message", response_class=Response,
                responses={200: {"content": {"application/cap+xml": {}}}, 404: {"description": "Not kept."}})
    def cap_message(identifier: str) -> Response:
        message = store.get(identifier)
        if message is None:
            raise HTTPException(404, f"no CAP message {identifier!r} (the feed keeps the last "
                                     f"{settings.keep})")
        return Response(message.xml, media_type=CAP_XML)

    return router
