"""RFC 9457 problem details: the one body shape of every response tunnelguard generates."""

from __future__ import annotations

from http import HTTPStatus

import orjson

CONTENT_TYPE = "application/problem+json"
PHRASES = {s.value: s.phrase for s in HTTPStatus}  # status -> its RFC reason phrase


def title(status: int) -> str:
    return PHRASES.get(status, "Error")


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
