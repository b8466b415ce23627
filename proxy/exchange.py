"""One request's records, as data: what every attempt shares (`Call`), what an attempt
produced (`Plan`) and what the request ended as (`Outcome`, for metrics and the access
log)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.downstream.request import Request
from proxy.rules.snapshot import Route, Runtime
from proxy.rules.streams import StreamWatch
from proxy.rules.verdict import Delivery, Verdict
from proxy.upstream.connection import Response
from proxy.upstream.failures import Failure
from proxy.upstream.forward import RequestBody
from proxy.wire import headers as h


@dataclass(slots=True)
class Outcome:
    """What happened, for metrics and the access log."""

    code: int = 0
    true_status: int = 0
    source: str = "upstream"
    verdict: Verdict | None = None
    failure: Failure | None = None
    upstream_seconds: float | None = None
    attempts: int = 0
    suspect: str | None = None  # the shape id of a suspect body (SPEC 10)
    stream_error: Verdict | None = None  # the first error found in a stream after its head

    def found_in_stream(self, verdict: Verdict) -> None:
        """An error event after the stream's head was sent (SPEC 5.1): nothing delivered
        changes, but the first one is what the response truly was, unless a rule had
        already judged it (its verdict stands)."""
        if self.stream_error is None:
            self.stream_error = verdict
            if self.verdict is None:
                self.true_status = verdict.status

    def answered_by_proxy(self, status: int) -> None:
        """tunnelguard answered itself (no route, a refusal, the failure table, 499)."""
        self.code = self.true_status = status
        self.source = "proxy"

    def judged(self, verdict: Verdict, delivered: int) -> None:
        """A rule matched: delivered `delivered`, truly `verdict.status` (SPEC 8)."""
        self.verdict = verdict
        self.true_status = verdict.status
        self.code = delivered
        self.source = "flagged" if verdict.action == "flag" else "rewritten"


@dataclass(slots=True)
class Call:
    """What every attempt of one forwarded request shares."""

    request: Request
    route: Route
    runtime: Runtime  # the snapshot the request started with (SPEC 4.6)
    trace_id: str
    outcome: Outcome
    headers: h.Headers  # as sent upstream
    target: str  # the upstream request target
    retry_safe: bool  # RFC 9110 9.2.2, or an Idempotency-Key
    body: RequestBody = field(default_factory=lambda: RequestBody(None))
    on_continue: Callable[[], Awaitable[None]] | None = None  # Expect: 100-continue


@dataclass(slots=True)
class Plan:
    """One attempt's result, decided but not yet delivered.

    `failure` set: no usable response.  Otherwise `resp` is the upstream response;
    `raw` is its complete buffered body (None: stream it, after `already`, with `delivery`'s
    status and headers when the first event of an event stream was judged)."""

    failure: Failure | None = None
    resp: Response | None = None
    headers: h.Headers = field(default_factory=list)
    already: list[bytes] = field(default_factory=list)
    raw: bytes | None = None
    verdict: Verdict | None = None
    delivery: Delivery | None = None
    suspect: str | None = None  # the shape id, when the clean body is suspect (SPEC 10)
    watch: StreamWatch | None = None  # an event stream's later events, judged as relayed

    @property
    def true_status(self) -> int:
        if self.failure is not None:
            return self.failure.status
        if self.verdict is not None:
            return self.verdict.status
        return self.resp.status if self.resp is not None else 0

    def retry_after(self) -> float | None:
        """Seconds the upstream asked us to wait (header, else the body's value)."""
        value = h.get(self.headers, "retry-after") if self.resp is not None else None
        if value is not None:
            return retry_after_seconds(value)
        if self.verdict is not None and self.verdict.retry_after is not None:
            return float(self.verdict.retry_after)
        return None

    def discard(self) -> None:
        if self.resp is not None:
            release(self.resp)

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Done with it (delivered, or given up): its connection is released."""
        self.discard()


def release(resp: Response) -> None:
    """Fully read: the connection goes back to the pool; else it is closed."""
    resp.release()


def retry_after_seconds(value: str) -> float | None:
    """Retry-After is delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
