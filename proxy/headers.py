"""Header handling at the proxy boundary (SPEC section 7, RFC 9110 7.6).

Header lists are `list[tuple[str, str]]` in wire order so that repeated headers
(`Set-Cookie`, `Via`) keep their order; names are compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[str, str]]

VIA = "1.1 tunnelguard"

# RFC 9110 7.6.1 plus the legacy ones every proxy strips (RFC 2616 13.5.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

_VERDICT_PREFIX = "tunnelguard-"


def _options(value: bytes) -> set[bytes]:
    """The options of one `Connection` line, lower case: header names that are hop-by-hop
    too (RFC 9110 7.6.1)."""
    return {t.strip() for t in value.lower().split(b",") if t.strip()}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.decode("latin-1") for t in _options(value.encode("latin-1")))
    return tokens


def _add(values: list[str], value: str) -> None:
    """Collect one line of a list header; an empty line would leave a stray ", "."""
    value = value.strip()
    if value:
        values.append(value)


def decode_raw(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    # latin-1 round-trips every byte: nothing the peer sent is altered
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str | None,
    scheme: str,
    upstream_host: str | None,
    traceparent: str,
    new_trace: bool = False,
) -> Headers:
    """Headers to send upstream: hop-by-hop removed, forwarding headers appended.

    `upstream_host` replaces the client's Host when `preserve_host: false`.  When
    `new_trace` is set the client's trace context was unusable, so its `tracestate`
    is dropped with it (W3C Trace Context 3.3).
    """
    headers = decode_raw(raw)
    drop = HOP_BY_HOP | _connection_tokens(headers)
    if new_trace:
        drop = drop | {"tracestate"}
    drop = drop | {"expect"}  # 100-continue is the proxy's to forward (client.Pool.send)
    out: Headers = []
    host = ""
    xff: list[str] = []
    xfp: list[str] = []
    xfh: list[str] = []
    via: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower in drop or lower == "traceparent":
            continue
        if lower == "host":
            host = value
            if upstream_host is not None:
                continue
        elif lower == "x-forwarded-for":
            _add(xff, value)
            continue
        elif lower == "x-forwarded-proto":
            _add(xfp, value)
            continue
        elif lower == "x-forwarded-host":
            _add(xfh, value)
            continue
        elif lower == "via":
            _add(via, value)
            continue
        out.append((name, value))
    if upstream_host is not None:
        out.append(("Host", upstream_host))
    # appended, never trusted: the client's values stay first, ours is last
    out.append(("X-Forwarded-For", ", ".join([*xff, client_ip or "unknown"])))
    out.append(("X-Forwarded-Proto", ", ".join([*xfp, scheme])))
    if host:
        out.append(("X-Forwarded-Host", ", ".join([*xfh, host])))
    elif xfh:
        out.append(("X-Forwarded-Host", ", ".join(xfh)))
    out.append(("Via", ", ".join([*via, VIA])))
    out.append(("traceparent", traceparent))
    return out


def _as_written(value: bytes) -> str:
    """A response header value as text that aiohttp's server writes back as the same
    bytes: it encodes header text as UTF-8, so valid UTF-8 (the usual non-ASCII case)
    round-trips exactly.  Other bytes >= 0x80 (obsolete Latin-1 text, RFC 9110 5.5) are
    read as Latin-1 and so reach the client re-encoded (docs/security.md)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


_RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length"})


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Upstream response headers to pass on: hop-by-hop, framing and any verdict
    the upstream tried to state (`Tunnelguard-*`) removed; `Via` appended.

    One pass over the raw bytes (this runs for every response): names listed in
    `Connection` are only known at the end, so they are filtered out afterwards."""
    kept: list[tuple[bytes, str, str]] = []
    listed: set[bytes] = set()
    via: list[str] = []
    for name, value in raw:
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower.startswith(b"tunnelguard-"):
            if lower == b"connection":
                listed |= _options(value)
            continue
        if lower == b"via":
            _add(via, _as_written(value))
            continue
        kept.append((lower, name.decode("latin-1"), _as_written(value)))
    out: Headers = [(n, v) for lower, n, v in kept if lower not in listed]
    out.append(("Via", ", ".join([*via, VIA])))
    return out


def get(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of `name`, or None."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def without(headers: Iterable[tuple[str, str]], names: frozenset[str]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in names]
