"""Client-side limits and request framing rules (SPEC 4.7 and 7): the pure decisions.

`Refusal`s are the answers tunnelguard gives on its own when a client breaks a limit or
frames a request ambiguously; `http1` applies them to connections.  Every refusal
closes the connection: after a framing error, a refused body or a head that was never
finished, the next bytes on it cannot be trusted to start a request (RFC 9112 6.3, 9.6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    """One answer of the table below: a status, the problem's `error` code, a detail."""

    status: int
    error: str
    detail: str


MALFORMED = Refusal(
    400, "malformed_request",
    "the request is malformed or its message framing is ambiguous (RFC 9112); it was not "
    "forwarded and the connection is closed",
)  # fmt: skip
HTTP10_TRANSFER_CODING = Refusal(
    400, "malformed_request",
    "an HTTP/1.0 request must not carry Transfer-Encoding: its framing cannot be trusted "
    "(RFC 9112 6.1); it was not forwarded and the connection is closed",
)  # fmt: skip
UNSUPPORTED_CODING = Refusal(
    501, "unsupported_transfer_coding",
    "only the chunked transfer coding is supported in requests (RFC 9112 6.1)",
)  # fmt: skip
HEAD_TIMEOUT = Refusal(
    408, "request_timeout", "the request head did not arrive within server.header_timeout"
)
HEAD_TOO_LARGE = Refusal(
    431, "request_head_too_large",
    "the request line and header fields are larger than server.max_head_bytes",
)  # fmt: skip
BODY_TOO_LARGE = Refusal(
    413, "request_body_too_large", "the request body is larger than server.max_request_body"
)
VERSION_NOT_SUPPORTED = Refusal(
    505, "http_version_not_supported",
    "only HTTP/1.0 and HTTP/1.1 are served on this listener (RFC 9110 15.6.6)",
)  # fmt: skip
INTERNAL = Refusal(500, "internal_error", "tunnelguard failed while handling the request")

# aiohttp's own parser limits, used when max_head_bytes is 0 (no total limit)
AIOHTTP_LINE_LIMIT = 8190
AIOHTTP_HEADER_COUNT = 128
_SMALLEST_FIELD_LINE = 4  # "a:" CRLF


def parser_limits(max_head_bytes: int) -> dict[str, int]:
    """aiohttp's per-line limits for a total head limit.

    No single line may exceed the total, and since a field line takes at least 4 bytes,
    the field count never refuses a head that fits in `max_head_bytes`: the total alone
    decides, as documented.  These bound what the parser buffers; the total itself is
    checked by the server (`head_size` and its byte count on the connection)."""
    if max_head_bytes <= 0:
        return {
            "max_line_size": AIOHTTP_LINE_LIMIT,
            "max_field_size": AIOHTTP_LINE_LIMIT,
            "max_headers": AIOHTTP_HEADER_COUNT,
        }
    return {
        "max_line_size": max_head_bytes,
        "max_field_size": max_head_bytes,
        "max_headers": max(1, max_head_bytes // _SMALLEST_FIELD_LINE),
    }


def head_size(method: str, target: str, headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a parsed request head as its shortest valid encoding:
    `METHOD SP target SP HTTP/1.1 CRLF`, `name:value CRLF` per field, the final CRLF.
    Never more than the bytes the client sent, so a head within the limit is never refused."""
    size = len(method) + len(target) + len("  HTTP/1.1\r\n\r\n")
    for name, value in headers:
        size += len(name) + len(value) + 3
    return size


def transfer_coding_refusal(
    version: tuple[int, int], transfer_encodings: Sequence[str]
) -> Refusal | None:
    """RFC 9112 6.1 for a request the parser accepted.  llhttp already refuses
    Content-Length with Transfer-Encoding, a final coding other than chunked and a
    repeated header; what it lets through is checked here:

    - Transfer-Encoding in an HTTP/1.0 request: "MUST treat the message as if the framing
      is faulty" -> 400;
    - codings before chunked (`gzip, chunked`): the proxy removes Transfer-Encoding
      (hop-by-hop) and could not forward them faithfully -> 501, as RFC 9112 6.1 says for
      a coding the server does not implement."""
    if not transfer_encodings:
        return None
    if version < (1, 1):
        return HTTP10_TRANSFER_CODING
    codings = [c.strip().lower() for value in transfer_encodings for c in value.split(",")]
    if codings == ["chunked"]:
        return None
    if codings[-1] != "chunked" or "chunked" in codings[:-1]:
        return MALFORMED  # llhttp refuses these first; kept so the rule stands alone
    return UNSUPPORTED_CODING


def declared_body_refusal(content_length: int | None, max_request_body: int) -> Refusal | None:
    """A declared Content-Length over the limit is refused before the upstream is
    contacted (0 = unlimited)."""
    if max_request_body and content_length is not None and content_length > max_request_body:
        return BODY_TOO_LARGE
    return None
