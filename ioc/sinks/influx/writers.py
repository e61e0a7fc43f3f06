"""The two InfluxDB `Writer`s: 1.x `/write` and the v2 write API (`ioc.sinks.writer` says what a writer
does: one request per batch, every failure a `WriteError`; retry, splitting and spooling are the batching
loop's business, as in Telegraf's outputs).
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Mapping
from typing import Any, cast

import orjson
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from ioc.config import InfluxSettings
from ioc.redact import redact_text
from ioc.retry import parse_retry_after
from ioc.sinks.writer import WriteError, Writer

AUTH_STATUSES = frozenset({401, 403})


def error_text(body: bytes | str | None, fallback: str) -> str:
    """The server's own words from an error body: InfluxDB 1.x `{"error"}`, v2 `{"message"}`, or text."""
    if not body:
        return fallback
    raw = body.encode() if isinstance(body, str) else body
    try:
        decoded: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict):
        for key in ("error", "message"):
            if isinstance(decoded.get(key), str) and decoded[key]:
                return str(decoded[key])
    text = raw.decode("utf-8", "replace").strip()
    return text[:2000] or fallback


def http_error(status: int, text: str, headers: Mapping[str, str] | None) -> WriteError:
    """Map an HTTP failure to a WriteError (what is retryable, and the error counter's kind)."""
    retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
    message = f"HTTP {status}: {text}"
    if status == 429:
        return WriteError(message, kind="http_429", retryable=True, retry_after=retry_after, status=status)
    if status in AUTH_STATUSES:
        return WriteError(message, kind="auth", retryable=False, status=status)
    if status >= 500:
        # A missing retention policy is a configuration mistake, not an outage: it will not heal by itself.
        retryable = "retention policy not found" not in text
        return WriteError(message, kind="http_5xx", retryable=retryable, retry_after=retry_after,
                          status=status)
    return WriteError(message, kind="http_4xx", retryable=False, status=status)


def encode(points: list[str]) -> bytes:
    """The request body: the points joined by newlines, UTF-8. A point that cannot be encoded (a lone
    surrogate) is refused like a point the server rejects, so the sink isolates and dead-letters it."""
    try:
        return "\n".join(points).encode()
    except UnicodeEncodeError as error:
        raise WriteError(f"not valid UTF-8: {error.reason}", kind="http_4xx", retryable=False,
                         splittable=True) from None


def transport_error(error: BaseException) -> WriteError:
    """Map a failure to reach the server (no HTTP answer) to a retryable WriteError."""
    if isinstance(error, NewConnectionError):
        kind = "connection"
    elif isinstance(error, ReadTimeoutError | ConnectTimeoutError | TimeoutError):
        kind = "timeout"
    else:
        kind = "connection"
    reason = getattr(error, "reason", None) or error
    # urllib3 names the whole URL when it cannot parse it (`LocationParseError`), credentials and all.
    return WriteError(redact_text(f"{kind}: {type(error).__name__}: {reason}"), kind=kind, retryable=True)


class V1Writer:
    """InfluxDB 1.x: `POST {url}/write?db=&rp=&precision=ns`, basic auth when a username is set.

    The database is created (`CREATE DATABASE`) the first time the server answers "database not found",
    then the write is retried once, so a fresh InfluxDB needs no setup.
    """

    def __init__(self, settings: InfluxSettings) -> None:
        self._base = settings.url.rstrip("/")
        self._database = settings.database
        params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            params["rp"] = settings.retention_policy
        self._write_url = f"{self._base}/write?{urllib.parse.urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if settings.username:
            secret = f"{settings.username}:{settings.password.get_secret_value()}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=1, retries=False,
            timeout=urllib3.Timeout(connect=settings.timeout, read=settings.timeout),
        )

    def write(self, points: list[str]) -> None:
        body = encode(points)
        status, text, headers = self._post(self._write_url, body, self._headers)
        if status == 404 and "database not found" in text:
            self._create_database()
            status, text, headers = self._post(self._write_url, body, self._headers)
        if status >= 300:
            raise http_error(status, text, headers)

    def _create_database(self) -> None:
        name = self._database.replace("\\", "\\\\").replace('"', '\\"')
        query = urllib.parse.urlencode({"q": f'CREATE DATABASE "{name}"'}).encode()
        headers = dict(self._headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        status, text, response_headers = self._post(f"{self._base}/query", query, headers)
        if status >= 300:
            raise http_error(status, f"CREATE DATABASE {self._database!r}: {text}", response_headers)
        # /query answers 200 with the error inside the results (e.g. not an admin).
        try:
            results = orjson.loads(text).get("results", [])
        except (orjson.JSONDecodeError, AttributeError):
            results = []
        for result in results:
            if isinstance(result, dict) and result.get("error"):
                raise WriteError(f"CREATE DATABASE {self._database!r}: {result['error']}", kind="http_4xx",
                                 retryable=False, status=status)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, Mapping[str, str]]:
        try:
            response = self._pool.request("POST", url, body=body, headers=headers, redirect=False)
        except (HTTPError, OSError) as error:
            raise transport_error(error) from error
        text = "" if response.status < 300 else error_text(response.data, response.reason or "")
        return response.status, text, response.headers

    def close(self) -> None:
        self._pool.clear()


class V2Writer:
    """The v2 write API (`/api/v2/write`: InfluxDB 2.x/3.x, VictoriaMetrics) through influxdb-client's
    synchronous WriteApi: one POST per call, no hidden batching or retry (the sink owns those)."""

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._bucket = settings.bucket
        self._org = settings.org
        self._client = InfluxDBClient(
            url=settings.url, token=settings.token.get_secret_value(), org=settings.org,
            timeout=int(settings.timeout * 1000), enable_gzip=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: list[str]) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        body = encode(points)
        try:
            self._api.write(bucket=self._bucket, org=self._org, record=body,
                            write_precision=cast(Any, WritePrecision.NS))
        except ApiException as error:
            status = int(error.status or 0)
            headers = error.headers if isinstance(error.headers, Mapping) else None
            text = error_text(error.body, str(error.reason or ""))
            if status == 0:
                raise WriteError(f"connection: {text}", kind="connection", retryable=True) from error
            raise http_error(status, text, headers) from error
        except (HTTPError, OSError) as error:
            raise transport_error(error) from error

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def make_writer(settings: InfluxSettings) -> Writer:
    """The writer for `settings.api`."""
    return V2Writer(settings) if settings.api == "v2" else V1Writer(settings)
