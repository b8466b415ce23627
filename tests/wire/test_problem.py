"""Tables for proxy.wire.problem: RFC 9457 problem bodies (SPEC 6.2)."""

from __future__ import annotations

import json

import pytest

from proxy.wire.problem import CONTENT_TYPE, problem_body, title

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "Bad Request"),
        (404, "Not Found"),
        (413, "Request Entity Too Large"),
        (429, "Too Many Requests"),
        (431, "Request Header Fields Too Large"),
        (500, "Internal Server Error"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
        (599, "Error"),
        (499, "Error"),
    ],
)
def test_title(status: int, expected: str) -> None:
    assert title(status) == expected


@pytest.mark.parametrize(
    ("status", "error", "retryable", "title_"),
    [
        (502, "connection_refused", True, "Bad Gateway"),
        (503, "connection_limit_reached", True, "Service Unavailable"),
        (504, "http_response_timeout", False, "Gateway Timeout"),
        (599, "other", False, "Error"),
    ],
)
def test_problem_body(status: int, error: str, retryable: bool, title_: str) -> None:
    body = problem_body(status, error, "what happened", TRACE, retryable=retryable)
    doc = json.loads(body)
    assert doc == {
        "type": "about:blank",
        "title": title_,
        "status": status,
        "detail": "what happened",
        "error": error,
        "traceId": TRACE,
        "retryable": retryable,
    }
    assert list(doc) == ["type", "title", "status", "detail", "error", "traceId", "retryable"]


def test_problem_body_bytes() -> None:
    assert problem_body(502, "dns_error", "no such host", TRACE, retryable=False) == (
        b'{"type":"about:blank","title":"Bad Gateway","status":502,"detail":"no such host",'
        b'"error":"dns_error","traceId":"4bf92f3577b34da6a3ce929d0e0e4736","retryable":false}'
    )


def test_problem_body_escapes_detail() -> None:
    detail = 'quote " backslash \\ newline \n control \x01 unicode \u00e9\U0001f600'
    doc = json.loads(problem_body(500, "e", detail, TRACE, retryable=False))
    assert doc["detail"] == detail


def test_problem_body_extra_members() -> None:
    body = problem_body(
        429,
        "tunnelled_error",
        "d",
        TRACE,
        retryable=True,
        extra={"rule": "x", "upstreamStatus": 200},
    )
    doc = json.loads(body)
    assert list(doc)[7:] == ["rule", "upstreamStatus"]
    assert (doc["rule"], doc["upstreamStatus"], doc["retryable"]) == ("x", 200, True)


@pytest.mark.parametrize(
    ("upstream", "spliced"),
    [
        (b'{"error":"x"}', b'{"error":"x"}'),
        (b" \n[1, 2]\r\n", b"[1, 2]"),
        (b"null", b"null"),
        (b'"text"', b'"text"'),
    ],
)
def test_problem_body_splices_upstream(upstream: bytes, spliced: bytes) -> None:
    body = problem_body(502, "tunnelled_error", "d", TRACE, retryable=False, upstream_json=upstream)
    assert body.endswith(b',"retryable":false,"upstream":' + spliced + b"}")
    assert json.loads(body)["upstream"] == json.loads(upstream)


@pytest.mark.parametrize("upstream", [None, b"", b"  \r\n"])
def test_problem_body_without_upstream(upstream: bytes | None) -> None:
    body = problem_body(502, "e", "d", TRACE, retryable=False, upstream_json=upstream)
    assert body == problem_body(502, "e", "d", TRACE, retryable=False)
    assert "upstream" not in json.loads(body)


def test_content_type() -> None:
    assert CONTENT_TYPE == "application/problem+json"
