"""Building responses to the client: buffered, streamed, or generated (problem+json).

The handler returns an `Answer`.  A buffered one (`body` set) is written by the
connection after the handler returned, head and body in one write; a streamed one was
started on the connection's `Output` while the handler ran (`relay`) and is completed
by the connection after the handler returned (see `Output.finish`): so a client that has
the complete response finds the request counted, even in another process's /metrics
(`Metrics(shared=True)`).  `closing` asks for `Connection: close` (draining, SPEC 6.3).

`head()` is the one serializer of a response head: always an HTTP/1.1 status line
(RFC 9112 2.6: the highest minor version the server supports), the headers in order, then
the framing the connection chose.  Header text is written as UTF-8, which round-trips what
`wire.headers.response_headers` decoded (docs/security.md).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Protocol

from proxy.rules.events import FirstEvent
from proxy.rules.verdict import Delivery, with_retry_after
from proxy.upstream.connection import Response
from proxy.upstream.failures import Failure, UpstreamFailure
from proxy.upstream.forward import iter_body
from proxy.wire import headers as h
from proxy.wire.problem import CONTENT_TYPE, PHRASES, problem_body

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
GENERATED_BY = "tunnelguard"  # `Server` of the answers tunnelguard generates


class Answer:
    """What the handler answers: status, reason (None: the standard phrase), headers
    (without framing), and the whole `body`, or None when it was streamed on the
    connection (`relay`)."""

    __slots__ = ("body", "closing", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: h.Headers,
        body: bytes | None,
        *,
        reason: str | None = None,
        closing: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.closing = closing


class Output(Protocol):
    """The connection's side of a streamed response (`http1.ClientConnection`)."""

    def start(
        self, status: int, reason: str | None, headers: h.Headers, length: int | None, closing: bool
    ) -> None: ...

    async def send(self, chunk: bytes) -> None: ...

    def abort(self) -> None: ...

    async def send_continue(self) -> None: ...


def reason_of(status: int) -> str:
    return PHRASES.get(status, "Unknown")


class _Clock:
    """The `Date` header value, formatted once a second."""

    second = 0
    text = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.text = email.utils.formatdate(now, usegmt=True).encode("ascii")
        return cls.text


def head(status: int, reason: str | None, headers: h.Headers, framing: bytes) -> bytes:
    """A response head: status line, `headers` in order, `Date` when they carry none
    (RFC 9110 6.6.1: a proxy forwarding a response without one adds it), then `framing`
    (Content-Length or Transfer-Encoding, Connection) and the blank line.  A value
    with CR or LF (never from llhttp, which refuses them) would split the head, so it
    raises ValueError instead."""
    lines = [f"HTTP/1.1 {status} {reason or reason_of(status)}\r\n"]
    dated = False
    for name, value in headers:
        if not dated and len(name) == 4 and name.lower() == "date":
            dated = True
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a response header contains CR or LF")
    data = text.encode("utf-8")
    if not dated:
        data += b"Date: " + _Clock.date() + b"\r\n"
    return data + framing + b"\r\n"


def problem(
    status: int,
    error: str,
    detail: str,
    trace_id: str,
    retry_after: int | None = None,
    closing: bool = False,
    extra: h.Headers | None = None,
) -> Answer:
    """A response tunnelguard generates itself (SPEC 6.2): `retryable` is true exactly
    when it carries Retry-After."""
    body = problem_body(status, error, detail, trace_id, retryable=retry_after is not None)
    headers = [
        ("Content-Type", CONTENT_TYPE),
        ("Cache-Control", "no-store"),
        ("Server", GENERATED_BY),  # the proxy answered; no software versions (issue 18 point 4)
    ]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    if extra:
        headers.extend(extra)
    return Answer(status, headers, body, closing=closing)


def buffered(delivery: Delivery, raw: bytes, retry_after: int, closing: bool) -> Answer:
    """An answer with a fully buffered body (the upstream's `raw` unless replaced)."""
    body = raw if delivery.body is None else delivery.body
    headers = with_retry_after(delivery.status, delivery.headers, retry_after)
    return Answer(delivery.status, headers, body, closing=closing)


async def relay(
    out: Output,
    resp: Response,
    delivery: Delivery,
    already: list[bytes],
    retry_after: int,
    closing: bool,
    watch: Callable[[bytes], None] | None = None,
) -> tuple[Answer, Failure | None]:
    """Relay the upstream body as it arrives, after any `already` buffered chunks, with
    `delivery`'s status and headers (the upstream's, or a judged event stream's rewritten
    or flagged head); the connection completes it after the handler returned.  `watch`
    sees every chunk once it was sent (an event stream's later events, SPEC 5.1).

    A failure after the head was sent aborts the client connection: a truncated body
    must never look like a complete one (SPEC 6.1, last row).  The failure is returned
    for counting."""
    status = delivery.status
    reason = resp.reason if status == resp.status else None
    headers = with_retry_after(status, delivery.headers, retry_after)
    answer = Answer(status, headers, None, reason=reason, closing=closing)
    out.start(status, reason, headers, resp.content_length, closing)
    try:
        for chunk in already:
            await out.send(chunk)
            if watch is not None:
                watch(chunk)
        async for chunk in iter_body(resp):
            await out.send(chunk)
            if watch is not None:
                watch(chunk)
    except UpstreamFailure as failed:
        out.abort()
        return answer, failed.failure
    except ConnectionError:
        return answer, None  # the client went away; nothing more to send
    return answer, None


async def read_bounded(resp: Response, limit: int) -> tuple[list[bytes], bool]:
    """Read the body up to `limit` bytes; (chunks, True) when it ended within the limit.
    The bound caps the memory one in-flight response can hold."""
    arrived = resp.take_complete()
    if arrived is not None:  # the usual case for small bodies: no waiting at all
        return arrived, sum(map(len, arrived)) <= limit
    chunks: list[bytes] = []
    size = 0
    async for chunk in iter_body(resp):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return chunks, False
    return chunks, True


async def hold_first_event(resp: Response, finder: FirstEvent, seconds: float) -> list[bytes]:
    """Read an event stream until `finder` has its first event (`finder.event`) or gives
    up at its byte bound (`finder.exhausted`), the stream ends, or `seconds` pass (SPEC 5.1);
    the chunks read, in order, none lost: what was not read yet stays in `resp`.  Raises
    UpstreamFailure when the stream breaks first (nothing was sent yet)."""
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(seconds):
            async for chunk in iter_body(resp):
                chunks.append(chunk)
                if finder.feed(chunk) is not None or finder.exhausted:
                    break
    except TimeoutError:
        pass  # the first event is late: the stream goes on unjudged
    return chunks
