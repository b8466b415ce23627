"""The upstream side's HTTP/1.1 client: keep-alive connection pools.

A proxy's upstream client needs little of a general HTTP client (no cookies, redirects,
auto headers or decompression) and runs on every request, so tunnelguard speaks
HTTP/1.1 itself over asyncio protocols, with httptools (the llhttp parser that uvicorn
and aiohttp also use) reading responses (`connection`).  Profiles put aiohttp's
ClientSession machinery at a third of the proxy's CPU per request; this module and
`connection` are what replace it (WebSocket handshakes still use aiohttp's client, see
`websocket`).

`Pool.send` writes one request and returns once the response head is in, as a
`connection.Response`; failures are `connection.ClientFailure`s.  Idle pooled connections
are closed after `IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from yarl import URL

from proxy.upstream.connection import (
    ConnectFailed,
    Connection,
    ConnectTimeout,
    Disconnected,
    Endpoint,
    Response,
)
from proxy.wire.headers import authority

# Idle pooled connections are dropped after 4 s: below the 5 s idle timeout of Node.js
# servers (and most others), so we rarely reuse one the upstream is closing.
IDLE_TIMEOUT = 4.0
MAX_IDLE_PER_ENDPOINT = 128  # more idle connections than this are closed, not pooled
# How long a request with `Expect: 100-continue` waits for the upstream's 100 (or final
# answer) before its body is sent anyway: an HTTP/1.0 upstream never sends a 100 (RFC
# 9110 10.1.1); curl waits 1 s too.
CONTINUE_TIMEOUT = 1.0
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # methods that get `Content-Length: 0`


@functools.lru_cache(maxsize=256)
def endpoint(base_url: str) -> Endpoint:
    """Parse an upstream base URL once (cached: it is the same for every request)."""
    url = URL(base_url)
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    return Endpoint(url.scheme, host, port, authority(url), url.raw_path.rstrip("/"))


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # system CAs, hostname checks (as aiohttp's default)


class Pool:
    """Keep-alive connections per upstream endpoint, shared by all routes."""

    def __init__(self) -> None:
        self._idle: dict[Endpoint, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def send(
        self,
        base_url: str,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        length: int | None,
        connect_timeout: float,
        head_timeout: float,
        on_continue: Callable[[], Awaitable[None]] | None = None,
    ) -> Response:
        """Send one request and return its response once the head is in.

        `target` is the path and query as the client sent them (appended to the base
        URL's path).  `body` bytes are sent with their length; an iterator with
        `length` (the client's Content-Length) or else chunked.

        `on_continue` set (the client sent `Expect: 100-continue`): the expectation goes
        upstream, and the body is sent only once the upstream answers 100 (or stays
        silent for CONTINUE_TIMEOUT), after `on_continue` has told the client to send it.
        A final answer that comes first is returned and the body is never read: the
        upstream refused it early (RFC 9110 10.1.1)."""
        key = endpoint(base_url)
        conn = self._reuse(key) or await self._connect(key, connect_timeout)
        head = conn.begin(method == "HEAD")
        lines = [f"{method} {key.prefix}{target} HTTP/1.1\r\n"]
        has_host = False
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length" or lower == "transfer-encoding":
                continue  # framing is ours (below)
            if lower == "host":
                has_host = True
            lines.append(f"{name}: {value}\r\n")
        if not has_host:
            lines.append(f"Host: {key.authority}\r\n")
        if on_continue is not None:
            lines.append("Expect: 100-continue\r\n")
        streamed = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif streamed:
            lines.append(
                f"Content-Length: {length}\r\n" if length is not None
                else "Transfer-Encoding: chunked\r\n"
            )  # fmt: skip
        elif method in _WITH_BODY:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1")  # header text came in as latin-1
        try:
            if isinstance(body, bytes):
                conn.write(data + body)  # one write, one packet for small requests
            else:
                conn.write(data)
            if streamed and on_continue is not None and not await _go_ahead(conn, head):
                conn.spoiled = True  # the upstream may still wait for the body
                return await conn.head_within(head, head_timeout)
            if on_continue is not None:
                await on_continue()
            if streamed:
                assert body is not None and not isinstance(body, bytes)
                writer = asyncio.ensure_future(_write_body(conn, body, chunked=length is None))
                try:
                    await asyncio.wait((writer, head), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not writer.done():
                        conn.spoiled = True
                        writer.cancel()  # the upstream answered before the body ended
                sent = writer.done() and not writer.cancelled()
                if sent and writer.exception() is not None and not head.done():
                    conn.abort()
                    raise Disconnected("sending the request body failed")
            return await conn.head_within(head, head_timeout)
        except BaseException:
            conn.abort()
            raise

    def _reuse(self, key: Endpoint) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        fresh = time.monotonic() - IDLE_TIMEOUT
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > fresh:
                return conn
            conn.close()
        return None

    async def _connect(self, key: Endpoint, seconds: float) -> Connection:
        loop = asyncio.get_running_loop()
        tls = _tls_context() if key.tls else None
        try:
            async with asyncio.timeout(seconds):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, key),
                    key.host,
                    key.port,
                    ssl=tls,
                    server_hostname=key.host if tls is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {key.authority} timed out") from exc
        except OSError as exc:  # refused, unreachable, DNS (socket.gaierror), TLS (SSLError)
            raise ConnectFailed(exc) from exc
        self._open.add(conn)
        return conn

    def park(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than IDLE_TIMEOUT (checked every second)."""
        self._sweeper = None
        stale = time.monotonic() - IDLE_TIMEOUT
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since <= stale]:
                idle.remove(conn)
                conn.close()
        if any(self._idle.values()):
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (at shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost


async def _go_ahead(conn: Connection, head: asyncio.Future[Response]) -> bool:
    """After a request head with `Expect: 100-continue`: True to send the body (the
    upstream answered 100, or nothing within CONTINUE_TIMEOUT), False when its final
    answer came first."""
    waiting = conn._continue = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait((waiting, head), timeout=CONTINUE_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        conn._continue = None
        waiting.cancel()
    return not head.done()


async def _write_body(conn: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    async for chunk in body:
        if not chunk:
            continue
        if chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            conn.write(chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")
