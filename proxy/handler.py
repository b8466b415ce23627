"""The life of one proxied request, top to bottom.

route -> forward (headers cleaned, body streamed) -> on failure answer from the table
-> decide to inspect or stream -> evaluate rules -> rewrite or flag -> count -> respond.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import ClientResponse, ClientSession, web

from . import headers as h
from . import inspect as ins
from .logs import Log
from .metrics import UNMATCHED_ROUTE, Metrics
from .problem import CONTENT_TYPE, problem_body, trace_context
from .rewrite import Delivery, apply_verdict, with_retry_after
from .rules import Verdict
from .runtime import Route, Runtime
from .upstream import Failure, UpstreamFailure, is_retry_safe, iter_body, send, target_url

CLIENT_CLOSED = 499  # counted when a client hangs up before it got an answer


@dataclass(slots=True)
class Outcome:
    """What happened, for metrics and the access log."""

    code: int = 0
    true_status: int = 0
    source: str = "upstream"
    verdict: Verdict | None = None
    failure: Failure | None = None
    upstream_seconds: float | None = None


class Proxy:
    """The request handler; `runtime()` returns the config snapshot to serve with."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        session: ClientSession,
        metrics: Metrics,
        log: Log | None = None,
    ) -> None:
        self._runtime = runtime
        self._session = session
        self._metrics = metrics
        self._log = log

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtime()  # this request keeps this snapshot, even across a reload
        incoming = request.headers.getall("traceparent", ())
        # several traceparent headers are as invalid as a malformed one (W3C 3.2)
        trace_id, traceparent = trace_context(incoming[0] if len(incoming) == 1 else None)
        route = runtime.route_for(request.host, request.raw_path)
        outcome = Outcome()
        if route is None:
            response = _problem(404, "no_route", "no route matches this request", trace_id)
            outcome.code = outcome.true_status = 404
            outcome.source = "proxy"
            self._finish(UNMATCHED_ROUTE, request, outcome, started, trace_id)
            return response
        gauge = self._metrics.in_flight_for(route.name)
        gauge.inc()
        try:
            return await self._proxy(request, route, runtime, trace_id, traceparent, outcome)
        except asyncio.CancelledError:
            if not outcome.code:  # the client hung up before any answer (nginx's 499)
                outcome.code = outcome.true_status = CLIENT_CLOSED
                outcome.source = "proxy"
            raise
        finally:
            gauge.dec()
            self._finish(route.name, request, outcome, started, trace_id)

    async def _proxy(
        self,
        request: web.BaseRequest,
        route: Route,
        runtime: Runtime,
        trace_id: str,
        traceparent: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        upstream = route.upstream
        out_headers = h.request_headers(
            request.raw_headers,
            client_ip=request.remote,
            scheme=request.scheme,
            upstream_host=route.upstream_host,
            traceparent=traceparent,
            new_trace=trace_id not in request.headers.get("traceparent", ""),
        )
        url = target_url(route.base_url, route.upstream_target(request.raw_path))
        body = request.content if request.body_exists else None
        try:
            attempt = await send(self._session, upstream, request.method, url, out_headers, body)
        except UpstreamFailure as failed:
            return self._failure(failed.failure, route, _retry_safe(request), trace_id, outcome)
        resp = attempt.response
        outcome.upstream_seconds = attempt.head_seconds
        try:
            self._metrics.observe_upstream(route.name, upstream.name, attempt.head_seconds)
            return await self._respond(request, route, runtime, resp, trace_id, outcome)
        finally:
            if resp.content.is_eof():
                resp.release()  # fully read: the connection goes back to the pool
            else:
                resp.close()  # unread bytes would poison a reused connection

    # -- answering -----------------------------------------------------------------------------

    async def _respond(
        self,
        request: web.BaseRequest,
        route: Route,
        runtime: Runtime,
        resp: ClientResponse,
        trace_id: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        status = resp.status
        headers = h.response_headers(resp.raw_headers)
        outcome.code = outcome.true_status = status
        policy = runtime.inspect
        if not route.rules or not policy.wants_status(request.method, status):
            return await self._stream(request, route, resp, status, headers, [], outcome)
        mtype = ins.media_type(resp.headers.get("Content-Type"))
        codings = ins.encodings(resp.headers.get("Content-Encoding"))
        reason = policy.skip_reason(mtype, codings, resp.content_length)
        if reason is not None:
            self._metrics.count_inspection(route.name, reason)
            return await self._stream(request, route, resp, status, headers, [], outcome)

        try:
            chunks, complete = await _buffer(resp, policy.max_body_bytes)
        except UpstreamFailure as failed:  # nothing sent yet: answer from the table
            return self._failure(failed.failure, route, _retry_safe(request), trace_id, outcome)
        if not complete:  # larger than declared (or undeclared): pass it through
            self._metrics.count_inspection(route.name, ins.SKIPPED_SIZE)
            return await self._stream(request, route, resp, status, headers, chunks, outcome)
        raw = b"".join(chunks)
        examined = ins.examine(route.rules, policy, raw, mtype, codings)
        self._metrics.count_inspection(route.name, examined.result)
        verdict = examined.verdict
        if verdict is None:
            return await _send(
                request, Delivery(status, headers, None), raw, route.fallback_retry_after
            )

        self._metrics.count_tunnelled(route.name, verdict.rule, verdict.action, verdict.status)
        outcome.verdict = verdict
        outcome.true_status = verdict.status
        delivery = apply_verdict(
            verdict,
            status,
            headers,
            decoded_json=examined.decoded,
            fallback_retry_after=route.fallback_retry_after,
            trace_id=trace_id,
        )
        outcome.code = delivery.status
        outcome.source = "flagged" if verdict.action == "flag" else "rewritten"
        return await _send(request, delivery, raw, route.fallback_retry_after)

    async def _stream(
        self,
        request: web.BaseRequest,
        route: Route,
        resp: ClientResponse,
        status: int,
        headers: h.Headers,
        already: list[bytes],
        outcome: Outcome,
    ) -> web.StreamResponse:
        response, failure = await _stream(
            request, resp, status, headers, already, route.fallback_retry_after
        )
        if failure is not None:
            self._metrics.upstream_failures.labels(route.upstream.name, failure.kind).inc()
            outcome.failure = failure
        return response

    def _failure(
        self, failure: Failure, route: Route, retry_safe: bool, trace_id: str, outcome: Outcome
    ) -> web.StreamResponse:
        self._metrics.upstream_failures.labels(route.upstream.name, failure.kind).inc()
        outcome.code = outcome.true_status = failure.status
        outcome.source = "proxy"
        outcome.failure = failure
        retry_after = route.fallback_retry_after if retry_safe else None
        detail = failure.title
        if failure.may_have_reached and not retry_safe:
            detail += (
                "; the upstream may have completed the request, so it is not safe to retry "
                "blindly (RFC 9110 9.2.2)"
            )
        response = _problem(failure.status, failure.error, detail, trace_id, retry_after)
        response.headers["Proxy-Status"] = f"tunnelguard; error={failure.error}"
        return response

    def _finish(
        self,
        route: str,
        request: web.BaseRequest,
        outcome: Outcome,
        started: float,
        trace_id: str,
    ) -> None:
        """Count the request and write its access-log line (SPEC sections 8 and 9)."""
        seconds = time.perf_counter() - started
        code = outcome.code or 500
        true_status = outcome.true_status or code
        self._metrics.count_request(
            route, request.method, code, true_status, outcome.source, seconds
        )
        if self._log is None:
            return
        verdict = outcome.verdict
        upstream = outcome.upstream_seconds
        self._log.event(
            "request",
            route=route,
            method=request.method,
            path=request.raw_path.split("?", 1)[0],  # never the query string
            code=code,
            true_code=true_status,
            source=outcome.source,
            rule=verdict.rule if verdict else None,
            action=verdict.action if verdict else None,
            upstream_time=round(upstream, 6) if upstream is not None else None,
            total_time=round(seconds, 6),
            failure=outcome.failure.kind if outcome.failure else None,
            traceId=trace_id,
        )


def _retry_safe(request: web.BaseRequest) -> bool:
    return is_retry_safe(request.method, "idempotency-key" in request.headers)


def _problem(
    status: int, error: str, detail: str, trace_id: str, retry_after: int | None = None
) -> web.Response:
    body = problem_body(status, error, detail, trace_id, retryable=retry_after is not None)
    response = web.Response(status=status, body=body, content_type=CONTENT_TYPE)
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def _buffer(resp: ClientResponse, limit: int) -> tuple[list[bytes], bool]:
    """Read the body up to `limit` bytes; (chunks, True) when it ended within the limit."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in iter_body(resp):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return chunks, False
    return chunks, True


def _start(
    status: int, reason: str | None, headers: h.Headers, retry_after: int
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, reason=reason)
    target = response.headers
    for name, value in with_retry_after(status, headers, retry_after):
        target.add(name, value)
    return response


async def _send(
    request: web.BaseRequest, delivery: Delivery, raw: bytes, retry_after: int
) -> web.StreamResponse:
    """Answer with a fully buffered body (the upstream's `raw` unless replaced)."""
    body = raw if delivery.body is None else delivery.body
    response = _start(delivery.status, None, delivery.headers, retry_after)
    response.content_length = len(body)
    try:
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; aiohttp sees the closed transport
    return response


async def _stream(
    request: web.BaseRequest,
    resp: ClientResponse,
    status: int,
    headers: h.Headers,
    already: list[bytes],
    retry_after: int,
) -> tuple[web.StreamResponse, Failure | None]:
    """Relay the upstream body as it arrives, after any `already` buffered chunks.

    A failure after the head was sent aborts the client connection: a truncated body
    must never look like a complete one (SPEC 6.1, last row).  The failure is returned
    for counting; the aborted response is returned to aiohttp, which sees the closed
    transport and stops."""
    response = _start(status, resp.reason, headers, retry_after)
    if resp.content_length is not None:
        response.content_length = resp.content_length
    try:
        await response.prepare(request)
        for chunk in already:
            await response.write(chunk)
        async for chunk in iter_body(resp):
            await response.write(chunk)
    except UpstreamFailure as failed:
        if request.transport is not None:
            request.transport.abort()
        return response, failed.failure
    except ConnectionError:
        return response, None  # the client went away; nothing more to send
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response, None
