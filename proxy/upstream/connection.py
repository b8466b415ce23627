"""One upstream HTTP/1.1 connection: the llhttp (httptools) response parser, the
`Response` it produces, and the failures it raises.  `pool.Pool` opens, reuses and closes
these connections.

A `Connection` carries one request at a time: `begin` returns the future of the response
head; the `Response` then yields its body as it arrives, with flow control (reading from
the upstream pauses while `HIGH_WATER` bytes wait for the client).  Failures are this
module's exceptions, which `failures.failure_of` maps onto the failure table:

- `ConnectFailed(cause)`: no connection (refused, DNS, TLS); `cause` says which;
- `ConnectTimeout`, `HeadTimeout`: the connect or the wait for the head took too long;
- `Disconnected`: the upstream closed or reset the connection before the response ended;
- `MalformedResponse`: the bytes are not an HTTP/1.1 response llhttp accepts.

A connection goes back to its pool only after a response that ended cleanly with
keep-alive; one whose response was abandoned, timed out, or answered a HEAD is closed.

Fast path (llhttp callbacks, the four looked-up header values kept as they arrive).  The
plain rule is RFC 9112 framing as llhttp parses it: tests/upstream/test_connection.py holds
the head limits at the protocol level; tests/upstream/test_failures.py and
tests/system/test_fuzz.py hold every malformed, split or cut response to the failure table.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from proxy.wire.deadline import Deadline

# An upstream's response head is bounded like a client's request head: one header line
# over MAX_FIELD bytes (aiohttp's and nginx's usual 8 KiB) or a head over MAX_HEAD bytes
# is a malformed response (502), never buffered without end.
MAX_FIELD = 8190
MAX_HEAD = 64 * 1024
HIGH_WATER = 128 * 1024  # body bytes buffered before reading from the upstream pauses (as aiohttp)
LOW_WATER = 32 * 1024

# control bytes other than HTAB: no client may receive them in a header (RFC 9110 5.5).
# llhttp refuses them in header values itself, so only the reason phrase is searched.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The response headers looked up on every response (framing, inspection): kept by lower-case
# name as they arrive, so a lookup is one dict access instead of a pass over all headers.
_LOOKED_UP = frozenset(
    {b"content-length", b"content-type", b"content-encoding", b"transfer-encoding"}
)
_LOOKED_UP_SIZES = frozenset(len(name) for name in _LOOKED_UP)


class ClientFailure(Exception):
    """Base of everything `pool.Pool.send` and `Response.iter_any` raise."""


class ConnectFailed(ClientFailure):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class ConnectTimeout(ClientFailure):
    pass


class HeadTimeout(ClientFailure):
    pass


class Disconnected(ClientFailure):
    pass


class MalformedResponse(ClientFailure):
    pass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an upstream URL points: the pool key and what a request needs."""

    scheme: str
    host: str  # without brackets
    port: int
    authority: str  # for Host when the client sent none
    prefix: str  # the URL's path, without a trailing slash

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


class Parking(Protocol):
    """What a connection needs of its pool (`pool.Pool`)."""

    def park(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class Response:
    """One upstream response: the head, then the body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_first",
        "_size",
        "_waiter",
        "content_length",
        "control_bytes",
        "raw_headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        raw_headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        control_bytes: bool,
        first: dict[bytes, bytes],  # the first value of each _LOOKED_UP header, by lower name
    ) -> None:
        self._conn: Connection | None = conn
        self._first = first
        self.control_bytes = control_bytes  # in the reason phrase or a header value
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers
        self.content_length = content_length
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._error: ClientFailure | None = None
        self._waiter: asyncio.Future[None] | None = None

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), decoded as latin-1."""
        if name in _LOOKED_UP:
            found = self._first.get(name)
            return None if found is None else found.decode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def is_eof(self) -> bool:
        """The whole body has been read (and handed out)."""
        return self._done and not self._chunks

    def take_complete(self) -> list[bytes] | None:
        """The whole body if it has already arrived (small bodies come with the head),
        else None and nothing is taken."""
        if not self._done or self._error is not None:
            return None
        chunks = list(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._conn is not None:
            self._conn.resume()  # a large body may have paused reading on its way in
        return chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; raises `ClientFailure` if it cannot end."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size <= LOW_WATER and self._conn is not None:
                    self._conn.resume()
                yield chunk
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Done with this response: its connection goes back to the pool if the body was
        read to the end, else it is closed (unread bytes would poison the next reader)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(self.is_eof())

    close = release  # an unread body closes the connection either way

    # -- fed by the connection --------------------------------------------------------------

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _end(self, error: ClientFailure | None = None) -> None:
        if not self._done and self._error is None:
            if error is None:
                self._done = True
            else:
                self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One upstream connection, with its response parser."""

    def __init__(self, pool: Parking, key: Endpoint) -> None:
        self.pool = pool
        self.key = key
        # made inside the loop (create_connection); kept, since asking the running loop
        # costs a getpid system call per call (the CPython 3.11 fork check)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._first: dict[bytes, bytes] = {}  # see _LOOKED_UP
        self._reason = bytearray()
        self._head_bytes = 0  # received while waiting for the head
        self._head_size = 0  # header bytes of the response being parsed
        self._skip_body = False  # the response to a HEAD has no body
        self.spoiled = False  # the request was not sent whole: never reuse
        self._complete = False  # the current response ended cleanly
        self._reusable = False
        self._paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._continue: asyncio.Future[None] | None = None  # the upstream's 100
        self._deadline: Deadline | None = None  # of the response head (`head_within`)

    # -- a request ---------------------------------------------------------------------------

    def begin(self, head_only: bool) -> asyncio.Future[Response]:
        self._skip_body = head_only
        self._complete = self._reusable = self.spoiled = False
        self._response = None
        self._head_bytes = 0
        self._head = self._loop.create_future()
        return self._head

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise Disconnected("upstream connection closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise Disconnected("upstream connection closed")
        if self._write_paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def finished(self, body_read: bool) -> None:
        """The response was handed back: pool the connection or close it."""
        self._response = None
        if body_read and self._complete and self._reusable and not self.spoiled and not self.closed:
            self.resume()  # a pooled connection must read its next response
            self.pool.park(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop_deadline()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_deadline()
        if self.transport is not None:
            self.transport.abort()

    async def head_within(self, head: asyncio.Future[Response], seconds: float) -> Response:
        """Wait for the response head at most `seconds` after the request was sent."""
        if head.done():
            return head.result()
        deadline = self._deadline
        if deadline is None:
            deadline = self._deadline = Deadline(self._loop, self._head_timeout)
        deadline.set(deadline.now() + seconds)
        try:
            return await head
        finally:
            deadline.clear()

    def _head_timeout(self) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(HeadTimeout("no response head in time"))

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._response is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        pending = self._head is not None
        if pending:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            # a callback's own failure arrives wrapped in HttpParserCallbackError
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ClientFailure) else MalformedResponse(str(exc)))
        else:
            # still no complete head: what llhttp holds of a header line is bounded here
            # (bytes that came with a complete head are body, not head)
            if pending and self._head is not None and self._head_bytes > MAX_HEAD:
                self._fail(MalformedResponse("response head too large"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        response = self._response
        if response is not None and not self._complete and self._until_eof(response):
            # no Content-Length and not chunked: the body ends with the connection
            self._complete = True
            response._end()
        else:
            self._fail(Disconnected("upstream closed the connection"))
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_exception(Disconnected("upstream closed the connection"))
        self._stop_deadline()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._first = {}
        self._head_size = 0
        self._reason.clear()

    def on_status(self, status: bytes) -> None:
        self._reason += status
        if len(self._reason) > MAX_FIELD:
            raise MalformedResponse("status line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > MAX_FIELD:
            raise MalformedResponse(f"a response header line over {MAX_FIELD} bytes")
        self._head_size += size + 4
        if self._head_size > MAX_HEAD:
            raise MalformedResponse(f"a response head over {MAX_HEAD} bytes")
        self._headers.append((name, value))
        if len(name) in _LOOKED_UP_SIZES:
            lower = name.lower()
            if lower in _LOOKED_UP and lower not in self._first:
                self._first[lower] = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            waiting = self._continue
            if status == 100 and waiting is not None and not waiting.done():
                waiting.set_result(None)  # the upstream wants the body
            return  # informational (100, 103): the final response follows
        head = self._head
        if head is None or head.done():
            raise MalformedResponse("a second response to one request")
        declared = self._first.get(b"content-length")
        length = None if declared is None else int(declared)  # llhttp checked: one number
        reason = self._reason.decode("latin-1")
        control = _CTL.search(self._reason) is not None
        response = Response(self, status, reason, self._headers, length, control, self._first)
        self._response = response
        self._head = None
        if self._skip_body or status in (204, 304):
            # no body, whatever the headers say; after a HEAD llhttp would wait for the
            # announced bytes, so that connection is not reused
            self._complete = True
            self._reusable = not self._skip_body and self._parser.should_keep_alive()
            response._end()
        head.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None and not self._complete:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return  # an informational response ended
        if not self._complete:
            self._complete = True
            self._reusable = self._parser.should_keep_alive()
            response._end()

    # -- internals -------------------------------------------------------------------------

    def _until_eof(self, response: Response) -> bool:
        if response.content_length is not None:
            return False
        coding = response.header(b"transfer-encoding")
        return coding is None or coding.strip().lower() != "chunked"

    def _fail(self, error: ClientFailure) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
            head.exception()  # retrieved: a caller that timed out no longer awaits it
        self._head = None
        response = self._response
        if response is not None and not self._complete:
            response._end(error)
        self.abort()
