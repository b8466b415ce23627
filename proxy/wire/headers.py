"""Header handling at the proxy boundary (SPEC section 7, RFC 9110 7.6).

Header lists are `list[tuple[str, str]]` in wire order so that repeated headers
(`Set-Cookie`, `Via`) keep their order; names are compared case-insensitively.

Fast path (issue 9: each name classified once and remembered, one pass over the raw
bytes).  The plain rule it implements is `_reference_request` in tests/wire/test_headers.py,
compared with it over every rotation and prefix of a pool of awkward lines; the response side
is held to the tables there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from yarl import URL

Headers = list[tuple[str, str]]
_T = TypeVar("_T")

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

_VERDICT_PREFIX = b"tunnelguard-"  # an upstream's own verdict headers never pass (SPEC 7)

# Both directions classify each header name once and remember it, and remember what each
# `Connection` value lists: a peer sends the same few names and values every time.  At most
# _NAMES_KEPT entries per cache bound the memory a peer inventing names can take.
_NAMES_KEPT = 1024


def _remember(cache: dict[bytes, _T], key: bytes, value: _T) -> _T:
    if len(cache) < _NAMES_KEPT:
        cache[key] = value
    return value


def _options(value: bytes) -> set[bytes]:
    """The options of one `Connection` line, lower case: header names that are hop-by-hop
    too (RFC 9110 7.6.1)."""
    return {t.strip() for t in value.lower().split(b",") if t.strip()}


def _listed(
    value: bytes, cache: dict[bytes, frozenset[bytes]], dropped_anyway: frozenset[bytes]
) -> frozenset[bytes]:
    """The header names one `Connection` line lists, less those dropped anyway (so that
    the usual `keep-alive` lists nothing more to remove)."""
    listed = cache.get(value)
    if listed is None:
        listed = _remember(cache, value, frozenset(_options(value) - dropped_anyway))
    return listed


def _add(values: list[str], value: str) -> None:
    """Collect one line of a list header; an empty line would leave a stray ", "."""
    value = value.strip()
    if value:
        values.append(value)


# What `request_headers` does with a header, by its name as received.
(_R_KEEP, _R_DROP, _R_CONNECTION, _R_HOST, _R_XFF, _R_XFP, _R_XFH, _R_VIA,
 _R_TRACESTATE) = range(9)  # fmt: skip
_REQUEST_KINDS = {
    b"connection": _R_CONNECTION,
    b"host": _R_HOST,
    b"x-forwarded-for": _R_XFF,
    b"x-forwarded-proto": _R_XFP,
    b"x-forwarded-host": _R_XFH,
    b"via": _R_VIA,
    b"tracestate": _R_TRACESTATE,
}
# hop-by-hop, `expect` (100-continue is the proxy's to forward, upstream.pool.Pool.send) and
# `traceparent` (the proxy sends its own, below)
_REQUEST_DROPPED = frozenset(
    name.encode() for name in (HOP_BY_HOP - {"connection"}) | {"expect", "traceparent"}
)
_REQUEST_NOT_LISTED = _REQUEST_DROPPED | {b"connection"}  # removed whether listed or not
_Name = tuple[int, bytes, str]  # (what to do, lower-case name, name as text)
_request_names: dict[bytes, _Name] = {}
_request_options: dict[bytes, frozenset[bytes]] = {}  # Connection value -> names it lists


# SPEC 7: a name with `_` that reads as a framing or hop-by-hop header once `_` is `-`
# (`Transfer_Encoding`, `Content_Length`, `Connection`...) is dropped: CGI-style backends
# (WSGI/PHP environ) read both spellings as the same header, a smuggling vector.  nginx
# drops every such name by default; Envoy has `headers_with_underscores_action`.
_UNDERSCORE_LOOKALIKES = frozenset(n.encode() for n in HOP_BY_HOP | {"content-length"})


def _classify_request(name: bytes) -> _Name:
    lower = name.lower()
    kind = _REQUEST_KINDS.get(lower, _R_DROP if lower in _REQUEST_DROPPED else _R_KEEP)
    if kind == _R_KEEP and b"_" in lower and lower.replace(b"_", b"-") in _UNDERSCORE_LOOKALIKES:
        kind = _R_DROP
    return _remember(_request_names, name, (kind, lower, name.decode("latin-1")))


def request_headers(
    raw: Sequence[tuple[bytes, bytes]],
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

    One pass over the raw bytes (this runs for every request); names listed in a
    `Connection` header (RFC 9110 7.6.1) are only known at its end, so a request that
    lists any is passed over once more, dropping them.
    """
    names = _request_names
    listed: frozenset[bytes] = frozenset()  # dropped because `Connection` names them
    while True:
        out: Headers = []
        options: set[bytes] = set()
        host = ""
        xff: list[str] = []
        xfp: list[str] = []
        xfh: list[str] = []
        via: list[str] = []
        for name, value in raw:
            kind, lower, text = names.get(name) or _classify_request(name)
            if kind == _R_KEEP:
                if lower not in listed:
                    out.append((text, value.decode("latin-1")))  # latin-1: every byte kept
                continue
            if kind == _R_CONNECTION:
                options.update(_listed(value, _request_options, _REQUEST_NOT_LISTED))
                continue
            if kind == _R_DROP or lower in listed:
                continue
            decoded = value.decode("latin-1")
            if kind == _R_HOST:
                host = decoded
                if upstream_host is None:
                    out.append((text, decoded))
            elif kind == _R_XFF:
                _add(xff, decoded)
            elif kind == _R_XFP:
                _add(xfp, decoded)
            elif kind == _R_XFH:
                _add(xfh, decoded)
            elif kind == _R_VIA:
                _add(via, decoded)
            elif not new_trace:  # _R_TRACESTATE
                out.append((text, decoded))
        if options <= listed:
            break
        listed = frozenset(options)
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

# What `response_headers` does with a header, by its name as received.
_KEEP, _DROP, _CONNECTION, _VIA = range(4)
_names: dict[bytes, _Name] = {}
_connection_options: dict[bytes, frozenset[bytes]] = {}  # Connection value -> names it lists


def _classify(name: bytes) -> _Name:
    lower = name.lower()
    if lower == b"connection":
        kind = _CONNECTION
    elif lower in _RESPONSE_DROP or lower.startswith(_VERDICT_PREFIX):
        kind = _DROP
    elif lower == b"via":
        kind = _VIA
    else:
        kind = _KEEP
    return _remember(_names, name, (kind, lower, name.decode("latin-1")))


def response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Upstream response headers to pass on: hop-by-hop, framing and any verdict
    the upstream tried to state (`Tunnelguard-*`) removed; `Via` appended.

    One pass over the raw bytes (this runs for every response): names listed in
    `Connection` are only known at the end, so they are filtered out afterwards."""
    kept: list[tuple[_Name, str]] = []
    listed: frozenset[bytes] = frozenset()
    via: list[str] = []
    names = _names
    for name, value in raw:
        entry = names.get(name) or _classify(name)
        kind = entry[0]
        if kind == _KEEP:
            try:  # _as_written, inlined: this is the loop every response runs
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("latin-1")
            kept.append((entry, text))
        elif kind == _CONNECTION:
            listed |= _listed(value, _connection_options, _RESPONSE_DROP)
        elif kind == _VIA:
            _add(via, _as_written(value))
    if listed:
        out = [(entry[2], text) for entry, text in kept if entry[1] not in listed]
    else:
        out = [(entry[2], text) for entry, text in kept]
    out.append(("Via", ", ".join([*via, VIA])) if via else ("Via", VIA))
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


def authority(url: URL) -> str:
    """`host[:port]` as a Host header names it (RFC 9110 7.2): IPv6 in brackets, the
    scheme's default port left out."""
    text = url.raw_host or ""
    if ":" in text:
        text = f"[{text}]"
    if url.port is not None and url.port != {"http": 80, "https": 443}.get(url.scheme):
        text += f":{url.port}"
    return text


def origin_form(target: str) -> tuple[str, str] | None:
    """(authority, path and query) of an absolute-form request target such as
    `http://api.example/v1?x=1` (RFC 9112 3.2.2), or None for any other form.  An origin
    server uses the target's authority instead of `Host` and an origin gets only the path
    and query (RFC 9112 3.2.1); a deprecated userinfo part (RFC 9110 4.2.4) is dropped."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    cut = len(rest)
    for stop in ("/", "?"):
        at = rest.find(stop)
        if 0 <= at < cut:
            cut = at
    authority = rest[:cut].rpartition("@")[2]
    if not authority:
        return None
    tail = rest[cut:]
    return authority, tail if tail.startswith("/") else "/" + tail
