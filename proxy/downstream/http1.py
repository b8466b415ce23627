"""The proxy's client connections: an HTTP/1.1 server protocol on llhttp (httptools).

Modelled on uvicorn's httptools protocol (state grouped by lifetime, flow control by
reason), with tunnelguard's client-side limits (SPEC 4.7) and framing rules (SPEC 7,
RFC 9112) enforced as the bytes arrive:

- one `ClientConnection` per client; requests are answered in order: heads parsed while
  one is being handled wait in `_pending` (reading pauses meanwhile), and so does a
  refusal of bytes that follow them (every earlier request still gets its answer);
- the head deadline (`header_timeout`) runs from the connection's start, and on a
  kept-alive connection from the first byte of the next head (until then
  `keepalive_timeout` applies); while a head is incomplete its bytes count against
  `max_head_bytes`, so a client cannot make the parser hold more than that;
- a request body streams to the handler through `request.Body`, which pauses reading
  above its high-water mark; `max_request_body` and broken chunk framing stop it
  mid-stream: the handler is cancelled (aborting the upstream request) and, if no
  answer has started, the refusal is written once the handler has unwound (and counted);
- a response is written as the handler returns: a buffered one as one write (head and
  body), a streamed one chunk by chunk with backpressure (`send` waits while the
  transport's buffer is full), completed after the handler returned;
- a connection that must close after its answer is closed lingering: FIN after the
  answer, then input is read away for LINGER seconds, so unread request bytes never make
  the kernel reset the connection before the client read the answer;
- a WebSocket upgrade is handed to aiohttp's server (`server.ProxyServer.hand_off`).

The plain model of the limits is tests/downstream/test_http1.py's table of byte-exact
exchanges; the hardening tests (smuggling, slowloris, request fuzzing) run against it.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httptools

from proxy.config.model import ServerLimits
from proxy.downstream import refusals, writers
from proxy.downstream.refusals import Refusal
from proxy.downstream.request import NO_BODY, Body, Request, websocket_requested
from proxy.wire import headers as h
from proxy.wire.deadline import Deadline
from proxy.wire.tracecontext import new_trace_id, trace_context_of

# Why reading from the client is paused (reading resumes when no reason is left)
_PIPELINE = 1  # a parsed request waits for the one being answered
_BODY = 2  # the request body buffer is full
_HANDOFF = 4  # an upgrade waits for its turn to be handed off

# Response body framing
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)

# `max_head_bytes: 0` (no limit of the operator's): the head is still bounded by this, so
# that what the parser holds of a head stays bounded.
HEAD_CEILING = 1 << 20
# At most this many parsed requests wait behind the one being answered; bytes after them are
# held unparsed (and reading pauses) until the queue has room.  llhttp parses all it is given,
# so a read is fed in slices of FEED_SLICE bytes: one 256 KiB read of tiny pipelined
# requests would otherwise queue ~14,000 of them at once.
PIPELINE_DEPTH = 32
FEED_SLICE = 16 * 1024
LINGER = 2.0  # seconds input is read away after a closing answer (see module docstring)
# After an answer, up to this many body bytes a handler did not read are read away to
# keep the connection; a longer remainder closes it instead.
DISCARD_LIMIT = 64 * 1024

# An extension method (RFC 9110 9.1: a token) at the start of a read, before its target
_EXTENSION_METHOD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}) ")
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}  # the versions served (else 505)
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


class Listener(Protocol):
    """What a connection needs of the listener that accepted it (`server.ProxyServer`)."""

    loop: asyncio.AbstractEventLoop
    limits: ServerLimits
    closing: bool

    @property
    def handle(self) -> Callable[[Request], Awaitable[Any]]: ...

    @property
    def accounting(self) -> Accountant: ...

    def opened(self, conn: ClientConnection) -> None: ...

    def closed(self, conn: ClientConnection) -> None: ...

    def hand_off(
        self, conn: ClientConnection, transport: asyncio.Transport, data: bytes
    ) -> None: ...


class Accountant(Protocol):
    """How a connection counts what it answers itself (`server.Accounting`)."""

    def refused(
        self, refusal: Refusal, request: Request | None, trace_id: str, seconds: float
    ) -> None: ...

    def failed(self, exc: BaseException | None) -> None: ...


class _Refused:
    """A refusal waiting for its turn in the pipeline."""

    __slots__ = ("refusal", "request")

    def __init__(self, refusal: Refusal, request: Request | None) -> None:
        self.refusal = refusal
        self.request = request


class ClientConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    __slots__ = (
        "_begun", "_body_mode", "_closed", "_current", "_deadline", "_discarding", "_drain",
        "_entered", "_head_bytes", "_head_started", "_headers", "_held", "_in_head", "_keep",
        "_left", "_lingering", "_loop", "_method", "_parser", "_parsing", "_paused", "_pending",
        "_refeed", "_remote", "_server", "_started", "_stopped", "_tail", "_task", "_transport",
        "_upgraded", "_url", "_write_paused",
    )  # fmt: skip

    def __init__(self, server: Listener) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._closed = False
        self._deadline = Deadline(self._loop, self._deadline_passed)
        # the head being parsed
        self._in_head = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_started = 0.0
        # requests: the one whose body is being parsed, parsed ones waiting, the one
        # being answered and its handler
        self._parsing: Request | None = None
        self._discarding = False  # the parsed body is read away (answered already)
        self._pending: deque[Request | _Refused] = deque()
        self._current: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._entered = False  # the handler's task has started running
        self._stopped = False  # nothing more is parsed (a refusal is queued)
        self._upgraded: bytearray | None = None  # bytes after an upgrade head
        self._held = b""  # bytes not parsed yet: the pipeline is full
        self._method: str | None = None  # an extension method llhttp was told was GET
        self._begun = 0  # messages llhttp began (to tell where a refused one started)
        self._refeed: asyncio.Handle | None = None
        # the answer being written
        self._started = False
        self._keep = True
        self._body_mode = _NONE
        self._left = 0
        self._tail = b""
        self._lingering = False
        # flow control
        self._paused = 0
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._server.opened(self)
        self._head_started = self._loop.time()
        self._deadline.set(self._head_started + self._server.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._deadline.cancel()
        self._server.closed(self)
        gone = ConnectionResetError("the client closed the connection")
        parsing = self._parsing
        if parsing is not None:
            parsing.content.fail(gone)
        for entry in self._pending:
            if isinstance(entry, Request):
                entry.content.fail(gone)
        self._pending.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # a client that hangs up cancels its upstream request
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(gone)
            drain.exception()  # retrieved: nobody may be waiting

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None:
            self._drain = None
            if not drain.done():
                drain.set_result(None)

    def pause_body(self) -> None:
        self._pause(_BODY)

    def resume_body(self) -> None:
        self._resume(_BODY)

    def _pause(self, reason: int) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self._transport is not None and not self._closed:
            self._transport.resume_reading()

    # -- bytes in --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._stopped:
            return  # read away: nothing after a refusal is a request
        if self._upgraded is not None:
            self._upgraded += data  # waits for the hand-off
            return
        if self._held:  # behind bytes still waiting for room in the pipeline
            self._held += data
            return
        if self._parsing is None and not self._in_head:
            # bytes that start a head: the head deadline runs from here when idle
            if self._current is None and not self._pending:
                self._head_started = self._loop.time()
                self._deadline.set(self._head_started + self._server.limits.header_timeout)
            self._head_bytes = len(data)
        elif self._in_head:
            self._head_bytes += len(data)
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse `data`, in slices while the pipeline has room (the rest is held)."""
        fresh = self._parsing is None and not self._in_head  # a message starts at data[0]
        begun = self._begun
        size = len(data)
        offset = 0
        while offset < size:
            if offset and len(self._pending) >= PIPELINE_DEPTH:
                self._held = data[offset:]  # fed once the pipeline has room (`_next`)
                self._pause(_PIPELINE)
                return
            piece = data if size <= FEED_SLICE else data[offset : offset + FEED_SLICE]
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade(data[offset + upgrade.args[0] :])
                return
            except httptools.HttpParserInvalidMethodError:
                # only when the refused message is the first of this read (nothing of it
                # was parsed as another message) and was not substituted already
                first = fresh and not offset and self._begun == begun + 1
                extension = _EXTENSION_METHOD.match(data) if first else None
                if extension is None or data.startswith(b"GET "):
                    self._broken()
                    return
                # SPEC 8: an extension method is forwarded.  llhttp knows a fixed table of
                # methods, so the message is parsed as a GET (framing does not depend on
                # a request's method) and keeps its own method (`on_headers_complete`).
                self._method = extension.group(1).decode("ascii")
                self._parser = httptools.HttpRequestParser(self)
                data = b"GET" + data[len(extension.group(1)) :]
                size = len(data)
                begun = self._begun
                continue
            except httptools.HttpParserError:
                self._broken()
                return
            offset += len(piece)
            if self._stopped or self._lingering:
                return  # nothing after a refusal is parsed
        limit = self._server.limits.max_head_bytes or HEAD_CEILING
        if self._in_head and limit < self._head_bytes and not self._stopped:
            self._refuse_later(refusals.HEAD_TOO_LARGE, None)

    def _feed_held(self) -> None:
        self._refeed = None
        held, self._held = self._held, b""
        if held and not self._closed:
            self.data_received(held)

    def _broken(self) -> None:
        """llhttp refused the bytes: a malformed head, or body framing broken mid-body."""
        if self._discarding:  # the answer was given: just end the connection
            self._close()
            return
        parsing = self._parsing
        if parsing is not None:
            self._stop_body(parsing, refusals.MALFORMED)
        elif not self._stopped:
            self._refuse_later(refusals.MALFORMED, None)

    def _upgrade(self, rest: bytes) -> None:
        """llhttp stopped after an Upgrade request (RFC 9110 7.8).  A WebSocket handshake
        is handed off with the bytes after it; any other upgrade is declined: the request
        is answered as plain HTTP and the connection stays HTTP/1.1 (a fresh parser)."""
        last = self._pending[-1] if self._pending else self._current
        if isinstance(last, Request) and last.upgrade and websocket_requested(last):
            self._upgraded = bytearray(rest)
            self._pause(_HANDOFF)
            if last is self._current:  # its turn came already (`_start` waited)
                self._hand_off(last)
            return
        self._parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    # -- llhttp callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._begun += 1
        self._in_head = True
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0  # bytes of the next head count from the next read
        if self._stopped:
            return
        if not self._current and not self._pending:
            self._deadline.clear()
        parser = self._parser
        headers = self._headers
        version = _VERSIONS.get(parser.get_http_version())
        length: int | None = None
        codings: list[str] = []  # Transfer-Encoding lines (llhttp: then the body is chunked)
        for name, value in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)  # llhttp accepts digits only, and one value
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                codings.append(value.decode("latin-1"))
        body_exists = bool(codings) or bool(length)
        method, self._method = self._method, None
        request = Request(
            method or parser.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            version or (0, 9),
            headers,
            self._remote,
            Body(self) if body_exists else NO_BODY,
            content_length=length,
            body_exists=body_exists,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        refusal = self._admission_refusal(request, version, codings)
        if refusal is not None:
            self._refuse_later(refusal, request)
            return
        self._parsing = request
        self._discarding = False
        if self._current is None and not self._pending:
            self._start(request)
        else:
            self._pending.append(request)
            self._pause(_PIPELINE)

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None or self._discarding:
            return
        limit = self._server.limits.max_request_body
        if limit and request.content.total_bytes + len(body) > limit:
            self._stop_body(request, refusals.BODY_TOO_LARGE)
            return
        request.content.feed(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is None:
            return
        self._parsing = None
        request.content.feed_eof()
        if self._discarding:
            self._discarding = False
            self._resume(_BODY)
            self._next()

    # -- admission -------------------------------------------------------------------------

    def _admission_refusal(
        self, request: Request, version: tuple[int, int] | None, codings: list[str]
    ) -> Refusal | None:
        """What the server refuses in a head llhttp accepted, before any handler runs."""
        if version is None:
            return refusals.VERSION_NOT_SUPPORTED
        if codings:
            refusal = refusals.transfer_coding_refusal(version, codings)
            if refusal is not None:
                return refusal
        limits = self._server.limits
        max_head = limits.max_head_bytes or HEAD_CEILING
        if refusals.head_size(request.method, request.raw_path, request.raw_headers) > max_head:
            return refusals.HEAD_TOO_LARGE
        return refusals.declared_body_refusal(request.content_length, limits.max_request_body)

    def _refuse_later(self, refusal: Refusal, request: Request | None) -> None:
        """Answer `refusal` once every request before it has its answer, then close;
        nothing after it is parsed."""
        self._stopped = True
        self._in_head = False
        self._pending.append(_Refused(refusal, request))
        if self._current is None and len(self._pending) == 1:
            self._next()

    def _stop_body(self, request: Request, refusal: Refusal) -> None:
        """A body over `max_request_body`, or its framing broke: nothing more of it is
        forwarded.  Answered in its turn; if it is being handled, its handler is
        cancelled first (aborting the upstream request), unless its answer has started
        (then the connection is closed: it cannot be answered any more)."""
        request.refusal = refusal
        self._stopped = True
        self._parsing = None
        request.content.fail(ConnectionResetError("the request body was refused"))
        if request is not self._current:  # still waiting in the pipeline: replace it
            index = self._pending.index(request)
            self._pending[index] = _Refused(refusal, request)
            return
        task = self._task
        if self._started:
            self._close(abort=True)
        elif task is not None and self._entered:
            task.cancel()  # `_run` answers once the handler has counted it
        elif task is not None:  # the handler never ran: answer (and count) here
            task.cancel()
            self._task = None
            self._write_refusal(refusal, request)

    # -- handling ----------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._current = request
        self._started = False
        if request.upgrade and websocket_requested(request):
            if self._upgraded is not None:
                self._hand_off(request)
            return  # handed off once llhttp says where the bytes after its head begin
        request.out = self
        self._entered = False
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        server = self._server
        self._entered = True
        try:
            answer = await server.handle(request)
            if not isinstance(answer, writers.Answer):  # only a handed-off handshake's is not
                raise TypeError("the handler answered a plain request with a WebSocket")
        except asyncio.CancelledError:
            refusal = request.refusal
            if refusal is not None and not self._closed and not self._started:
                self._write_refusal(refusal, request)
            return
        except Exception as exc:  # the handler failed: log where, answer 500 if we can
            server.accounting.failed(exc)
            if not self._started and not self._closed:
                self._write_refusal(refusals.INTERNAL, request, count=False)
            else:
                self._close(abort=True)
            return
        finally:
            self._task = None
        if self._closed:
            return
        try:
            if answer.body is None:
                self._finish_stream()
            else:
                self._write_buffered(request, answer)
        except Exception as exc:  # a head that cannot be written (writers.head)
            server.accounting.failed(exc)
            self._close(abort=True)
            return
        self._answered(request)

    def _next(self) -> None:
        """Start the next parsed request or refusal, or wait for the next head."""
        self._current = None
        if self._closed or self._lingering:
            return
        if self._held and self._refeed is None:  # room in the pipeline: parse on, later
            # (not from here: `_next` may run inside an llhttp callback)
            self._refeed = self._loop.call_soon(self._feed_held)
        if self._pending:
            entry = self._pending.popleft()
            if isinstance(entry, _Refused):
                self._current = entry.request
                self._write_refusal(entry.refusal, entry.request)
                return
            if not self._pending and not self._held:
                self._resume(_PIPELINE)
            self._start(entry)
            return
        if not self._held:
            self._resume(_PIPELINE)
        limits = self._server.limits
        now = self._loop.time()
        if self._in_head:
            self._deadline.set(now + limits.header_timeout)
        else:
            self._deadline.set(now + limits.keepalive_timeout)

    def _answered(self, request: Request) -> None:
        """The answer is complete: keep the connection for the next request, or close."""
        if not self._keep:
            self._close()
            return
        if not request.content.is_eof() and request is self._parsing:
            self._discarding = True  # read the rest away, then go on (on_message_complete)
            self._resume(_BODY)
            self._deadline.set(self._loop.time() + self._server.limits.header_timeout)
            return
        self._next()

    def _keep_alive(self, request: Request | None, closing: bool) -> bool:
        """Whether this answer keeps the connection (decided when its head is written)."""
        if request is None or closing or request.refusal is not None or self._server.closing:
            return False
        if not request.keep_alive:
            return False
        body = request.content
        if body.is_eof():
            return True
        length = request.content_length  # the rest must be read away to go on
        return length is not None and length - body.total_bytes <= DISCARD_LIMIT

    # -- bytes out ---------------------------------------------------------------------------

    def _connection_header(self, request: Request | None, closing: bool) -> bytes:
        keep = self._keep = self._keep_alive(request, closing)
        if not keep:
            return _CLOSE
        return _KEEP_ALIVE if request is not None and request.version < (1, 1) else b""

    def _write_buffered(self, request: Request, answer: writers.Answer) -> None:
        status = answer.status
        body = answer.body or b""
        framing = self._connection_header(request, answer.closing)
        if status >= 200 and status not in _NO_BODY_STATUSES:
            framing = b"Content-Length: %d\r\n" % len(body) + framing
        if request.method == "HEAD" or status < 200 or status in _NO_BODY_STATUSES:
            body = b""
        self._started = True
        transport = self._transport
        if transport is not None:
            transport.write(writers.head(status, answer.reason, answer.headers, framing) + body)

    def _write_refusal(
        self, refusal: Refusal, request: Request | None, *, count: bool = True
    ) -> None:
        """Answer a refusal (problem+json, SPEC 4.7) and close; counted first, so a
        client that has the answer finds it in /metrics."""
        if request is None:
            trace_id = new_trace_id()
        else:
            trace_id = trace_context_of(request.headers.getall("traceparent"))[0]
        if count:
            seconds = self._loop.time() - self._head_started
            self._server.accounting.refused(refusal, request, trace_id, seconds)
        answer = writers.problem(refusal.status, refusal.error, refusal.detail, trace_id)
        self._stopped = True
        self._keep = False
        if self._transport is not None and not self._closed:
            # whole, even to a HEAD (as the request fuzzer reads it; RFC 9110 9.3.2 omits it)
            head = writers.head(
                refusal.status, None, answer.headers,
                b"Content-Length: %d\r\n" % len(answer.body or b"") + _CLOSE,
            )  # fmt: skip
            self._transport.write(head + (answer.body or b""))
        self._started = True
        self._close()

    # `writers.Output`: the streamed answer of the current request

    def start(
        self, status: int, reason: str | None, headers: h.Headers, length: int | None, closing: bool
    ) -> None:
        request = self._current
        head_only = request is not None and request.method == "HEAD"
        if head_only or status < 200 or status in _NO_BODY_STATUSES:
            mode = _NONE
            framing = b"" if length is None or status < 200 or status == 204 else (
                b"Content-Length: %d\r\n" % length
            )  # fmt: skip
        elif length is not None:
            mode = _LENGTH
            framing = b"Content-Length: %d\r\n" % length
            self._left = length
        elif request is not None and request.version >= (1, 1):
            mode = _CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:  # an HTTP/1.0 client: the end of the body is the end of the connection
            mode = _UNTIL_CLOSE
            framing = b""
            closing = True
        framing += self._connection_header(request, closing)
        self._body_mode = mode
        self._tail = b""
        self._started = True
        if self._transport is not None and not self._closed:
            self._transport.write(writers.head(status, reason, headers, framing))

    async def send(self, chunk: bytes) -> None:
        """Write a body chunk (the last bytes of a Content-Length body are held back
        until the answer completes); waits while the client reads slower than we write."""
        if self._closed:
            raise ConnectionResetError("the client closed the connection")
        mode = self._body_mode
        transport = self._transport
        if mode == _NONE or not chunk or transport is None:
            return
        if mode == _LENGTH:
            self._left -= len(chunk)
            if self._left <= 0:
                self._tail += chunk
                return
            transport.write(chunk)
        elif mode == _CHUNKED:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        if self._write_paused:
            drain = self._drain
            if drain is None:
                drain = self._drain = self._loop.create_future()
            await drain

    def _finish_stream(self) -> None:
        transport = self._transport
        if transport is None:
            return
        mode = self._body_mode
        if mode == _LENGTH and self._tail:
            transport.write(self._tail)
            self._tail = b""
        elif mode == _CHUNKED:
            transport.write(b"0\r\n\r\n")
        elif mode == _UNTIL_CLOSE:
            self._keep = False

    def abort(self) -> None:
        self._close(abort=True)

    async def send_continue(self) -> None:
        if not self._started and self._transport is not None and not self._closed:
            self._transport.write(writers.CONTINUE)

    # -- ending --------------------------------------------------------------------------------

    def _deadline_passed(self) -> None:
        if self._discarding:  # the rest of an answered body never came
            self._close()
            return
        if self._current is not None or self._pending or self._closed:
            return  # busy: only a waiting connection has a deadline
        if self._in_head or self._parsing is not None:
            self._refuse_later(refusals.HEAD_TIMEOUT, None)  # a request began: say why
        else:
            self._close()  # idle: nothing to answer

    def _close(self, *, abort: bool = False) -> None:
        """Close after what was written: FIN, then read input away for LINGER seconds
        (or abort: reset at once, for an answer that cannot be completed)."""
        transport = self._transport
        if transport is None or self._closed:
            return
        if abort:
            transport.abort()
            return
        if self._lingering:
            return
        self._lingering = True
        self._stopped = True
        self._deadline.cancel()
        self._paused = 0
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        return self._task

    def close_idle(self) -> bool:
        """Close now if no request is in progress (draining); True if it was idle."""
        if self._current is None and not self._pending and self._parsing is None:
            self._close()
            return True
        return False

    def _hand_off(self, request: Request) -> None:
        """Give the connection to aiohttp's server for a WebSocket handshake: the head
        as parsed (llhttp accepted it) and every byte after it."""
        rest = bytes(self._upgraded or b"")
        self._upgraded = None
        self._deadline.cancel()
        self._closed = True  # ours no more: aiohttp's protocol owns the transport
        transport = self._transport
        if transport is None:
            return
        lines = [f"{request.method} {request.raw_path} HTTP/1.1\r\n".encode("latin-1")]
        lines.extend(name + b": " + value + b"\r\n" for name, value in request.raw_headers)
        lines.append(b"\r\n")
        self._server.hand_off(self, transport, b"".join(lines) + rest)
