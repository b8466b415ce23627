"""THE table that maps an upstream failure to an answer (SPEC 6.1).

`FAILURES` is the one place where "what happened upstream" becomes a status,
a `Proxy-Status` error and a metric kind (SPEC 6.1).  `failure_of` maps the exceptions
of `connection` (HTTP requests) and of aiohttp's client (WebSocket handshakes) onto it,
most specific first: aiohttp's timeout errors are also `asyncio.TimeoutError`, and a
deadline of ours arrives as a bare `TimeoutError`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

import aiohttp

from proxy.upstream import connection

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


def failure_of(exc: BaseException) -> Failure:
    """Map an exception raised while waiting for the response head to its table row:
    `connection`'s (the HTTP path) or aiohttp's (WebSocket handshakes)."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    if isinstance(exc, connection.ClientFailure):
        return _client_failure(exc)
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


def _client_failure(exc: connection.ClientFailure) -> Failure:
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
