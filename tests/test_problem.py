"""Tables for proxy.problem: W3C trace context and RFC 9457 problem bodies (SPEC 6.2)."""

from __future__ import annotations

import json
import re

import pytest

from proxy.wire.problem import CONTENT_TYPE, problem_body, title
from proxy.wire.trace import new_trace_id, trace_context

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"
NEW_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00")
HEX32 = re.compile(r"[0-9a-f]{32}")

# -- trace context -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "trace_id", "forwarded"),
    [
        (VALID, TRACE, VALID),
        (f"00-{TRACE}-{SPAN}-00", TRACE, f"00-{TRACE}-{SPAN}-00"),
        (f"00-{TRACE}-{SPAN}-ff", TRACE, f"00-{TRACE}-{SPAN}-ff"),  # unknown flags: kept
        (f"  {VALID}\t", TRACE, VALID),  # optional whitespace around a field value
        # a later version may append fields; what version 00 defines is read, all is kept
        (f"01-{TRACE}-{SPAN}-01", TRACE, f"01-{TRACE}-{SPAN}-01"),
        (
            f"cc-{TRACE}-{SPAN}-01-what-the-future-holds",
            TRACE,
            f"cc-{TRACE}-{SPAN}-01-what-the-future-holds",
        ),
    ],
)
def test_valid_traceparent_is_forwarded(header: str, trace_id: str, forwarded: str) -> None:
    assert trace_context(header) == (trace_id, forwarded)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("garbage", id="garbage"),
        pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", id="short-trace-id"),
        pytest.param(f"00-{TRACE}0-{SPAN}-01", id="long-trace-id"),
        pytest.param(f"00-{TRACE}-{SPAN[:-1]}-01", id="short-parent-id"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", id="short-flags"),
        pytest.param(f"0-{TRACE}-{SPAN}-01", id="short-version"),
        pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", id="uppercase-trace-id"),
        pytest.param(f"00-{TRACE}-{SPAN.upper()}-01", id="uppercase-parent-id"),
        pytest.param(f"0A-{TRACE}-{SPAN}-01", id="uppercase-version"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="zero-parent-id"),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", id="version-ff"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-extra", id="version-00-with-more-fields"),
        pytest.param(f"01-{TRACE}-{SPAN}-01extra", id="later-version-no-dash"),
        pytest.param(f"00_{TRACE}_{SPAN}_01", id="wrong-separator"),
        pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", id="non-hex"),
        pytest.param(f"00-{TRACE}-{SPAN}-01\x00", id="trailing-nul"),
        pytest.param(f"{VALID},{VALID}", id="two-values"),
    ],
)
def test_invalid_traceparent_starts_a_new_trace(header: str | None) -> None:
    trace_id, traceparent = trace_context(header)
    assert HEX32.fullmatch(trace_id)
    m = NEW_TRACEPARENT.fullmatch(traceparent)
    assert m is not None, traceparent
    assert m.group(1) == trace_id
    assert trace_id != "0" * 32 and m.group(2) != "0" * 16
    assert trace_id != TRACE and SPAN not in traceparent
    # a new trace each time
    again, again_parent = trace_context(header)
    assert again != trace_id and again_parent != traceparent


def test_new_trace_id() -> None:
    ids = {new_trace_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(HEX32.fullmatch(i) for i in ids)


# -- problem bodies ----------------------------------------------------------------------------


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
