"""HTTP cases for every route of the daemon's OpenAPI document, plus the routes it hides (`/static/...`),
unknown paths and wrong methods.

A `Route` is read from `GET /openapi.json` of the running daemon, so a route someone adds is fuzzed
without touching this file. For each route a strategy draws an `HttpCase`: path parameters with junk
ids (or real ones the harness learned), a query string with junk values for the documented parameters
and unknown ones (percent-encoded bad UTF-8 included), a token of each kind, and a body for routes that
take one (events and silences get structure-aware bodies, others junk).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.strategies import (
    AREA_CODES,
    BAD_UTF8,
    Pairs,
    Raw,
    broken,
    dumps,
    durations,
    junk,
    numbers,
    odd_text,
    odd_times,
    payloads,
    rfc3339,
)

EVENTS_PATH = "/api/v1/events"
SILENCES_PATH = "/api/v1/silences"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")


# eq=False: hashed by identity, so the cached strategy factories below can take them as keys.
@dataclass(frozen=True, slots=True, eq=False)
class Param:
    name: str
    where: str  # "path" | "query" | "header"
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    method: str
    path: str  # the template, e.g. /api/v1/alerts/{alert_id}/ack
    params: tuple[Param, ...] = ()
    body: bool = False
    streaming: bool = False

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True, slots=True)
class HttpCase:
    """One request, as bytes where it matters: `target` is the raw path and query (already encoded)."""

    route: str  # the route's name, for the tally
    method: str
    target: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes | None = None
    streaming: bool = False

    def short(self, limit: int = 300) -> str:
        body = "" if self.body is None else f" body={self.body[:limit]!r}{'...' if len(self.body) > limit else ''}"
        return f"{self.method} {self.target[:limit]} headers={list(self.headers)}{body}"


@dataclass(eq=False)
class Known:
    """Real values the harness learned from the daemon (ids of alerts and silences, tokens), so some
    cases reach past the 404 and the 401."""

    alert_ids: list[str] = field(default_factory=list)
    silence_ids: list[str] = field(default_factory=list)
    vendor_token: str = ""
    other_vendor_token: str = ""
    operator_token: str = ""
    viewer_token: str = ""
    sources: tuple[str, ...] = ("qtmt-aqi",)
    static_names: tuple[str, ...] = ("app.js", "style.css", "i18n.js", "index.html")


def load_routes(openapi: dict[str, Any]) -> list[Route]:
    """Every operation of the document, plus the hidden static route."""
    routes: list[Route] = []
    for path, operations in sorted(openapi.get("paths", {}).items()):
        for method, operation in sorted(operations.items()):
            if method.upper() not in METHODS:
                continue
            params = tuple(Param(p["name"], p["in"], p.get("schema", {})) for p in operation.get("parameters", []))
            streaming = any("text/event-stream" in response.get("content", {})
                            for response in operation.get("responses", {}).values())
            routes.append(Route(method.upper(), path, params, "requestBody" in operation, streaming))
    routes.append(Route("GET", "/static/{name}", (Param("name", "path", {"type": "string"}),
                                                  Param("v", "query", {"type": "string"}))))
    return routes


# --- parts of a request -------------------------------------------------------------------------------------

def _quote(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def _percent(raw: bytes) -> str:
    return "".join(f"%{byte:02X}" for byte in raw)


@cache
def encoded_text() -> st.SearchStrategy[str]:
    """A path segment or query value, already percent-encoded: odd text, or bytes that are not UTF-8."""
    return st.one_of(
        odd_text().map(_quote).filter(lambda text: len(text) <= 12_000),  # httpx refuses URLs over 64 KiB
        st.sampled_from(BAD_UTF8).map(_percent),
        st.binary(max_size=12).map(_percent),
        st.sampled_from(("%", "%zz", "%2", "%00", "%2F", "%2e%2e", "..", ".", "a%2Fb", "%u0041", "+", "%20",
                         "a b", "&", "=", "%23", "?", ";", "a;b=c")),
    )


def _hint_values(name: str, schema: dict[str, Any], known: Known) -> list[str]:
    """Sensible values for a documented parameter, so the junk is mixed with what gets past validation."""
    values: list[str] = []
    if schema.get("type") == "integer" or any(s.get("type") == "integer" for s in schema.get("anyOf", [])):
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 100)
        values += [str(v) for v in (lo, lo - 1, hi, hi + 1, 1, 0, -1, 10**30, 2**63)]
        values += ["１２", "٣", "1_000", " 5", "5 ", "+5", "0x10", "1e3", "1.0", "9" * 5000, "-0", "NaN"]
    words = {
        "state": ["firing", "acknowledged", "resolved", "pending", "FIRING", ""],
        "severity": ["info", "warning", "critical", "page"],
        "status": ["pending", "active", "expired"],
        "lang": ["vi", "en", "fr", "EN", ""],
        "at": ["2026-03-02", "2025-06-30", "2025-07-01", "0001-01-01", "0000-01-01", "9999-12-31", "2026-02-30",
               "2026-13-01", "10000-01-01"],
        "area": list(AREA_CODES),
        "metric": ["env.aqi", "kpi.dossier.open", "x"],
        "v": ["0", "deadbeefdeadbeef"],
        "alert_id": known.alert_ids,
        "silence_id": known.silence_ids,
        "name": list(known.static_names),
        "filter": ['alertname="aqi-bad"', 'area=~"22.*"', "{", 'a!~"(a+)+$"'],
        "active": ["true", "false", "1", "yes"],
    }
    values += words.get(name, [])
    return [_quote(value) for value in values]


@cache
def param_value(param: Param, known: Known) -> st.SearchStrategy[str]:
    hints = _hint_values(param.name, param.schema, known)
    options: list[st.SearchStrategy[str]] = [encoded_text(), numbers().map(lambda n: _quote(str(n)))]
    if hints:
        options = [st.sampled_from(hints), st.sampled_from(hints), *options]
    return st.one_of(*options)


@cache
def query_string(params: tuple[Param, ...], known: Known) -> st.SearchStrategy[str]:
    """Documented parameters (each maybe absent, maybe repeated) and unknown ones, in any order."""
    documented = [p for p in params if p.where == "query"]
    pair_options: list[st.SearchStrategy[str]] = [
        st.builds(lambda value, p=p: f"{p.name}={value}", param_value(p, known))
        for p in documented
    ]
    pair_options.append(st.builds(lambda k, v: f"{k}={v}", encoded_text(), encoded_text()))
    pair_options.append(encoded_text())  # a key with no `=`
    pairs = st.lists(st.one_of(*pair_options), max_size=5)
    return st.one_of(st.just(""), pairs.map("&".join), pairs.map(lambda parts: "&&".join(parts) + "&"))


_TOKEN_KINDS = ("none", "vendor", "other_vendor", "operator", "operator", "viewer", "junk", "basic", "empty",
                "bytes", "lower", "twice")


@cache
def authorization(known: Known, *, prefer: str | None = None) -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    """No token, each real token, junk tokens, non-Latin-1 bytes, two Authorization headers."""

    def build(kind: str, junk_text: str, raw: bytes) -> tuple[tuple[bytes, bytes], ...]:
        tokens = {"vendor": known.vendor_token, "other_vendor": known.other_vendor_token,
                  "operator": known.operator_token, "viewer": known.viewer_token}
        header = b"authorization"
        if kind == "none":
            return ()
        if kind in tokens:
            return ((header, f"Bearer {tokens[kind]}".encode()),)
        if kind == "lower":
            return ((header, f"bearer  {known.operator_token} ".encode()),)
        if kind == "basic":
            return ((header, b"Basic dXNlcjpwYXNz"),)
        if kind == "empty":
            return ((header, b"Bearer"),)
        if kind == "bytes":
            return ((header, b"Bearer " + raw),)
        if kind == "twice":
            return ((header, f"Bearer {known.vendor_token}".encode()),
                    (header, f"Bearer {known.operator_token}".encode()))
        safe = junk_text.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
        return ((header, b"Bearer " + safe.strip()),)

    kinds = st.sampled_from(_TOKEN_KINDS) if prefer is None else st.one_of(
        st.just(prefer), st.just(prefer), st.sampled_from(_TOKEN_KINDS))
    raw = st.one_of(st.sampled_from(BAD_UTF8), st.binary(min_size=1, max_size=8).filter(
        lambda b: not any(c in b for c in b"\r\n\x00")))
    return st.builds(build, kinds, odd_text(30), raw)


_CONTENT_TYPES = (None, None, b"application/json", b"application/json", b"application/json", b"application/json",
                  b"application/json; charset=utf-8",
                  b"application/json; charset=latin-1", b"application/x-ndjson", b"application/ndjson",
                  b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                  b"application/json; boundary=\xff", b"*/*", b"", b"application/JSON", b"\xff\xfe")


@cache
def content_type() -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    return st.sampled_from(_CONTENT_TYPES).map(lambda value: () if value is None else ((b"content-type", value),))


@cache
def extra_headers() -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    """Headers some routes read (Last-Event-ID, If-None-Match, Content-Length lies are left to raw tests)."""
    value = st.one_of(st.sampled_from((b"0", b"-1", b"99999999999999999999", b"abc", b"\xff", b'"x", W/"y"',
                                       b"*", b"1e400")), st.binary(max_size=16).filter(
        lambda b: not any(c in b for c in b"\r\n\x00")))
    name = st.sampled_from((b"last-event-id", b"if-none-match", b"accept", b"accept-language", b"x-forwarded-for",
                            b"accept-encoding", b"origin"))
    return st.lists(st.tuples(name, value), max_size=2).map(tuple)


# --- bodies ------------------------------------------------------------------------------------------------

def _iso_soon(seconds: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


@cache
def matchers() -> st.SearchStrategy[Any]:
    name = st.one_of(st.sampled_from(("area", "rule", "severity", "alertname", "source", "entity")), odd_text(20))
    value = st.one_of(st.sampled_from(("22723", "aqi-bad", ".*", "(a+)+$", "(a|a)*b", "a" * 1025, "[", "(?i)x",
                                       "\\", "x{99999}", "(?P<n>a)(?P=n)", "\\1", "")), odd_text())
    op = st.one_of(st.sampled_from(("=", "!=", "=~", "!~")), st.sampled_from(("==", "~", "", "=~ ", "in")),
                   junk())
    one = st.fixed_dictionaries({"name": name, "value": value}, optional={"op": op})
    return st.one_of(st.lists(one, min_size=1, max_size=4), st.lists(one, min_size=65, max_size=66),
                     st.lists(st.one_of(one, junk(), st.sampled_from(("area=22723", 'rule=~"x"'))), max_size=4),
                     junk())


@cache
def silence_bodies() -> st.SearchStrategy[bytes]:
    return _silence_bodies()


_SANE_MATCHER = st.fixed_dictionaries(
    {"name": st.sampled_from(("area", "rule", "severity", "source", "entity")),
     "value": st.sampled_from(("22723", "593", "aqi-bad", "fuzz-high", "critical", "22.*", "cell-.*|aqi-.*"))},
    optional={"op": st.sampled_from(("=", "!=", "=~", "!~"))})
_SANE_DURATIONS = st.sampled_from(("1h", "30m", "2h", "1d", "1h30m", "90s", "7d"))


@cache
def _silence_time() -> st.SearchStrategy[Any]:
    return st.one_of(st.builds(_iso_soon, st.floats(-86400.0, 86400.0 * 30)), odd_times())


@cache
def _silence_field_junk(name: str) -> st.SearchStrategy[Any]:
    if name in ("starts_at", "ends_at"):
        return _silence_time()
    return {"matchers": matchers(), "duration": durations()}.get(name, st.one_of(odd_text(), junk()))


@st.composite
def _silence_bodies(draw: st.DrawFn) -> bytes:
    """Half sane (so some silences are created and the create path runs to its end) with at most one
    field made odd; half junk at every field."""
    time_value = _silence_time()
    body: dict[str, Any]
    if draw(st.booleans()):
        body = {"matchers": draw(st.lists(_SANE_MATCHER, min_size=1, max_size=3))}
        if draw(st.booleans()):
            body["starts_at"] = draw(st.builds(_iso_soon, st.floats(-3600.0, 3600.0)))
        if draw(st.booleans()):
            body["ends_at"] = draw(st.builds(_iso_soon, st.floats(7200.0, 86400.0 * 30)))
        else:
            body["duration"] = draw(_SANE_DURATIONS)
        if draw(st.booleans()):
            body["comment"] = draw(st.text(max_size=40))
        if draw(st.integers(0, 2)):  # two in three: one field made odd, times and durations above all
            field_name = draw(st.sampled_from(("starts_at", "ends_at", "duration", "starts_at", "ends_at", "duration",
                                               "matchers", "comment", "author")))
            body[field_name] = draw(_silence_field_junk(field_name))
            if field_name == "ends_at":
                body.pop("duration", None)
            elif field_name == "duration":
                body.pop("ends_at", None)
        return dumps(body)
    body = {"matchers": draw(matchers())}
    if draw(st.booleans()):
        body["starts_at"] = draw(time_value)
    choice = draw(st.sampled_from(("ends_at", "duration", "both", "neither")))
    if choice in ("ends_at", "both"):
        body["ends_at"] = draw(time_value)
    if choice in ("duration", "both"):
        body["duration"] = draw(durations())
    if draw(st.booleans()):
        body["comment"] = draw(_silence_field_junk("comment"))
    if draw(st.booleans()):
        body["author"] = draw(_silence_field_junk("author"))
    if draw(st.integers(0, 9)) == 0:
        body[draw(odd_text(12))] = draw(junk())
    value: Any = body
    if draw(st.integers(0, 9)) == 0:
        value = Pairs((*body.items(), ("ends_at", draw(time_value))))
    text = dumps(value)
    if draw(st.integers(0, 9)) == 0:
        text = draw(broken(st.just(text)))
    return text


@cache
def generic_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(junk().map(dumps), st.binary(max_size=64), st.just(b""), broken(junk().map(dumps)))


_CONTROL = bytes(range(0x20)).replace(b"\t", b"") + b"\x7f"


def _clean(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """Header values h11 agrees to send (no control characters, no surrounding whitespace);
    `raw_requests` sends the others."""
    return tuple((name, value.translate(None, _CONTROL).strip(b" \t")) for name, value in headers)


# --- cases -------------------------------------------------------------------------------------------------

_PARAM_RE = re.compile(r"\{([^}]+)\}")


@cache
def route_cases(route: Route, known: Known) -> st.SearchStrategy[HttpCase]:
    """One request to `route`: path parameters, query, headers and (when it takes one) a body."""
    return _route_cases(route, known)


@cache
def _path_value(param: Param, known: Known) -> st.SearchStrategy[str]:
    return st.one_of(param_value(param, known), st.just(""))


@st.composite
def _route_cases(draw: st.DrawFn, route: Route, known: Known) -> HttpCase:
    path_params = {p.name: p for p in route.params if p.where == "path"}

    def fill(match: re.Match[str]) -> str:
        return draw(_path_value(path_params[match.group(1)], known))

    path = _PARAM_RE.sub(fill, route.path) if "{" in route.path else route.path
    query = draw(query_string(route.params, known))
    target = path + ("?" + query if query else "")
    needs_operator = route.method in ("POST", "DELETE", "PUT", "PATCH") and route.path != EVENTS_PATH
    prefer = "vendor" if route.path == EVENTS_PATH else ("operator" if needs_operator else None)
    headers = draw(authorization(known, prefer=prefer)) + draw(extra_headers())
    body: bytes | None = None
    if route.path == EVENTS_PATH and route.method == "POST":
        source = draw(st.sampled_from(known.sources))
        body = draw(payloads(source, ndjson=True))
        headers += draw(content_type())
    elif route.path == SILENCES_PATH and route.method == "POST":
        body = draw(silence_bodies())
        headers += draw(content_type())
    elif route.body or draw(st.integers(0, 9)) == 0:
        body = draw(generic_bodies())
        headers += draw(content_type())
    return HttpCase(route.name, route.method, target, _clean(headers), body, route.streaming)



@cache
def stray_cases(routes: tuple[Route, ...], known: Known) -> st.SearchStrategy[HttpCase]:
    """Unknown paths and known paths with a method they do not take (404 and 405, never 5xx)."""
    paths = sorted({_PARAM_RE.sub("x", route.path) for route in routes})
    unknown = st.builds(lambda parts: "/" + "/".join(parts), st.lists(encoded_text(), min_size=1, max_size=4))
    suffixed = st.builds(lambda path, tail: path.rstrip("/") + "/" + tail, st.sampled_from(paths), encoded_text())
    target = st.one_of(st.sampled_from(paths), unknown, suffixed, st.sampled_from(
        ("//", "/api//v1/alerts", "/api/v1/alerts/", "/API/V1/ALERTS", "/api/v1/../v1/alerts", "/%2e%2e/etc",
         "/api/v1/alerts?" + "a=1&" * 2000, "/" + "a" * 8000)))
    streams = {route.path for route in routes if route.streaming}
    return st.builds(
        lambda method, target, headers, body: HttpCase("stray", method, target, _clean(headers), body,
                                                       target.partition("?")[0] in streams),
        st.sampled_from(METHODS), target, authorization(known),
        st.one_of(st.none(), generic_bodies()),
    )


__all__ = ["HttpCase", "Known", "Param", "Raw", "Route", "load_routes", "route_cases", "stray_cases"]


# --- raw requests over a socket: what an HTTP client library would refuse to send --------------------------

_RAW_PATHS = (b"/healthz", b"/api/v1/alerts", b"/api/v1/events", b"/api/v1/silences", b"/api/v1/stream", b"/",
              b"*", b"http://127.0.0.1/healthz", b"//", b"/\x00", b"/api/v1/alerts/\xff\xfe", b"/%", b"/ /",
              b"/api/v1/alerts?state=\xff", b"/" + b"a" * 20_000, b"")


@cache
def raw_requests(known: Known) -> st.SearchStrategy[bytes]:
    return _raw_requests(known)


@st.composite
def _raw_requests(draw: st.DrawFn, known: Known) -> bytes:
    """A request as bytes: odd methods, targets with raw bad bytes, odd versions, malformed or huge
    headers, Content-Length and Transfer-Encoding that disagree. The body is never shorter than a
    Content-Length says, so the server never waits for bytes that will not come."""
    method = draw(st.sampled_from((b"GET", b"POST", b"get", b"G\xffT", b"", b"CONNECT", b"TRACE", b"PRI",
                                   b"DELETE", b"X" * 300)))
    target = draw(st.one_of(st.sampled_from(_RAW_PATHS), st.builds(lambda tail: b"/api/v1/alerts/" + tail,
                                                                      st.binary(max_size=16))))
    version = draw(st.sampled_from((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b"",
                                    b"HTTP/9.9", b"http/1.1")))
    headers: list[bytes] = [b"Host: 127.0.0.1"] if draw(st.integers(0, 9)) else []
    if draw(st.booleans()):
        headers.append(f"Authorization: Bearer {draw(st.sampled_from((known.vendor_token, known.operator_token)))}"
                       .encode())
    odd = st.sampled_from((b"X-\xff: v", b"Bad Header: v", b"X: \xff\xfe", b"X: a\r\n b", b": v", b"X:",
                           b"X: " + b"v" * 70_000, b"Content-Type: application/json", b"Expect: 100-continue",
                           b"Connection: upgrade, keep-alive", b"Upgrade: websocket", b"Accept: \x00"))
    headers += draw(st.lists(odd, max_size=3))
    if draw(st.integers(0, 19)) == 0:
        headers += [f"X-Many-{i}: {i}".encode() for i in range(draw(st.sampled_from((100, 1000))))]
    body = draw(st.one_of(st.just(b""), payloads(known.sources[0]), generic_bodies()))
    framing = draw(st.sampled_from(("length", "length", "short", "none", "chunked", "bad-chunked", "both",
                                    "two-lengths", "bad-length")))
    if framing == "length":
        headers.append(f"Content-Length: {len(body)}".encode())
    elif framing == "short":
        headers.append(f"Content-Length: {len(body) // 2}".encode())
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    elif framing == "bad-chunked":
        headers.append(b"Transfer-Encoding: chunked")
        body = draw(st.sampled_from((b"zz\r\n", b"-1\r\n", b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n", b"0\r\n")))
    elif framing == "both":
        headers += [b"Transfer-Encoding: chunked", f"Content-Length: {len(body)}".encode()]
        body = b"0\r\n\r\n"
    elif framing == "two-lengths":
        headers += [f"Content-Length: {len(body)}".encode(), b"Content-Length: 0"]
    elif framing == "bad-length":
        headers.append(draw(st.sampled_from((b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 1e3",
                                             b"Content-Length: 0x10", b"Content-Length:  0 "))))
    headers.append(b"Connection: close")
    return method + b" " + target + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
