"""The life of one proxied request, top to bottom.

route -> admit (breaker, concurrency) -> forward (headers cleaned, body streamed or kept
for replay) -> on failure map through the table -> inspect or stream -> evaluate rules
-> retry when policy and budget allow -> rewrite or flag -> count -> respond.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from aiohttp import ClientSession, hdrs, web
from yarl import URL

from proxy import websocket as ws
from proxy.downstream import writers
from proxy.downstream.server import refused_status
from proxy.exchange import Outcome, Plan, release
from proxy.observe.logs import Log
from proxy.observe.metrics import UNMATCHED_ROUTE, Metrics
from proxy.rules import inspection as ins
from proxy.rules.snapshot import Route, Runtime
from proxy.rules.verdict import Delivery, apply_verdict
from proxy.upstream.connection import Response
from proxy.upstream.failures import (
    FAILURE_KINDS,
    OVERLOADED,
    PROTOCOL_ERROR,
    REFUSED_BY_BREAKER,
    Failure,
    UpstreamFailure,
    is_retry_safe,
)
from proxy.upstream.forward import RequestBody, malformed_head, send, target_url
from proxy.upstream.guards import REPLAY_LIMIT, UpstreamGuard, backoff_delay
from proxy.upstream.pool import Pool
from proxy.wire import headers as h
from proxy.wire.trace import trace_context

_PID = os.getpid()  # which worker served it (with --workers N)
CLIENT_CLOSED = 499  # counted when a client hangs up before it got an answer
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


class Proxy:
    """The request handler; `runtime()` returns the config snapshot to serve with."""

    def __init__(
        self,
        runtime: Callable[[], Runtime],
        session: ClientSession,
        metrics: Metrics,
        log: Log | None = None,
        pool: Pool | None = None,
    ) -> None:
        self._runtime = runtime
        self._session = session  # WebSocket handshakes only
        self._pool = pool or Pool()  # every other request
        self._metrics = metrics
        self._log = log
        self._guards: dict[str, UpstreamGuard] = {}
        self._draining = asyncio.Event()  # see `closing`
        self.active = 0  # requests being handled now (drain waits for them)

    @property
    def closing(self) -> bool:
        """Draining: answers carry `Connection: close` and open WebSocket tunnels close
        with 1001, so that `active` reaches 0 within the drain timeout."""
        return self._draining.is_set()

    @closing.setter
    def closing(self, value: bool) -> None:
        if value:
            self._draining.set()
        else:
            self._draining.clear()

    def start_closing(self) -> None:
        """Start draining (the same as `closing = True`)."""
        self._draining.set()

    def prepare(self, runtime: Runtime) -> None:
        """Create every upstream's state and metric series before the first request."""
        for route in runtime.routes:
            upstream = route.upstream
            self._metrics.declare_upstream(upstream.name, FAILURE_KINDS, upstream.retry.on)
            self.guard(route)

    def guard(self, route: Route) -> UpstreamGuard:
        """The upstream's live state; rebuilt only when its settings change."""
        upstream = route.upstream
        guard = self._guards.get(upstream.name)
        if guard is None or (guard.config is not upstream and guard.config != upstream):
            on_state = None
            if upstream.circuit_breaker is not None:  # no series for upstreams without one
                on_state = self._metrics.circuit_state.labels(upstream.name).set
            guard = UpstreamGuard.build(upstream, on_state=on_state)
            self._guards[upstream.name] = guard
        return guard

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._handle(request)
        finally:
            self.active -= 1

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._runtime()  # this request keeps this snapshot, even across a reload
        incoming = request.headers.getall("traceparent", ())
        # several traceparent headers are as invalid as a malformed one (W3C 3.2)
        trace_id, traceparent = trace_context(incoming[0] if len(incoming) == 1 else None)
        route = runtime.route_for(request.host, request.raw_path)
        outcome = Outcome()
        if route is None:
            response = writers.problem(
                404, "no_route", "no route matches this request", trace_id, closing=self.closing
            )
            outcome.code = outcome.true_status = 404
            outcome.source = "proxy"
            self._finish(UNMATCHED_ROUTE, request, outcome, started, trace_id)
            return response
        gauge = self._metrics.in_flight_for(route.name)
        gauge.inc()
        try:
            return await self._proxy(request, route, runtime, trace_id, traceparent, outcome)
        except asyncio.CancelledError:
            if not outcome.code:  # the server layer refused it, or the client hung up (499)
                outcome.code = outcome.true_status = refused_status(request) or CLIENT_CLOSED
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
        guard = self.guard(route)
        retry_safe = is_retry_safe(request.method, "idempotency-key" in request.headers)
        out_headers = h.request_headers(
            request.raw_headers,
            client_ip=request.remote,
            scheme=request.scheme,
            upstream_host=route.upstream_host,
            traceparent=traceparent,
            new_trace=trace_id not in request.headers.get("traceparent", ""),
        )
        if route.authorization is not None and hdrs.AUTHORIZATION not in request.headers:
            out_headers.append(("Authorization", route.authorization))
        target = route.upstream_target(request.raw_path)
        if ws.requested(request):  # SPEC 7: tunnelled once the upstream answers 101
            url = target_url(route.base_url, target)
            return await self._tunnel(request, route, guard, out_headers, url, trace_id, outcome)
        body = RequestBody(None)
        on_continue = None
        if request.body_exists:
            if writers.expects_continue(request):  # end to end: the upstream decides (SPEC 7)
                body = RequestBody(None, request.content, length=request.content_length)
                on_continue = writers.Continue(request)
            else:
                body = await RequestBody.read(request.content, request.content_length, REPLAY_LIMIT)
        guard.budget.record_request()
        held: Plan | None = None  # a failed attempt kept until its retry is admitted
        retry_reason = ""
        while True:
            refusal, wait, probe = self._admit(guard)
            if refusal is not None:
                if held is not None:  # the retry was refused: the last real outcome stands
                    try:
                        return await self._deliver(
                            request, route, held, retry_safe, trace_id, outcome
                        )
                    finally:
                        held.discard()
                return self._refuse(refusal, route, trace_id, outcome, wait)
            if held is not None:
                self._metrics.retries.labels(upstream.name, retry_reason).inc()
                held.discard()
                held = None
            outcome.attempts += 1
            guard.in_flight += 1
            plan: Plan | None = None
            try:
                try:
                    attempt = await send(
                        self._pool, upstream, request.method, route.base_url, target,
                        out_headers, body, on_continue,
                    )  # fmt: skip
                except UpstreamFailure as failed:
                    plan = Plan(failure=failed.failure)
                else:
                    outcome.upstream_seconds = attempt.head_seconds
                    self._metrics.observe_upstream(route.name, upstream.name, attempt.head_seconds)
                    if malformed_head(attempt.response):
                        release(attempt.response)
                        plan = Plan(failure=PROTOCOL_ERROR)
                    else:
                        plan = await self._inspect(
                            request, route, runtime, attempt.response, trace_id
                        )
                if plan.failure is not None:
                    self._metrics.upstream_failures.labels(upstream.name, plan.failure.kind).inc()
                if guard.breaker is not None:
                    guard.breaker.record(plan.true_status >= 500, probe)
                    probe = False
                reason = self._retry_reason(plan, guard, retry_safe, body, outcome.attempts)
                delay = None
                if reason is not None:
                    delay = backoff_delay(upstream.retry, outcome.attempts, plan.retry_after())
                if delay is None or not guard.budget.try_spend():
                    return await self._deliver(request, route, plan, retry_safe, trace_id, outcome)
                held, plan, retry_reason = plan, None, str(reason)
            finally:
                guard.in_flight -= 1
                if probe and guard.breaker is not None:
                    guard.breaker.release_probe()
                if plan is not None:
                    plan.discard()
            try:
                await asyncio.sleep(delay)
            except BaseException:
                held.discard()
                raise

    # -- admission and retries -------------------------------------------------------------

    def _admit(self, guard: UpstreamGuard) -> tuple[Failure | None, int, bool]:
        """(refusal or None, Retry-After for it, whether the admitted request is the
        breaker's half-open probe)."""
        probe = False
        if guard.breaker is not None:
            admitted, probe, wait = guard.breaker.admit()
            if not admitted:
                return REFUSED_BY_BREAKER, wait, False
        if guard.full():
            if probe and guard.breaker is not None:
                guard.breaker.release_probe()
            return OVERLOADED, 1, False
        return None, 0, probe

    def _refuse(
        self, refusal: Failure, route: Route, trace_id: str, outcome: Outcome, wait: int
    ) -> web.StreamResponse:
        """503 before anything was sent: always retryable, always with Retry-After."""
        self._metrics.upstream_failures.labels(route.upstream.name, refusal.kind).inc()
        return self._failure(refusal, route, True, trace_id, outcome, wait)

    def _retry_reason(
        self,
        plan: Plan,
        guard: UpstreamGuard,
        retry_safe: bool,
        body: RequestBody,
        attempts: int,
    ) -> str | None:
        """Why this attempt may be retried (a `retries_total{reason}`), or None."""
        policy = guard.config.retry
        if attempts >= policy.attempts:
            return None
        failure = plan.failure
        if failure is not None and failure.kind in ("connect_error", "connect_timeout"):
            # nothing was sent: safe for any method, unless a streamed body was started
            usable = body.replayable or not body.touched
            return "connect_error" if usable and "connect_error" in policy.on else None
        if not retry_safe or not body.replayable:
            return None  # the upstream may have acted on it (RFC 9110 9.2.2)
        if failure is not None:
            reason = "timeout" if failure.kind == "response_timeout" else "502"
        elif plan.true_status in RETRYABLE_STATUSES:
            reason = str(plan.true_status)
        else:
            return None
        return reason if reason in policy.on else None

    # -- WebSocket tunnels -----------------------------------------------------------------

    async def _tunnel(
        self,
        request: web.BaseRequest,
        route: Route,
        guard: UpstreamGuard,
        headers: h.Headers,
        url: URL,
        trace_id: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        """Open the upstream WebSocket, then relay until either side closes (see
        `websocket`).  The handshake is admitted like any request (breaker, concurrency
        limit) and never retried; an open tunnel holds no concurrency slot.  Counted as
        101 with class 1xx when it ends; in flight while open."""
        protocols = ws.offered_protocols(request)
        if not ws.well_formed(request, protocols):
            outcome.code = outcome.true_status = 400
            outcome.source = "proxy"
            detail = "malformed WebSocket handshake (RFC 6455 4.2.1)"
            return writers.problem(
                400, "bad_websocket_handshake", detail, trace_id, closing=self.closing
            )
        refusal, wait, probe = self._admit(guard)
        if refusal is not None:
            return self._refuse(refusal, route, trace_id, outcome, wait)
        upstream = route.upstream
        fallback = route.fallback_retry_after
        outcome.attempts = 1
        guard.in_flight += 1
        try:
            try:
                shake = await ws.connect(self._session, upstream, url, headers, protocols)
            except UpstreamFailure as failed:
                self._metrics.upstream_failures.labels(upstream.name, failed.failure.kind).inc()
                if guard.breaker is not None:
                    guard.breaker.record(True, probe)
                    probe = False
                # a GET: always safe to retry, so always with Retry-After
                return self._failure(failed.failure, route, True, trace_id, outcome, fallback)
            if guard.breaker is not None:
                guard.breaker.record(shake.status >= 500, probe)
                probe = False
        finally:
            guard.in_flight -= 1
            if probe and guard.breaker is not None:
                guard.breaker.release_probe()
        outcome.upstream_seconds = shake.seconds
        self._metrics.observe_upstream(route.name, upstream.name, shake.seconds)
        outcome.code = outcome.true_status = shake.status
        if shake.socket is None:  # refused: its status and headers, with an empty body
            refused = Delivery(shake.status, shake.headers, None)
            return writers.buffered(refused, b"", fallback, self.closing)
        return await ws.relay(request, shake, self._draining)

    # -- inspecting and delivering ---------------------------------------------------------

    async def _inspect(
        self,
        request: web.BaseRequest,
        route: Route,
        runtime: Runtime,
        resp: Response,
        trace_id: str,
    ) -> Plan:
        """Decide what to do with a response head: stream it, or buffer and judge it."""
        status = resp.status
        plan = Plan(resp=resp, headers=h.response_headers(resp.raw_headers))
        policy = runtime.inspect
        if not route.rules or not policy.wants_status(request.method, status):
            return plan
        mtype = ins.media_type(resp.header(b"content-type"))
        codings = ins.encodings(resp.header(b"content-encoding"))
        reason = policy.skip_reason(mtype, codings, resp.content_length)
        if reason is not None:
            self._metrics.count_inspection(route.name, reason)
            return plan
        try:
            chunks, complete = await writers.read_bounded(resp, policy.max_body_bytes)
        except UpstreamFailure as failed:  # nothing sent yet: answer from the table
            release(resp)
            return Plan(failure=failed.failure)
        if not complete:  # larger than declared (or undeclared): pass it through
            self._metrics.count_inspection(route.name, ins.SKIPPED_SIZE)
            plan.already = chunks
            return plan
        plan.raw = b"".join(chunks)
        examined = ins.examine(route.rules, policy, plan.raw, mtype, codings)
        self._metrics.count_inspection(route.name, examined.result)
        verdict = examined.verdict
        if verdict is not None:
            self._metrics.count_tunnelled(route.name, verdict.rule, verdict.action, verdict.status)
            plan.verdict = verdict
            plan.delivery = apply_verdict(
                verdict,
                status,
                plan.headers,
                decoded_json=examined.decoded,
                fallback_retry_after=route.fallback_retry_after,
                trace_id=trace_id,
            )
        return plan

    async def _deliver(
        self,
        request: web.BaseRequest,
        route: Route,
        plan: Plan,
        retry_safe: bool,
        trace_id: str,
        outcome: Outcome,
    ) -> web.StreamResponse:
        if plan.failure is not None or plan.resp is None:
            failure = plan.failure or PROTOCOL_ERROR
            retry_after = route.fallback_retry_after if retry_safe else None
            return self._failure(failure, route, retry_safe, trace_id, outcome, retry_after)
        resp = plan.resp
        outcome.code = outcome.true_status = resp.status
        fallback = route.fallback_retry_after
        if plan.raw is None:
            response, broke = await writers.relay(
                request, resp, plan.headers, plan.already, fallback, self.closing
            )
            if broke is not None:  # after the head: the client connection was aborted
                self._metrics.upstream_failures.labels(route.upstream.name, broke.kind).inc()
                outcome.failure = broke
            return response
        delivery = plan.delivery or Delivery(resp.status, plan.headers, None)
        if plan.verdict is not None:
            outcome.verdict = plan.verdict
            outcome.true_status = plan.verdict.status
            outcome.code = delivery.status
            outcome.source = "flagged" if plan.verdict.action == "flag" else "rewritten"
        return writers.buffered(delivery, plan.raw, fallback, self.closing)

    def _failure(
        self,
        failure: Failure,
        route: Route,
        retry_safe: bool,
        trace_id: str,
        outcome: Outcome,
        retry_after: int | None,
    ) -> web.StreamResponse:
        """Answer from the failure table (SPEC 6.1) with a problem body (6.2)."""
        outcome.code = outcome.true_status = failure.status
        outcome.source = "proxy"
        outcome.failure = failure
        detail = failure.title
        if failure.may_have_reached and not retry_safe:
            detail += (
                "; the upstream may have completed the request, so it is not safe to retry "
                "blindly (RFC 9110 9.2.2)"
            )
        response = writers.problem(
            failure.status, failure.error, detail, trace_id, retry_after, self.closing
        )
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
        self._log.access(
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
            attempts=outcome.attempts,
            traceId=trace_id,
            pid=_PID,
        )
