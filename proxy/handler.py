"""The life of one proxied request, top to bottom (`Proxy._handle`, then `_forward`).

route -> clean the headers -> keep the body for a replay (or stream it) -> admit (breaker,
concurrency) -> attempt: send, then stream the answer, judge its body (`rules.decide`) or an
event stream's first event (SPEC 5.1), a failure mapped through THE table -> retry when
policy and budget allow -> deliver (relayed, with a stream's later events watched;
rewritten or flagged; or a problem body) -> record (one metrics sample, one access-log line).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientSession, hdrs, web
from yarl import URL

from proxy import websocket as ws
from proxy.downstream import writers
from proxy.downstream.request import Request
from proxy.downstream.writers import Answer
from proxy.exchange import Call, Outcome, Plan, release
from proxy.observe.logs import Log
from proxy.observe.metrics import UNMATCHED_ROUTE, Metrics
from proxy.observe.record import Recorder, RequestEnded
from proxy.rules import inspection as ins
from proxy.rules.catalogue import ShapeCatalogue
from proxy.rules.decide import Decision, decide, decide_event
from proxy.rules.events import FirstEvent
from proxy.rules.snapshot import Route, Runtime
from proxy.rules.streams import StreamWatch, unjudged_result
from proxy.rules.suspect import Suspect
from proxy.rules.verdict import Delivery
from proxy.upstream.connection import Response
from proxy.upstream.failures import (
    FAILURE_KINDS,
    PROTOCOL_ERROR,
    Failure,
    UpstreamFailure,
    is_retry_safe,
)
from proxy.upstream.forward import RequestBody, malformed_head, send, target_url
from proxy.upstream.guards import REPLAY_LIMIT, UpstreamGuard, backoff_delay
from proxy.upstream.pool import Pool
from proxy.wire import headers as h
from proxy.wire.tracecontext import trace_context_of

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
        catalogue: ShapeCatalogue | None = None,
    ) -> None:
        """`catalogue` keeps the suspect shapes (SPEC 10); it outlives reloads."""
        self._runtime = runtime
        self._session = session  # WebSocket handshakes only
        self._pool = pool or Pool()  # every other request
        self._metrics = metrics
        self._recorder = Recorder(metrics, log)
        self._guards: dict[str, UpstreamGuard] = {}
        self.catalogue = catalogue if catalogue is not None else ShapeCatalogue()
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

    async def handle(self, request: Request) -> Answer | web.StreamResponse:
        """Answer one request: ours (`downstream.request.Request`), or aiohttp's for a
        WebSocket handshake the server handed off."""
        self.active += 1
        try:
            return await self._handle(request)
        finally:
            self.active -= 1

    # -- the request's story ---------------------------------------------------------------

    async def _handle(self, request: Request) -> Answer | web.StreamResponse:
        """Route it, forward it (in flight meanwhile), and record how it ended."""
        started = time.perf_counter()
        runtime = self._runtime()  # this request keeps this snapshot, even across a reload
        trace_id, traceparent = trace_context_of(request.headers.getall("traceparent", ()))
        host, path, named_host = request.host, request.raw_path, None
        if path[:1] != "/" and (absolute := h.origin_form(path)) is not None:
            # RFC 9112 3.2.2: the target's authority, not Host, names the host
            host = named_host = absolute[0]
            path = absolute[1]
        route = runtime.route_for(host, path)
        outcome = Outcome()
        if route is None:
            response = writers.problem(
                404, "no_route", "no route matches this request", trace_id, closing=self.closing
            )
            outcome.answered_by_proxy(404)
            self._record(UNMATCHED_ROUTE, request, path, outcome, started, trace_id)
            return response
        gauge = self._metrics.in_flight_for(route.name)
        gauge.inc()
        try:
            return await self._forward(
                request, route, runtime, path, named_host, trace_id, traceparent, outcome
            )
        except asyncio.CancelledError:
            if not outcome.code:  # the server layer refused it, or the client hung up (499)
                refusal = getattr(request, "refusal", None)  # stopped mid-body by the server
                outcome.answered_by_proxy(refusal.status if refusal else CLIENT_CLOSED)
            raise
        finally:
            gauge.dec()
            self._record(route.name, request, path, outcome, started, trace_id)

    async def _forward(
        self,
        request: Request,
        route: Route,
        runtime: Runtime,
        path: str,
        named_host: str | None,
        trace_id: str,
        traceparent: str,
        outcome: Outcome,
    ) -> Answer | web.StreamResponse:
        """Clean the headers, then attempt (admitted by the upstream's guards) until an
        answer is deliverable or no retry is allowed, and deliver it.  `path` is the
        request target in origin form; `named_host` the authority an absolute-form target
        named (it replaces Host)."""
        guard = self.guard(route)
        headers = self._upstream_headers(request, route, named_host, trace_id, traceparent)
        handshake: Any = request
        if isinstance(handshake, web.BaseRequest):  # a WebSocket handshake, handed off by
            # the server to aiohttp's: tunnelled once the upstream answers 101 (SPEC 7)
            url = target_url(route.base_url, route.upstream_target(path))
            return await self._tunnel(handshake, route, guard, headers, url, trace_id, outcome)
        call = Call(
            request, route, runtime, trace_id, outcome, headers,
            target=route.upstream_target(path),
            retry_safe=is_retry_safe(request.method, "idempotency-key" in request.headers),
        )  # fmt: skip
        if request.body_exists:  # no coroutine for the common bodiless request
            await self._read_body(call)
        guard.budget.record_request()
        held: Plan | None = None  # a failed attempt kept until its retry is admitted
        retry_reason = ""
        while True:
            admission = guard.admit()
            if admission.refusal is not None:
                if held is None:
                    return self._refuse(
                        admission.refusal, admission.retry_after, route, trace_id, outcome
                    )
                with held:  # the retry was refused: the last real outcome stands
                    return await self._deliver(call, held)
            if held is not None:
                self._metrics.retries.labels(route.upstream.name, retry_reason).inc()
                held.discard()
                held = None
            with admission:
                plan = await self._attempt(call)
                admission.record(failed=plan.true_status >= 500)
                retry = self._retry(call, plan, guard)
                if retry is None:
                    with plan:
                        return await self._deliver(call, plan)
            held, (retry_reason, delay) = plan, retry
            try:
                await asyncio.sleep(delay)  # backoff (SPEC 6.3)
            except BaseException:
                held.discard()
                raise

    def _upstream_headers(
        self,
        request: Request,
        route: Route,
        named_host: str | None,
        trace_id: str,
        traceparent: str,
    ) -> h.Headers:
        """The request headers as the upstream gets them (SPEC 7), with the trace context
        (SPEC 6.2) and the upstream URL's credentials when the client sent none.  Host is
        the upstream's (`preserve_host: false`), else the one an absolute-form target named,
        else the client's."""
        headers = h.request_headers(
            request.raw_headers,
            client_ip=request.remote,
            scheme=request.scheme,
            upstream_host=route.upstream_host or named_host,
            traceparent=traceparent,
            new_trace=trace_id not in (request.headers.get("traceparent") or ""),
        )
        if route.authorization is not None and hdrs.AUTHORIZATION not in request.headers:
            headers.append(("Authorization", route.authorization))
        return headers

    async def _read_body(self, call: Call) -> None:
        """Keep a small body for a replay (SPEC 6.3), or stream it; with `Expect:
        100-continue` the upstream decides whether the client sends it (SPEC 7)."""
        request = call.request
        if request.expects_continue() and request.out is not None:
            call.body = RequestBody(None, request.content, length=request.content_length)
            call.on_continue = request.out.send_continue
        else:
            call.body = await RequestBody.read(
                request.content, request.content_length, REPLAY_LIMIT
            )

    async def _attempt(self, call: Call) -> Plan:
        """One try: send, wait for the response head, then stream or judge it."""
        call.outcome.attempts += 1
        route = call.route
        upstream = route.upstream
        try:
            sent = await send(
                self._pool, upstream, call.request.method, route.base_url, call.target,
                call.headers, call.body, call.on_continue,
            )  # fmt: skip
        except UpstreamFailure as failed:
            plan = Plan(failure=failed.failure)
        else:
            call.outcome.upstream_seconds = sent.head_seconds
            self._metrics.observe_upstream(route.name, upstream.name, sent.head_seconds)
            if malformed_head(sent.response):
                release(sent.response)
                plan = Plan(failure=PROTOCOL_ERROR)
            else:
                plan = await self._inspect(call, sent.response)
        if plan.failure is not None:
            self._metrics.upstream_failures.labels(upstream.name, plan.failure.kind).inc()
        return plan

    def _retry(self, call: Call, plan: Plan, guard: UpstreamGuard) -> tuple[str, float] | None:
        """(why, after how many seconds) when this attempt is retried, else None: the
        policy must allow it and the retry budget pay for it (SPEC 6.3)."""
        reason = self._retry_reason(plan, guard, call.retry_safe, call.body, call.outcome.attempts)
        if reason is None:
            return None
        policy = guard.config.retry
        delay = backoff_delay(policy, call.outcome.attempts, plan.retry_after())
        if delay is None or not guard.budget.try_spend():
            return None
        return reason, delay

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

    def _refuse(
        self, refusal: Failure, retry_after: int, route: Route, trace_id: str, outcome: Outcome
    ) -> Answer:
        """503 before anything was sent (breaker open, concurrency limit): always
        retryable, always with Retry-After."""
        self._metrics.upstream_failures.labels(route.upstream.name, refusal.kind).inc()
        return self._failure(refusal, route, True, trace_id, outcome, retry_after)

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
    ) -> Answer | web.StreamResponse:
        """Open the upstream WebSocket, then relay until either side closes (see
        `websocket`).  The handshake is admitted like any request (breaker, concurrency
        limit) and never retried; an open tunnel holds no concurrency slot.  Counted as
        101 with class 1xx when it ends; in flight while open."""
        protocols = ws.offered_protocols(request)
        if not ws.well_formed(request, protocols):
            outcome.answered_by_proxy(400)
            detail = "malformed WebSocket handshake (RFC 6455 4.2.1)"
            return writers.problem(
                400, "bad_websocket_handshake", detail, trace_id, closing=self.closing
            )
        admission = guard.admit()
        if admission.refusal is not None:
            return self._refuse(admission.refusal, admission.retry_after, route, trace_id, outcome)
        upstream = route.upstream
        fallback = route.fallback_retry_after
        outcome.attempts = 1
        with admission:
            try:
                shake = await ws.connect(self._session, upstream, url, headers, protocols)
            except UpstreamFailure as failed:
                self._metrics.upstream_failures.labels(upstream.name, failed.failure.kind).inc()
                admission.record(failed=True)
                # a GET: always safe to retry, so always with Retry-After
                return self._failure(failed.failure, route, True, trace_id, outcome, fallback)
            admission.record(failed=shake.status >= 500)
        outcome.upstream_seconds = shake.seconds
        self._metrics.observe_upstream(route.name, upstream.name, shake.seconds)
        outcome.code = outcome.true_status = shake.status
        if shake.socket is None:  # refused: its status and headers, with an empty body
            refused = Delivery(shake.status, shake.headers, None)
            return writers.buffered(refused, b"", fallback, self.closing)
        return await ws.relay(request, shake, self._draining)

    # -- judging and delivering ------------------------------------------------------------

    async def _inspect(self, call: Call, resp: Response) -> Plan:
        """Decide what to do with a response head: stream it, or buffer and judge it."""
        route = call.route
        plan = Plan(resp=resp, headers=h.response_headers(resp.raw_headers))
        policy = call.runtime.inspect
        if not route.rules or not policy.wants_status(call.request.method, resp.status):
            return plan
        mtype = ins.media_type(resp.header(b"content-type"))
        codings = ins.encodings(resp.header(b"content-encoding"))
        kind = policy.stream_types.get(mtype)
        if kind is not None and 200 <= resp.status < 300:  # an event stream (SPEC 5.1)
            return await self._hold_stream(call, plan, resp, kind, mtype, codings)
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
        decision = decide(
            route.rules, policy, resp.status, plan.headers, plan.raw, mtype, codings,
            fallback_retry_after=route.fallback_retry_after, trace_id=call.trace_id,
            discover=route.discover.enabled and 200 <= resp.status < 300,
        )  # fmt: skip
        self._metrics.count_inspection(route.name, decision.result)
        self._judged(route, plan, decision)
        return plan

    async def _hold_stream(
        self,
        call: Call,
        plan: Plan,
        resp: Response,
        kind: str,
        mtype: str,
        codings: tuple[str, ...],
    ) -> Plan:
        """Hold an event stream until its first event (within `first_event_bytes` and
        `first_event_timeout`), judge that event like a body, and arrange for its later
        events to be judged as they are relayed (SPEC 5.1).  A compressed stream is not
        held."""
        route, policy = call.route, call.runtime.inspect
        if ins.compressed(codings):
            self._metrics.count_inspection(route.name, ins.SKIPPED_ENCODING)
            return plan
        finder = FirstEvent(kind, policy.first_event_bytes)
        try:
            plan.already = await writers.hold_first_event(resp, finder, policy.first_event_timeout)
        except UpstreamFailure as failed:  # nothing sent yet: answer from the table
            release(resp)
            return Plan(failure=failed.failure)
        event = finder.event
        watch_from = 0  # every event is a later one when the first was not judged
        if event is None:
            result = unjudged_result(finder.exhausted, resp.is_eof())
        else:
            decision = decide_event(
                route.rules, resp.status, plan.headers, event, mtype,
                fallback_retry_after=route.fallback_retry_after, trace_id=call.trace_id,
                discover=route.discover.enabled,  # a held stream's status is 2xx already
            )  # fmt: skip
            result, watch_from = decision.result, event.end
            self._judged(route, plan, decision)
        self._metrics.count_inspection(route.name, result)
        if plan.delivery is not None and plan.delivery.body is not None:
            plan.raw = b""  # `body: problem` replaces the stream: nothing more is relayed
        else:  # later events may have come with the first (a whole stream in one read)
            plan.watch = StreamWatch(route.rules, kind, mtype, policy.first_event_bytes, watch_from)
        return plan

    def _judged(self, route: Route, plan: Plan, decision: Decision) -> None:
        """A body's or a first event's verdict, counted and kept for delivery."""
        verdict = decision.verdict
        if verdict is not None:
            self._metrics.count_tunnelled(route.name, verdict.rule, verdict.action, verdict.status)
            plan.verdict = verdict
            plan.delivery = decision.delivery
        elif decision.suspect is not None:
            plan.suspect = self._catalogued(route, decision.suspect)

    def _catalogued(self, route: Route, suspect: Suspect) -> str:
        """A suspect body (SPEC 10): catalogued and counted; nothing about it changes."""
        label = self.catalogue.record(route.name, suspect, time.time(), route.discover.max_shapes)
        self._metrics.count_suspect(route.name, label)  # an id, or `other`: bounded
        return suspect.shape

    async def _deliver(self, call: Call, plan: Plan) -> Answer:
        """Answer the client: from the failure table, relayed as it arrives, or buffered
        (rewritten or flagged when a rule matched)."""
        route, outcome = call.route, call.outcome
        if plan.failure is not None or plan.resp is None:
            failure = plan.failure or PROTOCOL_ERROR
            retry_after = route.fallback_retry_after if call.retry_safe else None
            return self._failure(
                failure, route, call.retry_safe, call.trace_id, outcome, retry_after
            )
        resp = plan.resp
        outcome.code = outcome.true_status = resp.status
        fallback = route.fallback_retry_after
        delivery = plan.delivery or Delivery(resp.status, plan.headers, None)
        if plan.verdict is not None:
            outcome.judged(plan.verdict, delivery.status)
        elif plan.suspect is not None:
            outcome.suspect = plan.suspect
            if route.discover.header:
                delivery.headers.append(("Tunnelguard-Suspect", plan.suspect))
        if plan.raw is not None:
            return writers.buffered(delivery, plan.raw, fallback, self.closing)
        out = call.request.out
        assert out is not None  # set by the connection for every request it handles
        watch = None if plan.watch is None else self._stream_watcher(call, plan.watch)
        response, broke = await writers.relay(
            out, resp, delivery, plan.already, fallback, self.closing, watch
        )
        if broke is not None:  # after the head: the client connection was aborted
            self._metrics.upstream_failures.labels(route.upstream.name, broke.kind).inc()
            outcome.failure = broke
        return response

    def _stream_watcher(self, call: Call, watch: StreamWatch) -> Callable[[bytes], None]:
        """Judge a relayed stream's later events: each error is counted, and the first
        becomes the request's true status (SPEC 5.1); nothing sent changes."""
        route, outcome = call.route.name, call.outcome
        count = self._metrics.count_stream_error

        def seen(chunk: bytes) -> None:
            for verdict in watch.feed(chunk):
                count(route, verdict.rule)
                outcome.found_in_stream(verdict)

        return seen

    def _failure(
        self,
        failure: Failure,
        route: Route,
        retry_safe: bool,
        trace_id: str,
        outcome: Outcome,
        retry_after: int | None,
    ) -> Answer:
        """Answer from the failure table (SPEC 6.1) with a problem body (6.2)."""
        outcome.answered_by_proxy(failure.status)
        outcome.failure = failure
        detail = failure.title
        if failure.may_have_reached and not retry_safe:
            detail += (
                "; the upstream may have completed the request, so it is not safe to retry "
                "blindly (RFC 9110 9.2.2)"
            )
        return writers.problem(
            failure.status, failure.error, detail, trace_id, retry_after, self.closing,
            extra=[("Proxy-Status", f"tunnelguard; error={failure.error}")],
        )  # fmt: skip

    # -- recording -------------------------------------------------------------------------

    def _record(
        self,
        route: str,
        request: Request,
        path: str,
        outcome: Outcome,
        started: float,
        trace_id: str,
    ) -> None:
        """The one place a handled request is counted and logged (SPEC 8 and 9)."""
        code = outcome.code or 500
        verdict = outcome.verdict
        failure = outcome.failure
        found = verdict or outcome.stream_error  # a stream's later error: its rule, no action
        self._recorder.ended(
            RequestEnded(
                route=route,
                method=request.method,
                path=path.split("?", 1)[0],  # never the query string
                code=code,
                true_code=outcome.true_status or code,
                source=outcome.source,
                total_seconds=time.perf_counter() - started,
                trace_id=trace_id,
                rule=found.rule if found else None,
                action=verdict.action if verdict else None,
                upstream_seconds=outcome.upstream_seconds,
                failure=failure.kind if failure else None,
                attempts=outcome.attempts,
                suspect=outcome.suspect,
            )
        )
