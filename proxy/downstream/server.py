"""The proxy's client connections: client-side limits (SPEC 4.7) and request framing
(SPEC 7, RFC 9112), enforced around the request handler.

- `GuardedProtocol`, aiohttp's connection protocol, enforces `header_timeout` and the
  head's byte count, `max_request_body` on a body as it streams, closes a connection
  whose body framing breaks mid-stream, and answers every parser error in problem+json.
- `GuardedServer` builds those protocols and admits each parsed request (framing, head
  size, declared body) before the handler sees it; its `gate` counts connections for
  `listener.ListenSite` (`max_connections`).

What this layer refuses before the handler runs it also counts and logs (`Accounting`),
like the handler would, under the route `(unmatched)`: it was refused before routing.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy.compat.aiohttp_private import name_the_server, parsed_messages
from proxy.config.model import ServerLimits
from proxy.downstream import refusals, writers
from proxy.downstream.listener import ConnectionGate
from proxy.downstream.refusals import Refusal
from proxy.observe.logs import Log
from proxy.observe.metrics import UNMATCHED_ROUTE, Metrics
from proxy.observe.record import Recorder, RequestEnded
from proxy.wire.deadline import Deadline
from proxy.wire.tracecontext import new_trace_id, trace_context

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# `Server` on a response that has none (aiohttp adds one): no software versions disclosed
SERVER_NAME = "tunnelguard"


class Accounting:
    """One `RequestEnded` (its requests_total sample and access line) for each request
    this layer answers itself; the handler records everything it handles."""

    def __init__(self, metrics: Metrics, log: Log | None) -> None:
        self._recorder = Recorder(metrics, log)
        self._log = log

    def refused(
        self, refusal: Refusal, request: web.BaseRequest | None, trace_id: str, seconds: float
    ) -> None:
        status = refusal.status
        self._recorder.ended(
            RequestEnded(
                route=UNMATCHED_ROUTE,
                method=request.method if request is not None else None,
                # never the query string; nothing at all of a request that did not parse
                path=request.raw_path.split("?", 1)[0] if request is not None else None,
                code=status,
                true_code=status,
                source="proxy",
                total_seconds=seconds,
                trace_id=trace_id,
                error=refusal.error,
            )
        )

    def failed(self, exc: BaseException | None) -> None:
        """The handler raised: log where, never the exception's text (it may quote
        request data)."""
        if self._log is None:
            return
        frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
        self._log.event(
            "error",
            message="unhandled exception in the request handler",
            exception=type(exc).__name__,
            at=[f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-5:]],
        )


def trace_id_of(request: web.BaseRequest) -> str:
    """The client's trace id when it sent one valid `traceparent`, else a new one."""
    incoming = request.headers.getall("traceparent", ())
    return trace_context(incoming[0] if len(incoming) == 1 else None)[0]


def admission_refusal(request: web.BaseRequest, limits: ServerLimits) -> Refusal | None:
    """What the server refuses in a request the parser accepted, before any handler
    logic runs: framing llhttp lets through, the head's total size, a body declared (or
    already received) over `max_request_body`."""
    refusal = refusals.transfer_coding_refusal(
        (request.version.major, request.version.minor),
        request.headers.getall("Transfer-Encoding", ()),
    )
    if refusal is not None:
        return refusal
    max_head = limits.max_head_bytes
    if (
        max_head
        and refusals.head_size(request.method, request.raw_path, request.raw_headers) > max_head
    ):
        return refusals.HEAD_TOO_LARGE
    if limits.max_request_body and request.content.total_bytes > limits.max_request_body:
        return refusals.BODY_TOO_LARGE
    return refusals.declared_body_refusal(request.content_length, limits.max_request_body)


def refused_status(request: web.BaseRequest) -> int | None:
    """The status the server layer answered (or is answering) this request with, when
    it stopped the request while the handler ran (a body over `max_request_body`, body
    framing broken mid-stream); the handler is cancelled then, and should count this
    status instead of 499."""
    protocol = request.protocol
    if isinstance(protocol, GuardedProtocol) and protocol.refusal is not None:
        return protocol.refusal.status
    return None


def parser_refusal(exc: HttpProcessingError) -> Refusal:
    """The answer to a request aiohttp's parser (llhttp) refused."""
    if isinstance(exc, LineTooLong) or exc.message.startswith("Too many headers"):
        return refusals.HEAD_TOO_LARGE
    return refusals.MALFORMED


class GuardedServer(web.Server):
    """aiohttp's low-level server with tunnelguard's limits.  `gate` counts the open
    client connections for `ListenSite`."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: ServerLimits,
        accounting: Accounting,
        handler_cancellation: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.update(refusals.parser_limits(limits.max_head_bytes))
        name_the_server(SERVER_NAME)  # never `Python/3.x aiohttp/3.y` (issue 18 point 4)
        super().__init__(self._admit, handler_cancellation=handler_cancellation, **kwargs)
        self._handle = handler
        self._protocol_kwargs = kwargs
        self.limits = limits
        self.accounting = accounting
        self.gate = ConnectionGate(limits.max_connections)

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self, loop=asyncio.get_running_loop(), **self._protocol_kwargs)

    async def _admit(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if not isinstance(protocol, GuardedProtocol):  # pragma: no cover - built by __call__
            return await self._handle(request)
        protocol.request_started(request)
        try:
            refusal = protocol.queued_refusal(request) or admission_refusal(request, self.limits)
            if refusal is not None:
                trace_id = trace_id_of(request)
                self.accounting.refused(refusal, request, trace_id, protocol.head_seconds())
                return _problem(refusal, trace_id)
            try:
                return await self._handle(request)
            except asyncio.CancelledError:
                # cancelled by the protocol to refuse a body mid-stream: answer here, so
                # aiohttp sends it and reads the rest of the body away before closing (a
                # close with unread input resets the connection and can lose the answer)
                refusal = protocol.refusal
                task = asyncio.current_task()
                if refusal is None or not protocol.cancelled_handler or task is None:
                    raise
                if task.uncancel() > 0:  # also cancelled from elsewhere
                    raise
                return _problem(refusal, trace_id_of(request))
        finally:
            protocol.request_finished()


def _problem(refusal: Refusal, trace_id: str) -> web.Response:
    response = writers.problem(
        refusal.status, refusal.error, refusal.detail, trace_id, closing=True
    )
    # said even where implied (aiohttp answers a parser error as HTTP/1.0)
    response.headers["Connection"] = "close"
    return response


class GuardedProtocol(RequestHandler):
    """One client connection.

    The head deadline starts when the connection is accepted, and on a kept-alive
    connection with the first byte of the next request (until then `keepalive_timeout`
    applies); it ends when the parser has the whole head.  While no request is pending,
    every byte received belongs to a head and is counted against `max_head_bytes`, so a
    client cannot make the parser buffer more than that.

    aiohttp has no hook for "a request head was parsed": its count of parsed messages
    (`aiohttp_private.parsed_messages`) is read (only read) for it in `data_received`.
    """

    __slots__ = (
        "_body", "_counted", "_deadline", "_event_loop", "_finished", "_head_bytes",
        "_head_started", "_request", "_server", "_task", "_timeout", "cancelled_handler",
        "refusal",
    )  # fmt: skip

    def __init__(
        self, server: GuardedServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(server, loop=loop, **kwargs)
        self._server = server  # aiohttp drops its own reference when the connection ends
        self._event_loop = loop
        self._timeout = server.limits.header_timeout
        self._deadline = Deadline(loop, self._head_timeout)  # of the head being received
        self._head_bytes = 0
        self._head_started = 0.0
        self._finished = 0  # requests the handler is done with
        self._request: web.BaseRequest | None = None  # the one being handled
        self._body: StreamReader | None = None  # the latest request's body
        self._task: asyncio.Task[Any] | None = None
        self._counted = False
        self.refusal: Refusal | None = None
        self.cancelled_handler = False

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server.gate.opened()
        self._counted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._server.gate.closed()
        self._deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None or not data:
            super().data_received(data)  # a refused body is read away (lingering close)
            return
        idle = self._idle()
        if idle:
            if self._deadline.when is None:
                self._arm_head_timer()
            self._head_bytes += len(data)
        parsed = parsed_messages(self)
        super().data_received(data)
        if parsed_messages(self) != parsed:  # the parser has a whole head (or an error)
            self._cancel_head_timer()
            self._head_bytes = 0
            body = self._body
            if body is not None and not body.is_eof():
                # a message cannot start before the body ends: this is the parser's
                # error entry for broken body framing (e.g. an invalid chunk size)
                self._refuse_framing()
                return
        elif idle and 0 < self._server.limits.max_head_bytes < self._head_bytes:
            self._refuse_head(refusals.HEAD_TOO_LARGE)
            return
        self._check_body()

    def _idle(self) -> bool:
        """No request is pending and its body (if any) is over: bytes start a head."""
        body = self._body
        return parsed_messages(self) == self._finished and (body is None or body.is_eof())

    # -- the handler's side ----------------------------------------------------------------

    def request_started(self, request: web.BaseRequest) -> None:
        self._request = request
        self._body = request.content
        self._task = asyncio.current_task(self._event_loop)  # no getpid, unlike current_task()

    def request_finished(self) -> None:
        self._finished += 1
        self._request = None
        self._task = None

    def queued_refusal(self, request: web.BaseRequest) -> Refusal | None:
        """Body framing that broke before the handler started: the parser's error
        entry is already queued behind this request, whose body will never end."""
        if parsed_messages(self) > self._finished + 1 and not request.content.is_eof():
            return refusals.MALFORMED
        return None

    def _check_body(self) -> None:
        limit = self._server.limits.max_request_body
        request = self._request
        if not limit or request is None or request.content.total_bytes <= limit:
            return
        task = self._task
        self.refusal = refusals.BODY_TOO_LARGE
        if request.writer.output_size == 0 and task is not None and not task.done():
            self.cancelled_handler = True  # GuardedServer._admit answers 413
            task.cancel()
        else:  # the answer has started: only closing can stop it
            self.force_close()

    # -- deadlines and refusals ------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_started = self._event_loop.time()
        self._deadline.set(self._head_started + self._timeout)

    def _cancel_head_timer(self) -> None:
        self._deadline.clear()

    def _head_timeout(self) -> None:
        if self._head_bytes:  # a request began: tell the client why it ends
            self._refuse_head(refusals.HEAD_TIMEOUT)
        else:  # an idle connection: nothing to answer
            self.force_close()

    def head_seconds(self) -> float:
        """Time since the current (or last) request head began."""
        return self._event_loop.time() - self._head_started

    def _refuse_head(self, refusal: Refusal) -> None:
        """A head that never completed: answer on the transport, account, close."""
        self.refusal = refusal
        if self.transport is not None:
            trace_id = new_trace_id()
            # counted first: a client that has the answer finds it in /metrics
            self._server.accounting.refused(refusal, None, trace_id, self.head_seconds())
            self.transport.write(refusals.raw_response(refusal, trace_id))
        self.force_close()

    def _refuse_framing(self) -> None:
        """Body framing broke mid-stream: answer if the handler has not started its
        answer, and close; the handler is cancelled with the connection
        (handler_cancellation), aborting the upstream request, and accounts for it."""
        self.refusal = refusals.MALFORMED
        request = self._request
        if self.transport is not None and request is not None and request.writer.output_size == 0:
            self.transport.write(refusals.raw_response(refusals.MALFORMED, trace_id_of(request)))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a parser error (or a handler that raised), in
        problem+json.  Nothing of the exception's text is logged or sent: it may quote
        the request's bytes, credentials included."""
        if request.writer.output_size > 0:  # as aiohttp: too late to answer
            raise ConnectionError("response already started; cannot answer the error")
        trace_id = new_trace_id()
        if isinstance(exc, HttpProcessingError):
            refusal = parser_refusal(exc)
            self._server.accounting.refused(refusal, None, trace_id, self.head_seconds())
        else:  # the handler raised; it counted the request itself
            refusal = refusals.HANDLER_TIMEOUT if status == 504 else refusals.INTERNAL
            self._server.accounting.failed(exc)
        return _problem(refusal, trace_id)
