"""Forwarding one request upstream: send it and wait for the response head (`send`), read
the body as it arrives (`iter_body`), and the request body kept for a replay
(`RequestBody`).  Failures are raised as `UpstreamFailure`, mapped by `failures`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import ClientSession
from yarl import URL

from proxy.compat.aiohttp_private import no_silent_retry
from proxy.config.model import UpstreamConfig
from proxy.upstream import connection
from proxy.upstream.connection import Response
from proxy.upstream.failures import FAILURES, UpstreamFailure, failure_of
from proxy.upstream.pool import Pool
from proxy.wire.headers import Headers


def new_session() -> ClientSession:
    """The aiohttp client session for WebSocket handshakes (HTTP requests use `pool`)."""
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
    no_silent_retry(session)  # every attempt is ours (SPEC 6.3)
    return session


@dataclass(slots=True)
class Sent:
    """A request sent and its response head received."""

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
) -> Sent:
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
        raise UpstreamFailure(failure_of(exc), exc) from exc
    return Sent(response, time.perf_counter() - started)


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


class BodyStream(Protocol):
    """The client's body as the server receives it (`downstream.request.Body`)."""

    def iter_any(self) -> AsyncIterator[bytes]: ...

    async def readany(self) -> bytes: ...


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
        stream: BodyStream | None = None,
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
    async def read(cls, stream: BodyStream, length: int | None, replay_limit: int) -> RequestBody:
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
