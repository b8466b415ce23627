"""Tables for proxy.wire.tracecontext: W3C trace context (SPEC 6.2's traceId)."""

from __future__ import annotations

import re

import pytest

from proxy.wire.tracecontext import new_trace_id, trace_context, trace_context_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"
NEW_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00")
HEX32 = re.compile(r"[0-9a-f]{32}")


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


@pytest.mark.parametrize(
    ("fields", "kept"),
    [([VALID], True), ([], False), ([VALID, VALID], False), (["junk"], False)],
    ids=["one valid", "none", "two (W3C 3.2: invalid)", "malformed"],
)
def test_trace_context_of_the_field_lines(fields: list[str], kept: bool) -> None:
    trace_id, traceparent = trace_context_of(fields)
    assert (trace_id == TRACE and traceparent == VALID) is kept
    assert NEW_TRACEPARENT.fullmatch(traceparent) or kept


def test_new_trace_id() -> None:
    ids = {new_trace_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(HEX32.fullmatch(i) for i in ids)


# -- problem bodies ----------------------------------------------------------------------------
