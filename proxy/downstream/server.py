"""The proxy listener: its client connections (`http1.ClientConnection`), how many may be
open (`max_connections`, through `listener.ConnectionGate`), the hand-off of WebSocket
handshakes to aiohttp's server, and draining.

What the connections refuse before the handler runs they also count and log
(`Accounting`), like the handler would, under the route `(unmatched)`: it was refused
before routing.
"""

from __future__ import annotations

import asyncio
import socket
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy.compat.aiohttp_private import name_the_server
from proxy.config.model import Listen, ServerLimits
from proxy.downstream import refusals, writers
from proxy.downstream.http1 import ClientConnection
from proxy.downstream.listener import Acceptor, ConnectionGate, bind
from proxy.downstream.refusals import Refusal
from proxy.observe.logs import Log
from proxy.observe.metrics import UNMATCHED_ROUTE, Metrics
from proxy.observe.record import Recorder, RequestEnded
from proxy.wire.tracecontext import new_trace_id


class _Requested(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...


# The handler: answers a request (`request.Request`, or aiohttp's for a WebSocket
# handshake) with an `Answer`, or with the WebSocket response it relays on.
Handler = Callable[[Any], Awaitable["writers.Answer | web.StreamResponse"]]


class Accounting:
    """One `RequestEnded` (its requests_total sample and access line) for each request
    the server answers itself; the handler records everything it handles."""

    def __init__(self, metrics: Metrics, log: Log | None) -> None:
        self._recorder = Recorder(metrics, log)
        self._log = log

    def refused(
        self, refusal: Refusal, request: _Requested | None, trace_id: str, seconds: float
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


class ProxyServer:
    """Serves the proxy listener: `start()`, then `stop_accepting()` and `shutdown()`
    when draining.  `closing` (set while draining) closes each connection after its
    current answer."""

    def __init__(self, handler: Handler, *, limits: ServerLimits, accounting: Accounting) -> None:
        self.loop = asyncio.get_running_loop()
        self.handle = handler
        self.limits = limits
        self.accounting = accounting
        self.gate = ConnectionGate(limits.max_connections)
        self.closing = False
        self._connections: set[ClientConnection] = set()
        self._acceptor: Acceptor | None = None
        name_the_server(writers.GENERATED_BY)  # never `Python/3.x aiohttp/3.y` (issue 18 point 4)
        parser_limits: dict[str, Any] = refusals.parser_limits(limits.max_head_bytes)
        self._websockets = web.Server(
            self._upgrade,
            handler_cancellation=True,  # a client that hangs up closes its tunnel
            access_log=None,
            **parser_limits,
        )

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def opened(self, conn: ClientConnection) -> None:
        self._connections.add(conn)
        self.gate.opened()

    def closed(self, conn: ClientConnection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            self.gate.closed()

    async def start(self, listen: Listen, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen (on `sock`, a `--workers N` worker's inherited socket, else bind
        `listen`); accept while the gate has room (SPEC 4.7: the rest wait in the
        listen backlog).  Returns the bound address."""
        sockets = [sock] if sock is not None else await bind(listen, backlog=1024)
        self._acceptor = Acceptor(sockets, self, self.gate)
        address = sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def stop_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()

    async def shutdown(self, grace: float) -> None:
        """Close every connection: idle ones now, busy ones after their handlers were
        cancelled and had `grace` seconds to unwind; then the WebSocket tunnels."""
        self.closing = True
        self.stop_accepting()
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
        for conn in list(self._connections):
            conn.close_idle()
        busy = [conn for conn in self._connections if conn.handler_task is not None]
        tasks = [conn.handler_task for conn in busy if conn.handler_task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self._connections):
            conn.abort()
        await self._websockets.shutdown(grace)

    # -- WebSocket handshakes ---------------------------------------------------------------

    def hand_off(self, conn: ClientConnection, transport: asyncio.Transport, data: bytes) -> None:
        """A WebSocket handshake: aiohttp's server takes the connection from here (its
        WebSocket implementation relays the tunnel, `proxy.websocket`).  The connection
        stays counted until aiohttp's protocol loses it."""
        self._connections.discard(conn)
        protocol = _HandedOff(self._websockets, self.gate, loop=self.loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        transport.resume_reading()
        protocol.data_received(data)

    async def _upgrade(self, request: web.BaseRequest) -> web.StreamResponse:
        answer = await self.handle(request)
        if isinstance(answer, web.StreamResponse):
            return answer
        return _closing_response(answer)


def _closing_response(answer: writers.Answer) -> web.Response:
    """An `Answer` as aiohttp's response, closing the connection: a handed-off connection
    serves one request, its WebSocket handshake."""
    response = web.Response(status=answer.status, reason=answer.reason, body=answer.body)
    for name, value in answer.headers:
        response.headers.add(name, value)
    response.force_close()
    return response


class _HandedOff(RequestHandler):
    """aiohttp's connection protocol for a WebSocket handshake; it keeps the gate's
    count of the connection until it is lost."""

    def __init__(self, server: web.Server, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._gate: ConnectionGate | None = gate

    def connection_lost(self, exc: BaseException | None) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.closed()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A handshake that failed in aiohttp (rare: llhttp accepted the head first),
        in problem+json, never quoting the exception."""
        refusal = refusals.INTERNAL if status >= 500 else refusals.MALFORMED
        answer = writers.problem(refusal.status, refusal.error, refusal.detail, new_trace_id())
        return _closing_response(answer)
