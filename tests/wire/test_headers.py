"""Tables for proxy.wire.headers: what crosses the proxy, both ways (SPEC 7, RFC 9110 7.6)."""

from __future__ import annotations

import pytest

from proxy.wire import headers as h
from proxy.wire.headers import Headers

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORWARDED: Headers = [
    ("X-Forwarded-For", "127.0.0.1"),
    ("X-Forwarded-Proto", "http"),
]


def _raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def _request(
    *pairs: tuple[str, str],
    client_ip: str | None = "127.0.0.1",
    scheme: str = "http",
    upstream_host: str | None = None,
    traceparent: str = TP,
) -> Headers:
    return h.request_headers(
        _raw(*pairs),
        client_ip=client_ip,
        scheme=scheme,
        upstream_host=upstream_host,
        traceparent=traceparent,
    )


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


# -- request headers ---------------------------------------------------------------------------


def test_request_minimal() -> None:
    assert _request(("Host", "api.example"), ("Accept", "*/*")) == [
        ("Host", "api.example"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "api.example"),
        ("Via", "1.1 tunnelguard"),
        ("traceparent", TP),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Connection", "keep-alive"),
        ("connection", "close"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("te", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("PROXY-AUTHORIZATION", "Bearer t"),
        ("Trailer", "Expires"),
        ("Proxy-Authenticate", "Basic"),
    ],
)
def test_request_hop_by_hop_removed(name: str, value: str) -> None:
    out = _request(("Host", "h"), (name, value), ("Accept", "*/*"))
    assert out[:2] == [("Host", "h"), ("Accept", "*/*")]
    assert _values(out, name) == []


@pytest.mark.parametrize(
    ("connection", "dropped"),
    [
        ("close, X-Secret", ["X-Secret"]),
        ("X-SECRET", ["X-Secret"]),
        (" x-secret ,, keep-alive ", ["X-Secret"]),
        ("X-Secret, X-Other", ["X-Secret", "X-Other"]),
        ("close", []),
    ],
)
def test_request_connection_options_removed(connection: str, dropped: list[str]) -> None:
    out = _request(
        ("Host", "h"),
        ("X-Secret", "s3cret"),
        ("Connection", connection),
        ("X-Other", "o"),
        ("Authorization", "Bearer t"),
    )
    kept = [(n, v) for n, v in [("X-Secret", "s3cret"), ("X-Other", "o")] if n not in dropped]
    assert out[: 2 + len(kept)] == [("Host", "h"), *kept, ("Authorization", "Bearer t")]
    for name in dropped:
        assert _values(out, name) == []
    assert _values(out, "Connection") == []


def test_request_connection_on_two_lines() -> None:
    out = _request(("Connection", "x-a"), ("X-A", "1"), ("X-B", "2"), ("Connection", "X-B"))
    assert out == [*FORWARDED, ("Via", "1.1 tunnelguard"), ("traceparent", TP)]


@pytest.mark.parametrize(
    ("incoming", "client_ip", "expected"),
    [
        ([], "127.0.0.1", "127.0.0.1"),
        ([], "::1", "::1"),
        ([], None, "unknown"),
        (["1.2.3.4"], "127.0.0.1", "1.2.3.4, 127.0.0.1"),
        (["1.2.3.4, 10.0.0.1"], "127.0.0.1", "1.2.3.4, 10.0.0.1, 127.0.0.1"),
        (["1.2.3.4", "5.6.7.8"], "127.0.0.1", "1.2.3.4, 5.6.7.8, 127.0.0.1"),
        ([" 1.2.3.4 "], "127.0.0.1", "1.2.3.4, 127.0.0.1"),
        ([""], "127.0.0.1", "127.0.0.1"),  # an empty line leaves no stray comma
        (["", "1.2.3.4"], "10.0.0.9", "1.2.3.4, 10.0.0.9"),
    ],
)
def test_request_x_forwarded_for(incoming: list[str], client_ip: str | None, expected: str) -> None:
    out = _request(("Host", "h"), *[("X-Forwarded-For", v) for v in incoming], client_ip=client_ip)
    assert _values(out, "X-Forwarded-For") == [expected]


def test_request_x_forwarded_for_any_case() -> None:
    out = _request(("x-forwarded-for", "1.1.1.1"), ("X-FORWARDED-FOR", "2.2.2.2"))
    assert out[0] == ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 127.0.0.1")


@pytest.mark.parametrize(
    ("incoming", "scheme", "expected"),
    [
        ([], "http", "http"),
        ([], "https", "https"),
        (["https"], "http", "https, http"),
        (["https", "http"], "https", "https, http, https"),
    ],
)
def test_request_x_forwarded_proto(incoming: list[str], scheme: str, expected: str) -> None:
    out = _request(*[("X-Forwarded-Proto", v) for v in incoming], scheme=scheme)
    assert _values(out, "X-Forwarded-Proto") == [expected]


@pytest.mark.parametrize(
    ("incoming", "host", "upstream_host", "expected"),
    [
        ([], "api.example", None, ["api.example"]),
        ([], "api.example:8443", "backend:3000", ["api.example:8443"]),  # the client's host
        (["edge.example"], "api.example", None, ["edge.example, api.example"]),
        (["a", "b"], "c", None, ["a, b, c"]),
        (["edge.example"], None, None, ["edge.example"]),
        ([], None, None, []),
        ([], None, "backend:3000", []),
    ],
)
def test_request_x_forwarded_host(
    incoming: list[str], host: str | None, upstream_host: str | None, expected: list[str]
) -> None:
    pairs = [("X-Forwarded-Host", v) for v in incoming]
    if host is not None:
        pairs.insert(0, ("Host", host))
    out = _request(*pairs, upstream_host=upstream_host)
    assert _values(out, "X-Forwarded-Host") == expected


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        ([], "1.1 tunnelguard"),
        (["1.0 other"], "1.0 other, 1.1 tunnelguard"),
        (["1.0 a", "1.1 b (comment)"], "1.0 a, 1.1 b (comment), 1.1 tunnelguard"),
        (["1.1 a, 1.1 b"], "1.1 a, 1.1 b, 1.1 tunnelguard"),
    ],
)
def test_request_via(incoming: list[str], expected: str) -> None:
    out = _request(("Host", "h"), *[("via", v) for v in incoming])
    assert _values(out, "Via") == [expected]
    assert out[-2] == ("Via", expected)


def test_request_host_kept_in_place() -> None:
    out = _request(("Accept", "a"), ("Host", "api.example:8080"), ("X-A", "1"))
    assert out[:3] == [("Accept", "a"), ("Host", "api.example:8080"), ("X-A", "1")]
    assert _values(out, "Host") == ["api.example:8080"]


def test_request_host_replaced() -> None:
    out = _request(
        ("Accept", "a"), ("host", "api.example"), ("X-A", "1"), upstream_host="backend:3000"
    )
    assert out == [
        ("Accept", "a"),
        ("X-A", "1"),
        ("Host", "backend:3000"),
        *FORWARDED,
        ("X-Forwarded-Host", "api.example"),
        ("Via", "1.1 tunnelguard"),
        ("traceparent", TP),
    ]


def test_request_host_added_when_the_client_sent_none() -> None:
    out = _request(("Accept", "a"), upstream_host="backend")
    assert _values(out, "Host") == ["backend"]


@pytest.mark.parametrize(
    "incoming",
    [
        [],
        [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        [("Traceparent", "garbage")],
        [("TRACEPARENT", "a"), ("traceparent", "b")],
    ],
)
def test_request_traceparent_replaced(incoming: list[tuple[str, str]]) -> None:
    out = _request(("Host", "h"), *incoming, ("X-A", "1"))
    assert [(k, v) for k, v in out if k.lower() == "traceparent"] == [("traceparent", TP)]
    assert out[-1] == ("traceparent", TP)


def test_request_tracestate_passes() -> None:
    out = _request(("tracestate", "vendor=abc"))
    assert _values(out, "tracestate") == ["vendor=abc"]


def test_request_repeated_headers_and_case_preserved() -> None:
    pairs = [
        ("Host", "h"),
        ("Cookie", "a=1"),
        ("X-Custom", "one"),
        ("accept", "x"),
        ("cookie", "b=2"),
        ("X-CUSTOM", "two"),
        ("Content-Length", "3"),
        ("Idempotency-Key", "k"),
    ]
    out = _request(*pairs)
    assert out[: len(pairs)] == pairs


def test_request_everything_at_once() -> None:
    out = _request(
        ("Host", "api.example"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("User-Agent", "curl/8"),
        ("X-Forwarded-Proto", "https"),
        ("Via", "1.0 other"),
        ("Keep-Alive", "timeout=5"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("X-Forwarded-Host", "edge.example"),
        ("Transfer-Encoding", "chunked"),
        ("Accept", "application/json"),
        client_ip="10.0.0.7",
        scheme="http",
    )
    assert out == [
        ("Host", "api.example"),
        ("User-Agent", "curl/8"),
        ("Accept", "application/json"),
        ("X-Forwarded-For", "1.2.3.4, 10.0.0.7"),
        ("X-Forwarded-Proto", "https, http"),
        ("X-Forwarded-Host", "edge.example, api.example"),
        ("Via", "1.0 other, 1.1 tunnelguard"),
        ("traceparent", TP),
    ]


@pytest.mark.parametrize(
    ("listed", "gone"),
    [
        ("Host", "Host"),  # nor a X-Forwarded-Host made from it
        ("X-Forwarded-For", "X-Forwarded-For"),  # the client's value; ours is still added
        ("Via", "Via"),
        ("tracestate", "tracestate"),
        ("close", "Close"),  # "close" is an option and a (reserved) field name alike
    ],
)
def test_request_connection_may_name_any_header(listed: str, gone: str) -> None:
    out = _request(
        (gone, "client-value"), ("Connection", listed), ("Accept", "*/*"), client_ip="10.0.0.1"
    )
    assert ("Accept", "*/*") in out
    assert all(value != "client-value" for _, value in out)
    assert _values(out, "X-Forwarded-For") == ["10.0.0.1"]
    assert _values(out, "Via") == ["1.1 tunnelguard"]
    assert _values(out, "X-Forwarded-Host") == []


def _reference_request(pairs: list[tuple[str, str]], upstream_host: str | None) -> Headers:
    """SPEC 7 for a request, written plainly (no caching, several passes): what
    `request_headers` must equal."""
    listed = {
        t.strip().lower() for n, v in pairs if n.lower() == "connection" for t in v.split(",")
    }
    drop = set(h.HOP_BY_HOP) | listed | {"expect", "traceparent"}
    lookalikes = set(h.HOP_BY_HOP) | {"content-length"}  # SPEC 7: `_` read as `-`
    keep = [
        (n, v)
        for n, v in pairs
        if n.lower() not in drop and not ("_" in n and n.lower().replace("_", "-") in lookalikes)
    ]
    special = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via"}

    def values(name: str) -> list[str]:
        return [v.strip() for n, v in keep if n.lower() == name and v.strip()]

    hosts = [v for n, v in keep if n.lower() == "host"]
    out = [(n, v) for n, v in keep if n.lower() not in special - {"host"}]
    if upstream_host is not None:
        out = [(n, v) for n, v in out if n.lower() != "host"] + [("Host", upstream_host)]
    out.append(("X-Forwarded-For", ", ".join([*values("x-forwarded-for"), "127.0.0.1"])))
    out.append(("X-Forwarded-Proto", ", ".join([*values("x-forwarded-proto"), "http"])))
    xfh = values("x-forwarded-host") + hosts[-1:]  # the last Host line wins, as before
    if xfh:
        out.append(("X-Forwarded-Host", ", ".join(xfh)))
    out.append(("Via", ", ".join([*values("via"), "1.1 tunnelguard"])))
    return [*out, ("traceparent", TP)]


_POOL = [
    ("Host", "h"),
    ("Accept", "*/*"),
    ("X-Forwarded-For", "1.2.3.4"),
    ("via", "1.0 edge"),
    ("Connection", "x-a"),
    ("X-A", "1"),
    ("Connection", "keep-alive, Host"),
    ("Keep-Alive", "timeout=5"),
    ("tracestate", "k=v"),
    ("Connection", "close"),
    ("x-forwarded-host", "outer"),
    ("Transfer_Encoding", "chunked"),
    ("X_Custom", "kept"),
]


@pytest.mark.parametrize("upstream_host", [None, "up.internal"])
@pytest.mark.parametrize("start", range(len(_POOL)))
def test_request_headers_match_the_plain_reference(start: int, upstream_host: str | None) -> None:
    """Every rotation of a pool of awkward lines, and every prefix of it."""
    rotated = _POOL[start:] + _POOL[:start]
    for end in range(len(rotated) + 1):
        pairs = rotated[:end]
        assert _request(*pairs, upstream_host=upstream_host) == _reference_request(
            pairs, upstream_host
        ), pairs


def test_request_names_past_the_remembered_ones_are_still_filtered() -> None:
    """As for responses: a client inventing names cannot grow the proxy's memory."""
    for i in range(h._NAMES_KEPT + 50):
        out = _request(
            (f"X-Invented-{i}", "1"), ("Connection", f"x-gone-{i}"), (f"X-Gone-{i}", "2")
        )
        assert out == [
            (f"X-Invented-{i}", "1"),
            *FORWARDED,
            ("Via", "1.1 tunnelguard"),
            ("traceparent", TP),
        ]
    assert len(h._request_names) <= h._NAMES_KEPT
    assert len(h._request_options) <= h._NAMES_KEPT


def test_request_latin1_round_trip() -> None:
    raw = [(b"Host", b"h"), (b"X-Name", b"caf\xe9 \xff\x80")]
    out = h.request_headers(
        raw, client_ip="127.0.0.1", scheme="http", upstream_host=None, traceparent=TP
    )
    assert out[1] == ("X-Name", "caf\u00e9 \u00ff\u0080")
    assert out[1][1].encode("latin-1") == b"caf\xe9 \xff\x80"


# -- response headers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("transfer-encoding", "gzip, chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "close"),
        ("Proxy-Authenticate", "Basic realm=x"),
        ("Trailer", "Server-Timing"),
        ("TE", "trailers"),
        ("Content-Length", "42"),
        ("content-length", "42"),
        ("Tunnelguard-Rule", "slack"),
        ("tunnelguard-status", "401"),
        ("TUNNELGUARD-Anything", "x"),
    ],
)
def test_response_removed(name: str, value: str) -> None:
    out = h.response_headers(_raw(("Content-Type", "application/json"), (name, value)))
    assert out == [("Content-Type", "application/json"), ("Via", "1.1 tunnelguard")]


def test_response_connection_options_removed() -> None:
    out = h.response_headers(
        _raw(("Connection", "close, X-Internal"), ("x-internal", "1"), ("X-Public", "2"))
    )
    assert out == [("X-Public", "2"), ("Via", "1.1 tunnelguard")]


@pytest.mark.parametrize(
    ("incoming", "expected"),
    [
        ([], "1.1 tunnelguard"),
        (["1.1 varnish"], "1.1 varnish, 1.1 tunnelguard"),
        (["1.1 a", "1.0 b"], "1.1 a, 1.0 b, 1.1 tunnelguard"),
        ([""], "1.1 tunnelguard"),
    ],
)
def test_response_via(incoming: list[str], expected: str) -> None:
    out = h.response_headers(_raw(("X-A", "1"), *[("Via", v) for v in incoming]))
    assert out == [("X-A", "1"), ("Via", expected)]


def test_response_keeps_every_other_header_in_order() -> None:
    pairs = [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1; Path=/"),
        ("Cache-Control", "max-age=60"),
        ("set-cookie", "b=2; HttpOnly"),
        ("ETag", '"x"'),
        ("Content-Encoding", "gzip"),
        ("Set-Cookie", "c=3; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
        ("Retry-After", "5"),
        ("tunnelguard", "not a verdict header"),  # only `Tunnelguard-*` is reserved
        ("X-Tunnelguard-Rule", "kept"),
    ]
    out = h.response_headers(_raw(*pairs, ("Content-Length", "10"), ("Tunnelguard-Rule", "x")))
    assert out == [*pairs, ("Via", "1.1 tunnelguard")]
    assert _values(out, "Set-Cookie") == [
        "a=1; Path=/",
        "b=2; HttpOnly",
        "c=3; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
    ]


def test_response_names_past_the_remembered_ones_are_still_filtered() -> None:
    """Names are classified once and remembered, up to a bound: an upstream inventing a
    new name per response cannot grow the proxy's memory, nor change what is filtered."""
    for i in range(h._NAMES_KEPT + 50):
        raw = [(f"X-Invented-{i}".encode(), b"1"), (b"Connection", f"x-gone-{i}".encode())]
        raw += [(f"X-Gone-{i}".encode(), b"2"), (b"KEEP-ALIVE", b"timeout=5")]
        assert h.response_headers(raw) == [(f"X-Invented-{i}", "1"), ("Via", "1.1 tunnelguard")]
    assert len(h._names) <= h._NAMES_KEPT
    assert len(h._connection_options) <= h._NAMES_KEPT


def test_response_latin1_round_trip() -> None:
    raw = [(b"Content-Disposition", b'attachment; filename="r\xe9sum\xe9.json"'), (b"X", b"\xff")]
    out = h.response_headers(raw)
    assert out == [
        ("Content-Disposition", 'attachment; filename="r\u00e9sum\u00e9.json"'),
        ("X", "\u00ff"),
        ("Via", "1.1 tunnelguard"),
    ]
    assert [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out[:2]] == raw


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("retry-after", "1"), ("RETRY-AFTER", "1"), ("X-A", "a"), ("missing", None)],
)
def test_get_first_value_any_case(name: str, expected: str | None) -> None:
    headers: Headers = [("X-A", "a"), ("Retry-After", "1"), ("retry-after", "2")]
    assert h.get(headers, name) == expected


def test_without() -> None:
    headers: Headers = [("ETag", "1"), ("X-A", "a"), ("etag", "2"), ("Cache-Control", "c")]
    assert h.without(headers, frozenset({"etag", "cache-control"})) == [("X-A", "a")]
    assert headers == [("ETag", "1"), ("X-A", "a"), ("etag", "2"), ("Cache-Control", "c")]


@pytest.mark.parametrize(
    "name",
    [
        "Transfer_Encoding", "transfer_encoding", "TRANSFER_ENCODING", "Content_Length",
        "Connection_", "_Connection", "Keep_Alive", "Proxy_Connection", "Upgrade", "TE",
        "Trailer", "Proxy_Authorization",
    ],
)  # fmt: skip
def test_request_underscore_lookalikes_of_framing_headers_are_dropped(name: str) -> None:
    """SPEC 7: `_` read as `-` by CGI-style backends makes these framing or hop-by-hop
    headers, a smuggling vector; `Connection_`/`_Connection` read as `connection-` and
    `-connection`, which no backend folds, so they pass."""
    out = _request(("Host", "h"), (name, "chunked"), ("Accept", "*/*"))
    folded = name.lower().replace("_", "-")
    dropped = folded in h.HOP_BY_HOP | {"content-length"}
    assert any(n == name for n, _ in out) is not dropped, out
    assert ("Accept", "*/*") in out


@pytest.mark.parametrize("name", ["X_Custom", "My_Header", "Content_Type", "Accept_Encoding"])
def test_request_other_underscore_names_pass(name: str) -> None:
    out = _request(("Host", "h"), (name, "v"))
    assert (name, "v") in out


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://api.example/v1/users?x=1", ("api.example", "/v1/users?x=1")),
        ("HTTPS://api.example:8443/v1", ("api.example:8443", "/v1")),
        ("http://api.example", ("api.example", "/")),
        ("http://api.example?x=1", ("api.example", "/?x=1")),
        ("http://user:pass@api.example/p", ("api.example", "/p")),  # RFC 9110 4.2.4
        ("http://[::1]:8080/p", ("[::1]:8080", "/p")),
        ("/v1/users", None),  # origin-form
        ("*", None),  # asterisk-form
        ("api.example:443", None),  # authority-form (CONNECT)
        ("ftp://api.example/p", None),
        ("http:///p", None),  # no authority
    ],
)
def test_origin_form_of_an_absolute_target(target: str, expected: tuple[str, str] | None) -> None:
    """RFC 9112 3.2.2: the authority an absolute-form target names, and the path and query
    an origin gets (3.2.1)."""
    assert h.origin_form(target) == expected
