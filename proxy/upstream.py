"""Talking to upstreams, and THE table that maps an upstream failure to an answer.

`FAILURES` is the one place where "what happened upstream" becomes a status,
a `Proxy-Status` error and a metric kind (SPEC 6.1).  `classify` maps the exceptions
of `connection` (HTTP requests) and of aiohttp's client (WebSocket handshakes) onto it,
most specific first: aiohttp's timeout errors are also `asyncio.TimeoutError`, and a
deadline of ours arrives as a bare `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import ClientSession
from yarl import URL

from proxy import connection
from proxy.client import Pool
from proxy.config.model import UpstreamConfig
from proxy.connection import Response
from proxy.wire.headers import Headers

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class Failure:
    """One row of the failure table."""

    kind: str  # upstream_failures_total{kind}
    status: int
    error: str  # Proxy-Status error (RFC 9209 section 2.3) and problem `error`
    title: str
    may_have_reached: bool  # the upstream may have acted on the request


FAILURES: dict[str, Failure] = {
    f.error: f
    for f in (
        Failure("connect_error", 502, "connection_refused", "upstream refused the connection",
                False),
        Failure("connect_error", 502, "dns_error", "upstream host name did not resolve", False),
        Failure("connect_error", 502, "tls_protocol_error", "TLS handshake with upstream failed",
                False),
        Failure("connect_timeout", 504, "connection_timeout", "connecting to upstream timed out",
                False),
        Failure("response_timeout", 504, "http_response_timeout",
                "upstream did not answer in time", True),
        Failure("reset", 502, "http_protocol_error",
                "upstream closed the connection before a complete response", True),
        Failure("protocol_error", 502, "http_protocol_error",
                "upstream sent a malformed response", True),
    )
    if f.kind != "protocol_error"
}  # fmt: skip
PROTOCOL_ERROR = Failure(
    "protocol_error", 502, "http_protocol_error", "upstream sent a malformed response", True
)
# Refusals before anything is sent: always retryable, always with Retry-After.
OVERLOADED = Failure(
    "overloaded", 503, "connection_limit_reached",
    "too many requests in flight to this upstream (max_concurrency)", False,
)  # fmt: skip
REFUSED_BY_BREAKER = Failure(
    "circuit_open", 503, "destination_unavailable",
    "the upstream is failing; its circuit breaker is open", False,
)  # fmt: skip


# every upstream_failures_total{kind} the table can produce
FAILURE_KINDS = (
    "connect_error", "connect_timeout", "response_timeout", "reset", "protocol_error",
    "overloaded", "circuit_open",
)  # fmt: skip


class UpstreamFailure(Exception):
    def __init__(self, failure: Failure, cause: BaseException | None = None) -> None:
        super().__init__(failure.title)
        self.failure = failure
        self.cause = cause


def classify(exc: BaseException) -> Failure:
    """Map an exception raised while waiting for the response head to its table row:
    `connection`'s (the HTTP path) or aiohttp's (WebSocket handshakes)."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, connection.ClientFailure):
        return _classify_client(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FAILURES["connection_timeout"]
    if isinstance(exc, TimeoutError):  # our head deadline, or aiohttp's read timeout
        return FAILURES["http_response_timeout"]
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return FAILURES["dns_error"]
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return FAILURES["tls_protocol_error"]
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ssl.SSLError):
            return FAILURES["tls_protocol_error"]
        return FAILURES["connection_refused"]
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return PROTOCOL_ERROR  # unparsable status line or headers, bad framing
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | OSError):
        return FAILURES["http_protocol_error"]
    if isinstance(exc, aiohttp.ClientError):
        return PROTOCOL_ERROR
    raise exc


def _classify_client(exc: connection.ClientFailure) -> Failure:
    if isinstance(exc, connection.ConnectTimeout):
        return FAILURES["connection_timeout"]
    if isinstance(exc, connection.HeadTimeout):
        return FAILURES["http_response_timeout"]
    if isinstance(exc, connection.ConnectFailed):
        if isinstance(exc.cause, socket.gaierror):
            return FAILURES["dns_error"]
        if isinstance(exc.cause, ssl.SSLError | ssl.CertificateError):
            return FAILURES["tls_protocol_error"]
        return FAILURES["connection_refused"]
    if isinstance(exc, connection.MalformedResponse):
        return PROTOCOL_ERROR
    return FAILURES["http_protocol_error"]  # closed or reset before the response ended


def is_retry_safe(method: str, has_idempotency_key: bool) -> bool:
    """RFC 9110 9.2.2: idempotent methods, or a request the client keyed."""
    return method in IDEMPOTENT or has_idempotency_key


def new_session() -> ClientSession:
    """The aiohttp client session for WebSocket handshakes (HTTP requests use `client`)."""
    # Idle pooled connections are dropped after 4 s: below the 5 s idle timeout of
    # Node.js servers (and most others), so we rarely reuse one the upstream is closing.
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=10, keepalive_timeout=4.0
    )
    session = ClientSession(
        connector=connector,
        auto_decompress=False,  # clients get the upstream's bytes, compressed or not
        cookie_jar=aiohttp.DummyCookieJar(),  # never store or add cookies
        timeout=aiohttp.ClientTimeout(total=None),
        # a transparent proxy invents no headers: the client's own go upstream, if any
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )
    # aiohttp silently re-sends an idempotent request once when a pooled connection
    # drops before the response head.  Every attempt must be ours: counted, budgeted
    # and bounded by retry.attempts (SPEC 6.3).  No public switch exists (aiohttp
    # issue 10790); aiohttp's own TestClient sets the same attribute.
    session._retry_connection = False
    return session


@dataclass(slots=True)
class Attempt:
    response: Response
    head_seconds: float  # from start to response head


async def send(
    pool: Pool,
    upstream: UpstreamConfig,
    method: str,
    base_url: str,
    target: str,
    headers: Headers,
    body: RequestBody,
    on_continue: Callable[[], Awaitable[None]] | None = None,
) -> Attempt:
    """Send one request and wait for the response head; raise UpstreamFailure.

    `timeouts.connect` bounds the TCP (and TLS) connect; `timeouts.response` the wait
    between the request being fully sent and the response head arriving.  Once the
    head is here a body may pause as long as it likes (event streams, long polls)."""
    started = time.perf_counter()
    timeouts = upstream.timeouts
    try:
        response = await pool.send(
            base_url,
            method,
            target,
            headers,
            body.payload(),
            length=body.length,
            connect_timeout=timeouts.connect,
            head_timeout=timeouts.response,
            on_continue=on_continue,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise UpstreamFailure(classify(exc), exc) from exc
    return Attempt(response, time.perf_counter() - started)


def malformed_head(response: Response) -> bool:
    """A response head we must not pass on (SPEC 7: answer 502 instead): a status outside
    100-599 (RFC 9110 15), a 101 to a request that asked for no upgrade, a transfer coding
    other than chunked (its bytes would reach the client undecoded), or control bytes in
    the reason phrase (RFC 9110 5.5) that no client may receive (in a header value llhttp
    refuses them: `connection.MalformedResponse`, the same 502)."""
    if not 100 <= response.status <= 599 or response.status == 101:
        return True
    if response.control_bytes:
        return True
    coding = response.header(b"transfer-encoding")
    return coding is not None and coding.strip().lower() != "chunked"


async def iter_body(response: Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; a failure mid-body raises UpstreamFailure."""
    try:
        async for chunk in response.iter_any():
            yield chunk
    except connection.ClientFailure as exc:
        # After the head, an incomplete body means the connection closed or reset.
        raise UpstreamFailure(FAILURES["http_protocol_error"], exc) from exc


def target_url(base: str, raw_path: str) -> URL:
    """The upstream URL for a request target, bytes as the client sent them.

    `base` is the upstream URL without a trailing slash; its path is a prefix."""
    return URL(base + raw_path, encoded=True)


class RequestBody:
    """The client's request body as sent upstream.

    Bodies up to `replay_limit` are read whole so a retry can send them again
    (SPEC 6.3); larger ones stream through and can only be retried when the failed
    attempt never started reading them (a connect failure).  `length` is the client's
    Content-Length for a streamed body (None: it is sent chunked)."""

    __slots__ = ("_data", "_prefix", "_stream", "length", "touched")

    def __init__(
        self,
        data: bytes | None,
        stream: aiohttp.StreamReader | None = None,
        prefix: bytes = b"",
        length: int | None = None,
    ) -> None:
        self._data = data
        self._stream = stream
        self._prefix = prefix
        self.length = length
        self.touched = False

    @property
    def replayable(self) -> bool:
        return self._stream is None

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What one attempt sends."""
        if self._stream is None:
            return self._data
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        self.touched = True
        if self._prefix:
            yield self._prefix
        stream = self._stream
        if stream is not None:
            async for chunk in stream.iter_any():
                yield chunk

    @classmethod
    async def read(
        cls, stream: aiohttp.StreamReader, length: int | None, replay_limit: int
    ) -> RequestBody:
        """Buffer up to `replay_limit` bytes of `stream`, or stream it."""
        if length is not None and length > replay_limit:
            return cls(None, stream, length=length)
        parts: list[bytes] = []
        size = 0
        while size <= replay_limit:
            chunk = await stream.readany()
            if not chunk:
                return cls(b"".join(parts))
            parts.append(chunk)
            size += len(chunk)
        return cls(None, stream, b"".join(parts))
