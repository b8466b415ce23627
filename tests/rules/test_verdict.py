"""Tables for proxy.rewrite: what a client receives once a rule matched (SPEC 4.3, 6.2)."""

from __future__ import annotations

import json

import orjson
import pytest

from proxy.rules.verdict import Delivery, Verdict, apply_verdict, proxy_status
from proxy.wire.headers import Headers

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_JSON = b'{"ok": false, "error": "ratelimited"}'

UPSTREAM: Headers = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Cache-Control", "max-age=60, public"),
    ("ETag", '"v1-abc"'),
    ("Set-Cookie", "a=1; Path=/"),
    ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("Expires", "Thu, 22 Oct 2015 07:28:00 GMT"),
    ("Set-Cookie", "b=2; Path=/; HttpOnly"),
    ("X-Request-Id", "r-1"),
    ("Via", "1.1 tunnelguard"),
]
# UPSTREAM without the caching headers a rewrite removes, in the same order
UPSTREAM_UNCACHED: Headers = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Set-Cookie", "a=1; Path=/"),
    ("Set-Cookie", "b=2; Path=/; HttpOnly"),
    ("X-Request-Id", "r-1"),
    ("Via", "1.1 tunnelguard"),
]


def _apply(
    verdict: Verdict,
    headers: Headers | None = None,
    *,
    upstream_status: int = 200,
    decoded_json: bytes = UPSTREAM_JSON,
    fallback: int = 5,
) -> Delivery:
    return apply_verdict(
        verdict,
        upstream_status,
        list(UPSTREAM if headers is None else headers),
        decoded_json=decoded_json,
        fallback_retry_after=fallback,
        trace_id=TRACE,
    )


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


# -- flag --------------------------------------------------------------------------------------


@pytest.mark.parametrize("upstream_status", [200, 201, 299])
@pytest.mark.parametrize(("status", "body"), [(401, "keep"), (503, "keep"), (429, "problem")])
def test_flag_changes_nothing_but_adds_the_verdict(
    upstream_status: int, status: int, body: str
) -> None:
    headers = list(UPSTREAM)
    verdict = Verdict("slack", status, "flag", body, 30, "ratelimited")
    delivery = apply_verdict(
        verdict,
        upstream_status,
        headers,
        decoded_json=UPSTREAM_JSON,
        fallback_retry_after=5,
        trace_id=TRACE,
    )
    assert delivery == Delivery(
        upstream_status,
        [*UPSTREAM, ("Tunnelguard-Rule", "slack"), ("Tunnelguard-Status", str(status))],
        None,
    )
    assert headers == UPSTREAM  # the caller's list is not modified


def test_flag_keeps_an_upstream_retry_after_and_adds_none() -> None:
    with_ra: Headers = [("Content-Type", "application/json"), ("Retry-After", "9")]
    delivery = _apply(Verdict("graphql", 429, "flag"), with_ra)
    assert delivery.headers == [
        *with_ra,
        ("Tunnelguard-Rule", "graphql"),
        ("Tunnelguard-Status", "429"),
    ]
    no_ra = _apply(Verdict("graphql", 503, "flag"), [("Content-Type", "application/json")])
    assert _values(no_ra.headers, "Retry-After") == []


# -- rewrite, body: keep -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_status", "status"), [(200, 401), (200, 404), (201, 502), (204, 500), (200, 504)]
)
def test_rewrite_keep(upstream_status: int, status: int) -> None:
    delivery = _apply(
        Verdict("slack", status, "rewrite", "keep", 30, "invalid_auth"),
        upstream_status=upstream_status,
    )
    assert delivery == Delivery(
        status,
        [
            *UPSTREAM_UNCACHED,
            ("Cache-Control", "no-store"),
            ("Tunnelguard-Rule", "slack"),
            (
                "Proxy-Status",
                f'tunnelguard; received-status={upstream_status}; details="rule slack"',
            ),
        ],
        None,
    )


def test_rewrite_caching_headers_removed_in_any_case() -> None:
    headers: Headers = [
        ("cache-control", "private"),
        ("CACHE-CONTROL", "max-age=5"),
        ("etag", 'W/"x"'),
        ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("EXPIRES", "0"),
        ("Age", "3"),
    ]
    delivery = _apply(Verdict("r", 502, "rewrite"), headers)
    assert delivery.headers == [
        ("Age", "3"),
        ("Cache-Control", "no-store"),
        ("Tunnelguard-Rule", "r"),
        ("Proxy-Status", 'tunnelguard; received-status=200; details="rule r"'),
    ]


def test_rewrite_keep_keeps_content_headers() -> None:
    headers: Headers = [
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),  # body: keep forwards the compressed bytes
        ("Vary", "Accept-Encoding"),
    ]
    delivery = _apply(Verdict("r", 400, "rewrite", "keep"), headers)
    assert delivery.headers[:3] == headers
    assert delivery.body is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("slack", 'tunnelguard; received-status=200; details="rule slack"'),
        ("error-envelope", 'tunnelguard; received-status=200; details="rule error-envelope"'),
        ('say "hi"', 'tunnelguard; received-status=200; details="rule say \\"hi\\""'),
        ("back\\slash", 'tunnelguard; received-status=200; details="rule back\\\\slash"'),
        ('\\"', 'tunnelguard; received-status=200; details="rule \\\\\\""'),
    ],
)
def test_proxy_status(rule: str, expected: str) -> None:
    assert proxy_status(200, rule) == expected
    delivery = _apply(Verdict(rule, 502, "rewrite"))
    assert _values(delivery.headers, "Proxy-Status") == [expected]
    assert _values(delivery.headers, "Tunnelguard-Rule") == [rule]


def test_proxy_status_received_status() -> None:
    assert proxy_status(204, "x") == 'tunnelguard; received-status=204; details="rule x"'


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "upstream_ra", "rule_ra", "fallback", "expected"),
    [
        # 429/503 always carry one: the upstream's, else the rule's, else the fallback
        (429, None, None, 5, ["5"]),
        (503, None, None, 7, ["7"]),
        (429, None, 30, 5, ["30"]),
        (503, None, 0, 5, ["0"]),
        (429, "120", 30, 5, ["120"]),
        (503, "Wed, 21 Oct 2015 07:28:00 GMT", None, 5, ["Wed, 21 Oct 2015 07:28:00 GMT"]),
        # other statuses get none added, and an upstream's own is kept like any header
        (401, None, 30, 5, []),
        (502, None, None, 5, []),
        (500, None, 30, 5, []),
        (504, "9", None, 5, ["9"]),
    ],
)
@pytest.mark.parametrize("body", ["keep", "problem"])
def test_retry_after(
    status: int,
    upstream_ra: str | None,
    rule_ra: int | None,
    fallback: int,
    expected: list[str],
    body: str,
) -> None:
    headers: Headers = [("Content-Type", "application/json")]
    if upstream_ra is not None:
        headers.append(("Retry-After", upstream_ra))
    delivery = _apply(Verdict("r", status, "rewrite", body, rule_ra), headers, fallback=fallback)
    assert delivery.status == status
    assert _values(delivery.headers, "Retry-After") == expected
    if body == "problem":
        assert delivery.body is not None
        assert json.loads(delivery.body)["retryable"] is bool(expected)


def test_upstream_retry_after_keeps_its_place_and_spelling() -> None:
    headers: Headers = [("retry-after", "11"), ("Content-Type", "application/json")]
    delivery = _apply(Verdict("r", 429, "rewrite", "keep", 99), headers)
    assert delivery.headers == [
        ("retry-after", "11"),
        ("Content-Type", "application/json"),
        ("Cache-Control", "no-store"),
        ("Tunnelguard-Rule", "r"),
        ("Proxy-Status", 'tunnelguard; received-status=200; details="rule r"'),
    ]


def test_added_retry_after_position() -> None:
    delivery = _apply(Verdict("r", 503, "rewrite", "keep", 12), [("X-A", "1")])
    assert delivery.headers == [
        ("X-A", "1"),
        ("Retry-After", "12"),
        ("Cache-Control", "no-store"),
        ("Tunnelguard-Rule", "r"),
        ("Proxy-Status", 'tunnelguard; received-status=200; details="rule r"'),
    ]


# -- rewrite, body: problem --------------------------------------------------------------------

CONTENT_HEADERS: Headers = [
    ("Content-Type", "application/json"),
    ("Content-Encoding", "br"),
    ("Content-Language", "en"),
    ("Content-Digest", "sha-256=:abc=:"),
    ("Repr-Digest", "sha-256=:abc=:"),
    ("Digest", "SHA-256=abc="),
    ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
    ("Content-Range", "bytes 0-10/11"),
    ("Set-Cookie", "a=1"),
    ("ETag", '"x"'),
    ("Set-Cookie", "b=2"),
    ("Vary", "Accept-Encoding"),
]


def test_problem_body() -> None:
    verdict = Verdict("slack", 429, "rewrite", "problem", None, "ratelimited")
    delivery = _apply(verdict, CONTENT_HEADERS, fallback=5)
    assert delivery.status == 429
    assert delivery.headers == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Vary", "Accept-Encoding"),
        ("Retry-After", "5"),
        ("Cache-Control", "no-store"),
        ("Tunnelguard-Rule", "slack"),
        ("Proxy-Status", 'tunnelguard; received-status=200; details="rule slack"'),
        ("Content-Type", "application/problem+json"),
    ]
    assert delivery.body is not None
    doc = json.loads(delivery.body)
    assert doc == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "the upstream answered 200 with an error in its body: ratelimited",
        "error": "tunnelled_error",
        "traceId": TRACE,
        "retryable": True,
        "rule": "slack",
        "upstreamStatus": 200,
        "upstream": {"ok": False, "error": "ratelimited"},
    }
    assert list(doc)[:7] == [
        "type",
        "title",
        "status",
        "detail",
        "error",
        "traceId",
        "retryable",
    ]


def test_problem_body_without_message_or_retry() -> None:
    verdict = Verdict("my-envelope", 502, "rewrite", "problem")
    delivery = _apply(verdict, [("Content-Type", "application/json")], upstream_status=201)
    assert delivery.body is not None
    assert json.loads(delivery.body) == {
        "type": "about:blank",
        "title": "Bad Gateway",
        "status": 502,
        "detail": "the upstream answered 201 with an error in its body",
        "error": "tunnelled_error",
        "traceId": TRACE,
        "retryable": False,
        "rule": "my-envelope",
        "upstreamStatus": 201,
        "upstream": {"ok": False, "error": "ratelimited"},
    }
    assert _values(delivery.headers, "Retry-After") == []
    assert _values(delivery.headers, "Content-Type") == ["application/problem+json"]


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(b'{"error":"x"}', id="compact"),
        pytest.param(b'{\n  "error" : "x",\n  "n": 1.50e3\n}', id="pretty"),
        pytest.param(b'[{"error": "x"}, {"result": "\\u00e9\xc3\xa9"}]', id="batch-unicode"),
        pytest.param(b'"just text"', id="string"),
        pytest.param(b'{"big": 123456789012345678901234567890}', id="bignum"),
    ],
)
def test_upstream_json_spliced_verbatim(upstream: bytes) -> None:
    delivery = _apply(Verdict("r", 500, "rewrite", "problem"), decoded_json=upstream)
    assert delivery.body is not None
    assert delivery.body.endswith(b',"upstream":' + upstream + b"}")
    assert json.loads(delivery.body)["upstream"] == json.loads(upstream)


def test_surrounding_whitespace_is_not_spliced() -> None:
    delivery = _apply(Verdict("r", 500, "rewrite", "problem"), decoded_json=b' \r\n{"a": 1}\n\t')
    assert delivery.body is not None
    assert delivery.body.endswith(b',"upstream":{"a": 1}}')
    assert json.loads(delivery.body)["upstream"] == {"a": 1}


def test_deep_upstream_json_is_spliced_not_reencoded() -> None:
    deep = b'{"error": ' + b"[" * 300 + b'"x"' + b"]" * 300 + b"}"
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(json.loads(deep))  # re-encoding could not produce this body
    delivery = _apply(Verdict("error-envelope", 502, "rewrite", "problem"), decoded_json=deep)
    assert delivery.body is not None
    doc = json.loads(delivery.body)  # the stdlib parser agrees it is valid JSON
    value = doc["upstream"]["error"]
    depth = 0
    while isinstance(value, list):
        (value,) = value
        depth += 1
    assert (depth, value) == (300, "x")
    assert doc["status"] == 502


def test_no_decoded_json_means_no_upstream_member() -> None:
    delivery = _apply(Verdict("r", 500, "rewrite", "problem"), decoded_json=b"")
    assert delivery.body is not None
    doc = json.loads(delivery.body)
    assert "upstream" not in doc
    assert doc["status"] == 500
