"""One parsed client request, as the handler sees it: the head as the client sent it
(`raw_headers` are the `(name, value)` byte pairs llhttp gave, in order) and the body as a
bounded stream (`Body`).  Built by `http1.ClientConnection` when the head is complete.

`Request` answers the handful of questions the handler asks (`headers.get`, `getall`,
`in`) from a dict built once per request, instead of a multidict; its attribute names are
those of aiohttp's request, so the WebSocket path (served by aiohttp after the hand-off,
`server.ProxyServer`) and this one share the handler.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.downstream.refusals import Refusal
    from proxy.downstream.writers import Output

# A request body is buffered up to this many bytes before reading from the client
# pauses: it bounds the memory one upload holds while the upstream is slower.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024


class HeaderView:
    """Case-insensitive lookups over the raw request headers: lower-case name -> values
    as text (latin-1: every byte kept).  Only what the handler asks for."""

    __slots__ = ("_by_name",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        by_name: dict[str, list[str]] = {}
        for name, value in raw:
            key = name.decode("latin-1").lower()
            values = by_name.get(key)
            if values is None:
                by_name[key] = [value.decode("latin-1")]
            else:
                values.append(value.decode("latin-1"))
        self._by_name = by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def getall(self, name: str, default: tuple[str, ...] = ()) -> list[str] | tuple[str, ...]:
        return self._by_name.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name


class FlowControl(Protocol):
    """The connection's reading, paused while a body's buffer is full."""

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...


class Body:
    """The request body as it arrives, read by one consumer (`readany`, `iter_any`).

    Reading from the client pauses (`flow`, the connection) while more than
    BODY_HIGH_WATER bytes wait here, and resumes below BODY_LOW_WATER.  `fail(exc)` ends
    it with an error (the client hung up, or the framing broke).  A request without a
    body shares `NO_BODY`, which is over from the start."""

    __slots__ = ("_chunks", "_eof", "_error", "_flow", "_paused", "_size", "_waiter", "total_bytes")

    def __init__(self, flow: FlowControl | None, *, eof: bool = False) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = eof
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._flow = flow
        self._paused = False
        self.total_bytes = 0  # received so far

    # -- the connection's side -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER and not self._paused and self._flow is not None:
            self._paused = True
            self._flow.pause_body()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._eof:
            self._error = exc
            self._eof = True
            self._wake()

    def is_eof(self) -> bool:
        return self._eof

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the consumer's side ---------------------------------------------------------------

    async def readany(self) -> bytes:
        """The next bytes received (b"" at the end); raises what `fail` was given."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size < BODY_LOW_WATER and self._flow is not None:
            self._paused = False
            self._flow.resume_body()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.readany()
            if not chunk:
                return
            yield chunk


NO_BODY = Body(None, eof=True)


class Request:
    """A request head as parsed (method, target and version as sent) and its body."""

    __slots__ = (
        "body_exists", "content", "content_length", "headers", "keep_alive", "method", "out",
        "raw_headers", "raw_path", "refusal", "remote", "upgrade", "version",
    )  # fmt: skip

    scheme = "http"  # the proxy listener speaks plain HTTP

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: tuple[int, int],
        raw_headers: list[tuple[bytes, bytes]],
        remote: str | None,
        content: Body,
        *,
        content_length: int | None,
        body_exists: bool,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.headers = HeaderView(raw_headers)
        self.remote = remote
        self.content = content
        self.content_length = content_length
        self.body_exists = body_exists
        self.keep_alive = keep_alive  # the client's wish (RFC 9112 9.3)
        self.upgrade = upgrade  # llhttp stopped at an Upgrade: bytes after it are not HTTP
        self.refusal: Refusal | None = None  # set when the server stopped it mid-body
        self.out: Output | None = None  # where its answer is streamed (the connection)

    @property
    def host(self) -> str:
        return self.headers.get("host") or ""

    def expects_continue(self) -> bool:
        """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""
        return (
            self.version >= (1, 1)
            and (self.headers.get("expect") or "").strip().lower() == "100-continue"
        )


class _HasHeaders(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> _Lookup: ...


class _Lookup(Protocol):
    def get(self, name: str, default: str | None = None) -> str | None: ...

    def getall(self, name: str, default: tuple[str, ...] = ()) -> Sequence[str]: ...


def websocket_requested(request: _HasHeaders) -> bool:
    """A WebSocket opening handshake (RFC 6455 4.1): GET with `Upgrade: websocket` and
    `upgrade` among the `Connection` options.  Any other `Upgrade` (h2c, ...) is not
    supported: such a request is proxied as plain HTTP, without its hop-by-hop headers."""
    if request.method != "GET":
        return False
    if (request.headers.get("upgrade") or "").strip().lower() != "websocket":
        return False
    return any(
        token.strip().lower() == "upgrade"
        for value in request.headers.getall("connection", ())
        for token in value.split(",")
    )
