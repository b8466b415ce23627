"""A rule's `Verdict` on one upstream response, and applying it (SPEC 4.3), as pure data
and a pure function.

The handler, `tunnelguard check` and `tunnelguard explain` all call `apply_verdict`,
so what a rule test asserts is exactly what a client gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.wire import headers as h
from proxy.wire.problem import CONTENT_TYPE, problem_body

# Validators and digests of the original representation are false once the status
# (or body) changes, and a cache must not store the failure (RFC 9111 5.2.2.5).
_DROP_ON_REWRITE = frozenset({"cache-control", "etag", "last-modified", "expires"})
_DROP_ON_NEW_BODY = frozenset(
    {"content-type", "content-encoding", "content-digest", "repr-digest", "digest", "content-md5",
     "content-range", "content-language"}
)  # fmt: skip
NEEDS_RETRY_AFTER = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a matching rule decided about one upstream response."""

    rule: str
    status: int  # the honest (mapped) status
    action: str  # rewrite | flag
    body: str = "keep"  # keep | problem
    retry_after: int | None = None  # seconds, from `retry_after_from`
    message: str | None = None  # the error text found, for problem bodies and logs
    partial_batch: bool = False  # some, not all, elements of a top-level array matched


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the client receives.  `body` None means: the upstream's bytes, unchanged."""

    status: int
    headers: h.Headers
    body: bytes | None


def with_retry_after(status: int, headers: h.Headers, seconds: int) -> h.Headers:
    """SPEC 6.1: a 429 or 503 always tells the client when to come back."""
    if status in NEEDS_RETRY_AFTER and h.get(headers, "retry-after") is None:
        return [*headers, ("Retry-After", str(seconds))]
    return headers


def proxy_status(upstream_status: int, rule: str) -> str:
    """RFC 9209 Proxy-Status for a rewritten response (details is an sf-string)."""
    detail = f"rule {rule}".replace("\\", "\\\\").replace('"', '\\"')
    return f'tunnelguard; received-status={upstream_status}; details="{detail}"'


def apply_verdict(
    verdict: Verdict,
    upstream_status: int,
    headers: h.Headers,
    *,
    decoded_json: bytes,
    fallback_retry_after: int,
    trace_id: str,
) -> Delivery:
    """The response to deliver for `verdict`.  `headers` are the upstream's, already
    cleaned by `headers.response_headers`; `decoded_json` is the body's JSON text."""
    if verdict.action == "flag":
        flagged = [
            *headers,
            ("Tunnelguard-Rule", verdict.rule),
            ("Tunnelguard-Status", str(verdict.status)),
        ]
        return Delivery(upstream_status, flagged, None)

    out = h.without(headers, _DROP_ON_REWRITE)
    if verdict.status in NEEDS_RETRY_AFTER and h.get(headers, "retry-after") is None:
        seconds = verdict.retry_after
        out.append(("Retry-After", str(seconds if seconds is not None else fallback_retry_after)))
    out.append(("Cache-Control", "no-store"))
    out.append(("Tunnelguard-Rule", verdict.rule))
    out.append(("Proxy-Status", proxy_status(upstream_status, verdict.rule)))
    if verdict.body == "keep":
        return Delivery(verdict.status, out, None)

    out = h.without(out, _DROP_ON_NEW_BODY)
    out.append(("Content-Type", CONTENT_TYPE))
    detail = f"the upstream answered {upstream_status} with an error in its body"
    if verdict.message:
        detail += f": {verdict.message}"
    body = problem_body(
        verdict.status,
        "tunnelled_error",
        detail,
        trace_id,
        # SPEC 6.2: exactly when the response carries Retry-After, which an upstream's
        # own header (kept, like every other one) does on any status
        retryable=h.get(out, "retry-after") is not None,
        extra={"rule": verdict.rule, "upstreamStatus": upstream_status},
        upstream_json=decoded_json,
    )
    return Delivery(verdict.status, out, body)
