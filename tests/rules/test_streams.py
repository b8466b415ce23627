"""Events judged like bodies (proxy/rules/streams.py, `decide.decide_event`): tables of real
published error events, the built-in `stream-error` rule, and `StreamWatch` over whole
streams split at every byte."""

from __future__ import annotations

import pytest

from proxy.config.model import TestEvent
from proxy.rules import inspection as ins
from proxy.rules.decide import decide_event
from proxy.rules.events import NDJSON, SSE, Event
from proxy.rules.ruleset import compile_ruleset
from proxy.rules.streams import (
    STREAM_ERROR,
    StreamWatch,
    examine_event,
    first_event_of,
    stream_text,
)
from proxy.wire import headers as h

DEFAULT = compile_ruleset(["graphql", "jsonrpc", "slack", "error-envelope"], [])
FLAGGED = compile_ruleset(["error-envelope"], [], action="flag")
SSE_TYPE = "text/event-stream"

# Anthropic Messages API, "Errors" (docs.anthropic.com/en/api/errors, streaming): an error
# event mid-stream.  OpenAI API, "Error codes" (platform.openai.com/docs/guides/error-codes):
# the error object as its streaming endpoints send it.
ANTHROPIC = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
OPENAI = (
    b'{"error": {"message": "Rate limit reached for gpt-4 in organization org-x on tokens '
    b'per min (TPM): Limit 10000, Used 9990, Requested 59.", "type": "rate_limit_error", '
    b'"param": null, "code": "rate_limit_exceeded"}}'
)


@pytest.mark.parametrize(
    ("name", "data", "result", "rule", "status"),
    [
        ("error", ANTHROPIC, ins.MATCHED, "error-envelope", 503),
        ("message", OPENAI, ins.MATCHED, "error-envelope", 429),
        ("", b'{"ok": false, "error": "ratelimited"}', ins.MATCHED, "slack", 429),
        ("message", b'{"type": "message_start", "message": {"id": "msg_1"}}', ins.CLEAN, None, 0),
        ("message", b"[DONE]", ins.INVALID_JSON, None, 0),
        # an `error` event no rule matches: the built-in rule, classifier on its message
        ("error", b'{"detail": "the model is overloaded"}', ins.MATCHED, STREAM_ERROR, 502),
        ("error", b'"Request timed out"', ins.MATCHED, STREAM_ERROR, 504),
        ("error", b"Service Unavailable", ins.MATCHED, STREAM_ERROR, 503),  # not JSON
        ("error", b"", ins.MATCHED, STREAM_ERROR, 502),
        ("error", b'{"message": "quota exceeded"}', ins.MATCHED, STREAM_ERROR, 429),
    ],
)
def test_an_event_is_judged_like_a_body(
    name: str, data: bytes, result: str, rule: str | None, status: int
) -> None:
    examined = examine_event(DEFAULT, Event(name, data, 1), SSE_TYPE)
    assert examined.result == result
    verdict = examined.verdict
    assert (verdict.rule, verdict.status) == (rule, status) if verdict else rule is None


def test_stream_error_follows_the_routes_action_override() -> None:
    verdict = examine_event(FLAGGED, Event("error", b"busy", 1), SSE_TYPE).verdict
    assert verdict is not None and (verdict.rule, verdict.action) == (STREAM_ERROR, "flag")
    assert examine_event(DEFAULT, Event("error", b"busy", 1), SSE_TYPE).verdict.action == (  # type: ignore[union-attr]
        "rewrite"
    )


def test_decide_event_rewrites_the_head_as_a_body_would_be() -> None:
    headers = [("Content-Type", SSE_TYPE), ("Cache-Control", "no-cache"), ("ETag", '"1"')]
    decision = decide_event(
        DEFAULT, 200, headers, Event("error", ANTHROPIC, 99), SSE_TYPE,
        fallback_retry_after=7, trace_id="0" * 32,
    )  # fmt: skip
    assert decision.result == ins.MATCHED and decision.delivery is not None
    out = decision.delivery
    assert out.status == 503 and out.body is None  # body: keep -> the stream follows
    assert h.get(out.headers, "retry-after") == "7"
    assert h.get(out.headers, "cache-control") == "no-store"
    assert h.get(out.headers, "etag") is None
    assert h.get(out.headers, "tunnelguard-rule") == "error-envelope"
    assert h.get(out.headers, "proxy-status") == (
        'tunnelguard; received-status=200; details="rule error-envelope"'
    )
    clean = decide_event(
        DEFAULT, 200, headers, Event("message", b'{"delta": "hi"}', 20), SSE_TYPE,
        fallback_retry_after=7, trace_id="0" * 32,
    )  # fmt: skip
    assert (clean.result, clean.verdict, clean.delivery) == (ins.CLEAN, None, None)


@pytest.mark.parametrize(
    ("body", "kind", "limit", "found", "result"),
    [
        (b"event: error\ndata: " + ANTHROPIC + b"\n\n", SSE, 16384, True, ins.MATCHED),
        (b": ping\n\n" + b"data: x" * 10, SSE, 16384, False, ins.CLEAN),  # ended first
        (b"data: " + b"x" * 100 + b"\n\n", SSE, 50, False, ins.SKIPPED_SIZE),
        (OPENAI + b"\n", NDJSON, 16384, True, ins.MATCHED),
    ],
)
def test_first_event_of_a_whole_stream(
    body: bytes, kind: str, limit: int, found: bool, result: str
) -> None:
    event, why = first_event_of(body, kind, limit)
    assert (event is not None, why) == (found, result)


LLM_STREAM = (
    b'event: message_start\ndata: {"type": "message_start"}\n\n'
    b": ping\n\n"
    b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'
    b"event: error\ndata: " + ANTHROPIC + b"\n\n"
    b'data: {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}\n\n'
)


def _watched(chunks: list[bytes], after: int = 0, limit: int = 16384) -> list[tuple[str, int]]:
    watch = StreamWatch(DEFAULT, SSE, SSE_TYPE, limit, after)
    found = []
    for chunk in chunks:
        found += [(v.rule, v.status) for v in watch.feed(chunk)]
        assert watch.holding <= limit
    return found


def test_the_watch_finds_every_later_error_at_any_split() -> None:
    expected = [("error-envelope", 503), ("error-envelope", 429)]
    for cut in range(len(LLM_STREAM) + 1):
        assert _watched([LLM_STREAM[:cut], LLM_STREAM[cut:]]) == expected, cut
    assert _watched([bytes([b]) for b in LLM_STREAM]) == expected


def test_the_watch_does_not_judge_the_held_first_event_again() -> None:
    stream = b"event: error\ndata: busy\n\n" + b"event: error\ndata: timeout\n\n"
    assert _watched([stream]) == [(STREAM_ERROR, 503), (STREAM_ERROR, 504)]
    first = first_event_of(stream, SSE, 16384)[0]
    assert first is not None
    assert _watched([stream], after=first.end) == [(STREAM_ERROR, 504)]


def test_the_watch_skips_an_event_over_the_bound() -> None:
    big = b'data: {"error": "quota", "pad": "' + b"x" * 500 + b'"}\n\n'
    stream = big + b'data: {"error": "timeout"}\n\n'
    assert _watched([stream], limit=100) == [("error-envelope", 504)]
    ndjson = StreamWatch(DEFAULT, NDJSON, "application/x-ndjson", 100, 0)
    found = ndjson.feed(b'{"ok": true}\n{"error": "quota"}\n')
    assert [(v.rule, v.status) for v in found] == [("error-envelope", 429)]


def test_a_rule_tests_events_are_written_as_the_stream_its_media_type_is() -> None:
    events = [TestEvent("error", b'{"a": 1}'), TestEvent(None, b"two\nlines"), TestEvent(None, b"")]
    sse = stream_text(SSE_TYPE, events)
    assert sse == b'event: error\ndata: {"a": 1}\n\ndata: two\ndata: lines\n\ndata: \n\n'
    assert first_event_of(sse, SSE, 1024)[0] == Event("error", b'{"a": 1}', 29)
    ndjson = stream_text("application/jsonl", events[:1])
    assert ndjson == b'{"a": 1}\n'


def test_a_clean_first_event_goes_through_the_detector_when_asked() -> None:
    """SPEC 10: "every inspected 2xx JSON body (and first stream event) that no rule of its
    route matched" goes through the detector."""
    wechat = Event("message", b'{"errcode": 40001, "errmsg": "invalid credential"}', 1)
    examined = examine_event(DEFAULT, wechat, SSE_TYPE, discover=True)
    assert examined.result == ins.CLEAN and examined.suspect is not None
    assert [m.pointer for m in examined.suspect.markers] == ["/errcode"]
    assert examine_event(DEFAULT, wechat, SSE_TYPE).suspect is None  # not asked
    clean = Event("message", b'{"type": "message_start", "message": {"id": "msg_1"}}', 1)
    assert examine_event(DEFAULT, clean, SSE_TYPE, discover=True).suspect is None
    matched = examine_event(DEFAULT, Event("error", ANTHROPIC, 1), SSE_TYPE, discover=True)
    assert matched.result == ins.MATCHED and matched.suspect is None  # a rule knows it
