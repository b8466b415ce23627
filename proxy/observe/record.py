"""One shape for "a request ended" (SPEC 8 and 9): `RequestEnded`, and `Recorder`, which
turns it into its `requests_total` / `request_duration_seconds` samples and its access-log
line.  The handler records every request it handled through it, and the server every
request it refused before the handler ran, so both count and log alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from proxy.observe.logs import Log
from proxy.observe.metrics import Metrics


@dataclass(slots=True)
class RequestEnded:
    """What the operator is told about one request: structure and bounded codes only,
    never a body or text taken from one (SPEC 9)."""

    route: str
    method: str | None  # None: the request never parsed
    path: str | None  # without its query string; None: the request never parsed
    code: int  # delivered
    true_code: int  # what the response really was (SPEC 8 "true class")
    source: str  # upstream | rewritten | flagged | proxy
    total_seconds: float
    trace_id: str
    rule: str | None = None
    action: str | None = None
    upstream_seconds: float | None = None
    failure: str | None = None  # upstream_failures_total{kind}
    attempts: int = 0
    error: str | None = None  # the server's refusal code, for requests it refused itself
    suspect: str | None = None  # the suspect shape id of a clean body (SPEC 10)


class Recorder:
    """Counts and logs each `RequestEnded`; `log` None logs nothing (tests, tools)."""

    __slots__ = ("_log", "_metrics", "_pid")

    def __init__(self, metrics: Metrics, log: Log | None) -> None:
        self._metrics = metrics
        self._log = log
        self._pid = os.getpid()  # which worker served it (with --workers N)

    def ended(self, r: RequestEnded) -> None:
        self._metrics.count_request(
            r.route, r.method or "other", r.code, r.true_code, r.source, r.total_seconds
        )
        log = self._log
        if log is None:
            return
        upstream = r.upstream_seconds
        if r.suspect is not None:  # `suspect` only when there is one (SPEC 9)
            log.access(
                route=r.route, method=r.method, path=r.path, code=r.code,
                true_code=r.true_code, source=r.source, rule=r.rule, action=r.action,
                upstream_time=round(upstream, 6) if upstream is not None else None,
                total_time=round(r.total_seconds, 6), failure=r.failure,
                attempts=r.attempts, suspect=r.suspect, traceId=r.trace_id, pid=self._pid,
            )  # fmt: skip
            return
        if r.error is None:  # the handler's lines have no `error`
            log.access(
                route=r.route, method=r.method, path=r.path, code=r.code,
                true_code=r.true_code, source=r.source, rule=r.rule, action=r.action,
                upstream_time=round(upstream, 6) if upstream is not None else None,
                total_time=round(r.total_seconds, 6), failure=r.failure,
                attempts=r.attempts, traceId=r.trace_id, pid=self._pid,
            )  # fmt: skip
            return
        log.access(
            route=r.route, method=r.method, path=r.path, code=r.code, true_code=r.true_code,
            source=r.source, rule=r.rule, action=r.action,
            upstream_time=round(upstream, 6) if upstream is not None else None,
            total_time=round(r.total_seconds, 6), failure=r.failure, attempts=r.attempts,
            error=r.error, traceId=r.trace_id, pid=self._pid,
        )  # fmt: skip
