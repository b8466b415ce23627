"""The first event of an event stream (proxy/rules/events.py): a table of streams as real
APIs and the WHATWG standard write them, and a Hypothesis property holding the incremental
parser, fed any split of any byte stream, to `reference_first_event`, a plain parser of the
whole stream."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.rules.events import NDJSON, SSE, Event, EventScanner, FirstEvent

NO_LIMIT = 1 << 30


def reference_first_event(kind: str, stream: bytes, limit: int = NO_LIMIT) -> Event | None:
    """WHATWG "Interpreting an event stream" (SSE) or JSON Lines (NDJSON) over the whole
    stream: split into lines, handle them in order, stop at the first dispatch."""
    offset = 3 if stream.startswith(b"\xef\xbb\xbf") else 0
    name, data, has_data = b"", b"", False
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", stream[offset:]):
        line = match.group(1)
        end = offset + match.start(2) + 1  # after the CR or LF that ends it
        if end > limit:
            return None
        if kind == NDJSON:
            if line.strip():
                return Event("", line, end)
            continue
        if not line:
            if has_data:
                return Event(name.decode("utf-8", "replace") or "message", data[:-1], end)
            name = b""
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data += value + b"\n"
            has_data = True
        elif field == b"event":
            name = value
    return None


def fed(kind: str, chunks: list[bytes], limit: int = NO_LIMIT) -> tuple[Event | None, bool]:
    parser = FirstEvent(kind, limit)
    event = None
    for chunk in chunks:
        event = parser.feed(chunk)
        if event is not None or parser.exhausted:
            break
    return event, parser.exhausted


# Real published error events (documentation of the APIs that send them)
ANTHROPIC_OVERLOADED = (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "Overloaded"}}\n\n'
)
OPENAI_RATE_LIMIT = (
    b'data: {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}\n\n'
    b"data: [DONE]\n\n"
)

TABLE = [
    # (kind, stream, expected name, expected data, expected end) ; None: no event
    (SSE, ANTHROPIC_OVERLOADED, "error", ANTHROPIC_OVERLOADED[19:-2], len(ANTHROPIC_OVERLOADED)),
    (SSE, OPENAI_RATE_LIMIT, "message", OPENAI_RATE_LIMIT[6:-16], len(OPENAI_RATE_LIMIT) - 14),
    (SSE, b": keep-alive\n\ndata: 1\n\n", "message", b"1", 23),
    (SSE, b"event: ping\n\ndata: x\n\n", "message", b"x", 22),  # no data: name reset
    (SSE, b"data: a\ndata: b\r\n\r\n", "message", b"a\nb", 18),
    (SSE, b"data:a\rdata:  b\r\r", "message", b"a\n b", 17),
    (SSE, b"\xef\xbb\xbfdata: {}\n\n", "message", b"{}", 13),
    (SSE, b"data\n\n", "message", b"", 6),  # a field without a colon: empty value
    (SSE, b"id: 7\nretry: 10\nfoo: bar\ndata: z\n\n", "message", b"z", 34),
    (SSE, b"data: never dispatched\n", None, None, None),
    (SSE, b"event: error\n\n", None, None, None),
    (NDJSON, b'{"error": "quota"}\n{"ok": 1}\n', "", b'{"error": "quota"}', 19),
    (NDJSON, b'\n  \r\n{"a": 1}\r\n', "", b'{"a": 1}', 14),
    (NDJSON, b'{"incomplete": ', None, None, None),
]


@pytest.mark.parametrize(("kind", "stream", "name", "data", "end"), TABLE)
def test_the_first_event_of_real_streams(
    kind: str, stream: bytes, name: str | None, data: bytes | None, end: int | None
) -> None:
    expected = None if name is None else Event(name, data or b"", end or 0)
    assert reference_first_event(kind, stream) == expected
    for cut in range(len(stream) + 1):  # split at every byte
        assert fed(kind, [stream[:cut], stream[cut:]])[0] == expected, cut
    assert fed(kind, [bytes([b]) for b in stream])[0] == expected  # a byte at a time


def test_the_bound_is_the_event_end() -> None:
    stream = b"data: 12345\n\n"  # the event ends at byte 13
    assert fed(SSE, [stream], limit=13) == (Event("message", b"12345", 13), False)
    assert fed(SSE, [stream], limit=12) == (None, True)
    assert fed(SSE, [stream[:6], stream[6:]], limit=12) == (None, True)
    endless = FirstEvent(SSE, 1000)
    for _ in range(100):
        if endless.feed(b"data: " + b"x" * 50 + b"\n") is not None or endless.exhausted:
            break
    assert endless.exhausted and endless.event is None


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="not an event stream kind"):
        FirstEvent("json", 10)


_PIECES = st.sampled_from(
    [b"data", b"data:", b"data: ", b"event", b"event: error", b":", b": c", b"id: 1",
     b"retry: 5", b"x", b"{}", b'{"error": {"type": "overloaded_error"}}', b"\r", b"\n",
     b"\r\n", b"\r\n\r\n", b"\n\n", b"\xef\xbb\xbf", b" ", b"\xff", b"\x00"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from([SSE, NDJSON]),
    stream=st.one_of(st.lists(_PIECES, max_size=30).map(b"".join), st.binary(max_size=200)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    limit=st.one_of(st.just(NO_LIMIT), st.integers(min_value=0, max_value=120)),
)
def test_any_split_of_any_stream_gives_the_reference_event(
    kind: str, stream: bytes, cuts: list[int], limit: int
) -> None:
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    event, exhausted = fed(kind, chunks, limit)
    expected = reference_first_event(kind, stream, limit)
    if expected is None and not exhausted:
        # the reference read the whole stream; the parser must not have found more, and
        # what it held stays within the bound
        assert event is None
    else:
        assert event == expected


# -- every later event: EventScanner -----------------------------------------------------------


def reference_events(kind: str, stream: bytes, limit: int = NO_LIMIT) -> list[Event]:
    """Every event of the whole stream, as `reference_first_event` reads the first, with the
    bound of `EventScanner`: an event whose name, data so far and current line together
    exceed `limit` is skipped up to its blank line (NDJSON: a line longer than `limit`)."""
    offset = 3 if stream.startswith(b"\xef\xbb\xbf") else 0
    events: list[Event] = []
    name, data, has_data, skipping = b"", b"", False, False
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", stream[offset:]):
        line = match.group(1)
        end = offset + match.start(2) + 1
        if kind == NDJSON:
            if line.strip() and len(line) <= limit:
                events.append(Event("", line, end))
            continue
        if not line:
            if has_data and not skipping:
                events.append(Event(name.decode("utf-8", "replace") or "message", data[:-1], end))
            name, data, has_data, skipping = b"", b"", False, False
            continue
        if skipping:
            continue
        if len(name) + len(data) + len(line) > limit:
            name, data, has_data, skipping = b"", b"", False, True
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data += value + b"\n"
            has_data = True
        elif field == b"event":
            name = value
    return events


def scanned(kind: str, chunks: list[bytes], limit: int = NO_LIMIT) -> list[Event]:
    scanner = EventScanner(kind, limit)
    found: list[Event] = []
    for chunk in chunks:
        found += scanner.feed(chunk)
        assert scanner.holding <= max(limit, 2)  # a BOM's first two bytes, or the bound
    return found


LATER_ERROR = (
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b": ping\n\n"
    b"event: content_block_delta\n"
    b'data: {"type": "content_block_delta", "delta": {"text": "Hi"}}\n\n' + ANTHROPIC_OVERLOADED
)


@pytest.mark.parametrize(
    ("kind", "stream", "names"),
    [
        (SSE, LATER_ERROR, ["message_start", "content_block_delta", "error"]),
        (SSE, OPENAI_RATE_LIMIT, ["message", "message"]),
        (SSE, b"data: a\r\n\r\ndata: b\r\rdata: c\n\n", ["message", "message", "message"]),
        (NDJSON, b'{"a": 1}\n\n{"b": 2}\r\n{"error": "quota"}\n', ["", "", ""]),
    ],
)
def test_every_event_of_real_streams(kind: str, stream: bytes, names: list[str]) -> None:
    expected = reference_events(kind, stream)
    assert [e.name for e in expected] == names
    assert expected[0] == reference_first_event(kind, stream)
    for cut in range(len(stream) + 1):
        assert scanned(kind, [stream[:cut], stream[cut:]]) == expected, cut
    assert scanned(kind, [bytes([b]) for b in stream]) == expected


def test_an_event_over_the_bound_is_skipped_and_the_next_one_found() -> None:
    big = b"data: " + b"x" * 5000 + b"\n\n"
    stream = b"data: 1\n\n" + big + b"event: error\ndata: 2\n\n"
    for chunks in ([stream], [stream[i : i + 7] for i in range(0, len(stream), 7)]):
        events = scanned(SSE, chunks, limit=100)
        assert [(e.name, e.data) for e in events] == [("message", b"1"), ("error", b"2")]
    lines = b'{"a": 1}\n' + b'{"pad": "' + b"y" * 5000 + b'"}\n{"b": 2}\n'
    assert [e.data for e in scanned(NDJSON, [lines], limit=100)] == [b'{"a": 1}', b'{"b": 2}']


def test_a_megabyte_event_in_small_chunks_holds_at_most_the_bound() -> None:
    scanner = EventScanner(SSE, 1024)
    peak = 0
    scanner.feed(b"data: ")
    for _ in range(16_384):  # 1 MiB of one data line, 64 bytes at a time
        scanner.feed(b"z" * 64)
        peak = max(peak, scanner.holding)
    end = len(b"data: ") + 16_384 * 64 + len(b"\n\ndata: after\n\n")
    assert scanner.feed(b"\n\ndata: after\n\n") == [Event("message", b"after", end)]
    assert peak <= 1024


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from([SSE, NDJSON]),
    stream=st.one_of(st.lists(_PIECES, max_size=30).map(b"".join), st.binary(max_size=200)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    limit=st.one_of(st.just(NO_LIMIT), st.integers(min_value=0, max_value=120)),
)
def test_any_split_of_any_stream_gives_every_reference_event(
    kind: str, stream: bytes, cuts: list[int], limit: int
) -> None:
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert scanned(kind, chunks, limit) == reference_events(kind, stream, limit)
