"""Writing responses to the client: buffered, streamed, or generated (problem+json).

Every writer tolerates a client that went away (ConnectionError): aiohttp sees the
closed transport and stops.  `closing` marks responses sent while draining
(`Connection: close`, SPEC 6.3).
"""

from __future__ import annotations

from aiohttp import HttpVersion11, hdrs, web
from multidict import CIMultiDict

from proxy.rules.verdict import Delivery, with_retry_after
from proxy.upstream.connection import Response
from proxy.upstream.failures import Failure, UpstreamFailure
from proxy.upstream.forward import iter_body
from proxy.wire import headers as h
from proxy.wire.problem import CONTENT_TYPE, problem_body


def start(
    status: int, reason: str | None, headers: h.Headers, retry_after: int, closing: bool
) -> Relayed:
    response = Relayed(
        status=status,
        reason=reason,
        headers=CIMultiDict(with_retry_after(status, headers, retry_after)),
    )
    if closing:
        response.force_close()
    return response


def problem(
    status: int,
    error: str,
    detail: str,
    trace_id: str,
    retry_after: int | None = None,
    closing: bool = False,
) -> web.Response:
    """A response tunnelguard generates itself (SPEC 6.2): `retryable` is true exactly
    when it carries Retry-After."""
    body = problem_body(status, error, detail, trace_id, retryable=retry_after is not None)
    response = web.Response(status=status, body=body, content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if closing:
        response.force_close()
    return response


def buffered(delivery: Delivery, raw: bytes, retry_after: int, closing: bool) -> web.Response:
    """An answer with a fully buffered body (the upstream's `raw` unless replaced).
    Returned to aiohttp, which writes head and body in one write (one system call, one
    packet) once the handler has returned."""
    body = raw if delivery.body is None else delivery.body
    headers = with_retry_after(delivery.status, delivery.headers, retry_after)
    response = web.Response(body=body, status=delivery.status, headers=headers)  # one copy
    if closing:
        response.force_close()
    return response


class Relayed(web.StreamResponse):
    """A streamed response that completes only when aiohttp calls `write_eof`, once the
    handler has returned and counted the request: the chunked terminator, or with a
    Content-Length the last body bytes (`tail`), wait until then.  So a client that has
    the complete response finds it counted, even in another process's /metrics
    (`Metrics(shared=True)`)."""

    tail = b""  # the body's last bytes, held back
    left: int | None = None  # body bytes still to come, with a Content-Length

    async def send(self, chunk: bytes) -> None:
        """Write a body chunk, or keep it as the `tail` when it ends the body."""
        left = self.left
        if left is not None:
            left = self.left = left - len(chunk)
            if left <= 0:
                self.tail += chunk
                return
        await self.write(chunk)

    async def write_eof(self, data: bytes = b"") -> None:
        tail = self.tail
        if tail:
            self.tail = b""
            data = tail + data
        await super().write_eof(data)


async def relay(
    request: web.BaseRequest,
    resp: Response,
    headers: h.Headers,
    already: list[bytes],
    retry_after: int,
    closing: bool,
) -> tuple[Relayed, Failure | None]:
    """Relay the upstream body as it arrives, after any `already` buffered chunks; the
    response is completed by aiohttp after the handler returns (see `Relayed`).

    A failure after the head was sent aborts the client connection: a truncated body
    must never look like a complete one (SPEC 6.1, last row).  The failure is returned
    for counting."""
    response = start(resp.status, resp.reason, headers, retry_after, closing)
    if resp.content_length is not None:
        response.content_length = response.left = resp.content_length
    try:
        await response.prepare(request)
        for chunk in already:
            await response.send(chunk)
        async for chunk in iter_body(resp):
            await response.send(chunk)
    except UpstreamFailure as failed:
        if request.transport is not None:
            request.transport.abort()
        return response, failed.failure
    except ConnectionError:
        return response, None  # the client went away; nothing more to send
    return response, None


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


def expects_continue(request: web.BaseRequest) -> bool:
    """The client waits for `100 Continue` before it sends the body (RFC 9110 10.1.1)."""
    return (
        request.version >= HttpVersion11
        and request.headers.get(hdrs.EXPECT, "").strip().lower() == "100-continue"
    )


class Continue:
    """Tells the client to send its body (`100 Continue`, RFC 9110 10.1.1), once: called
    when the upstream has answered the forwarded expectation with its own 100."""

    __slots__ = ("_request", "_sent")

    def __init__(self, request: web.BaseRequest) -> None:
        self._request = request
        self._sent = False

    async def __call__(self) -> None:
        if self._sent:
            return
        self._sent = True
        writer = self._request.writer
        await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.output_size = 0  # an interim response: the real one has not started
