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

# What `response_headers` does with a header, by its name as received: computed once per
# name (an upstream sends the same few names on every response) and kept for at most
# _NAMES_KEPT names, which bounds the memory a hostile upstream's invented names can take.
_KEEP, _DROP, _CONNECTION, _VIA = range(4)
_NAMES_KEPT = 1024
_Name = tuple[int, bytes, str]  # (what to do, lower-case name, name as text)
_names: dict[bytes, _Name] = {}
_connection_options: dict[bytes, frozenset[bytes]] = {}  # the same, for Connection values


def _classify(name: bytes) -> _Name:
    lower = name.lower()
    if lower == b"connection":
        kind = _CONNECTION
    elif lower in _RESPONSE_DROP or lower.startswith(b"tunnelguard-"):
        kind = _DROP
    elif lower == b"via":
        kind = _VIA
    else:
        kind = _KEEP
    entry = (kind, lower, name.decode("latin-1"))
    if len(_names) < _NAMES_KEPT:
        _names[name] = entry
    return entry


def _listed(value: bytes) -> frozenset[bytes]:
    """The header names one `Connection` line lists, less those dropped anyway (so that
    the usual `keep-alive` lists nothing more to remove)."""
    listed = _connection_options.get(value)
    if listed is None:
        listed = frozenset(_options(value) - _RESPONSE_DROP)
        if len(_connection_options) < _NAMES_KEPT:
            _connection_options[value] = listed
    return listed


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
            listed |= _listed(value)
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
