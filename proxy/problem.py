"""RFC 9457 problem details: the one body shape of every response tunnelguard generates."""

from __future__ import annotations

import random
import re
from http import HTTPStatus

import orjson

CONTENT_TYPE = "application/problem+json"

# version-traceid-parentid-flags; a later version may append "-..." fields (W3C Trace
# Context, "Versioning of traceparent": read what version 00 defines, keep the header)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def new_trace_id() -> str:
    """A random, non-zero trace id.  Trace ids need to be unique, not secret: Python's
    PRNG (seeded from the OS, reseeded in forked workers) costs no system call, where
    os.urandom costs one per id."""
    return "%032x" % (random.getrandbits(128) or 1)


def trace_context(traceparent: str | None) -> tuple[str, str]:
    """The trace id to report and the `traceparent` to send upstream (W3C Trace Context).

    A valid incoming header is forwarded unchanged; otherwise a new one is made.
    """
    if traceparent:
        value = traceparent.strip()
        m = _TRACEPARENT.fullmatch(value)
        if (
            m
            and m.group(1) != "ff"
            and (m.group(5) is None or m.group(1) != "00")  # version 00 is exactly 55 chars
            and m.group(2) != _ZERO_TRACE
            and m.group(3) != _ZERO_SPAN
        ):
            return m.group(2), value
    trace_id = new_trace_id()
    return trace_id, f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-00"


def title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int,
    error: str,
    detail: str,
    trace_id: str,
    *,
    retryable: bool,
    extra: dict[str, object] | None = None,
    upstream_json: bytes | None = None,
) -> bytes:
    """Serialize a problem document.  `upstream_json` (already valid JSON text) is
    spliced in under "upstream" without re-encoding it, so no depth or size limit of
    the encoder can make this fail."""
    doc: dict[str, object] = {
        "type": "about:blank",
        "title": title(status),
        "status": status,
        "detail": detail,
        "error": error,
        "traceId": trace_id,
        "retryable": retryable,
    }
    if extra:
        doc.update(extra)
    body = orjson.dumps(doc)
    upstream = upstream_json.strip() if upstream_json is not None else b""
    if not upstream:  # nothing to splice: `"upstream":}` would not be JSON
        return body
    return body[:-1] + b',"upstream":' + upstream + b"}"
