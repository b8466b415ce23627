"""What the events of an event stream mean (SPEC 5.1), pure: an event judged like a body,
the built-in rule `stream-error`, and `StreamWatch`, which judges every later event of a
stream whose head was sent.

An event's data (SSE: its `data` lines joined; NDJSON: the line) is parsed as JSON and goes
through the route's rules exactly as a body does, with the stream's media type.  An SSE
event named `error` that no rule matches is the built-in rule `stream-error`: the keyword
classifier (SPEC 4.4) on its message, else 502.  Its data need not be JSON: `event: error`
says what it is, so a plain-text message is classified as it stands.

The handler holds the first event (`events.FirstEvent`) and judges it with
`decide.decide_event`; `ruletests.simulate` and `explain` judge a whole stream body through
`first_event_of` and the same `decide_event`, so a rule test asserts what a client gets.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.config.model import TestEvent
from proxy.rules.events import NDJSON, STREAM_TYPES, Event, EventScanner, FirstEvent
from proxy.rules.inspection import (
    CLEAN,
    INVALID_JSON,
    MATCHED,
    SKIPPED_SIZE,
    Examined,
    Undecodable,
    parse_for_rules,
    strip_bom,
)
from proxy.rules.presets import envelope_message, keyword_status
from proxy.rules.ruleset import RuleSet
from proxy.rules.suspect import detect
from proxy.rules.verdict import Verdict

STREAM_ERROR = "stream-error"  # the built-in rule's name (metric label, Tunnelguard-Rule)
STREAM_ERROR_STATUS = 502  # when the classifier does not place the message
ERROR_EVENT = "error"  # the SSE event name that marks an error
_NOT_JSON = object()


def examine_event(rules: RuleSet, event: Event, mtype: str, discover: bool = False) -> Examined:
    """Judge one event's data as the route's rules judge a body; `decoded` is its JSON text
    when a rule matched.  With `discover`, clean data goes through the suspect-shape
    detector, as a clean body does (SPEC 10: "and first stream event").  Pure; never raises
    on bad input."""
    try:
        doc = parse_for_rules(event.data)
    except Undecodable:
        doc = _NOT_JSON
    verdict = None
    if doc is not _NOT_JSON:
        try:
            verdict = rules.evaluate(doc, mtype)
        except RecursionError:  # as `inspection.examine`: a pathological depth matches nothing
            verdict = None
    if verdict is None and event.name == ERROR_EVENT:
        verdict = stream_error_verdict(rules, doc, event.data)
    if verdict is not None:
        return Examined(MATCHED, verdict, b"" if doc is _NOT_JSON else strip_bom(event.data))
    if doc is _NOT_JSON:
        return Examined(INVALID_JSON)
    return Examined(CLEAN, suspect=detect(doc) if discover else None)


def stream_error_verdict(rules: RuleSet, doc: object, data: bytes) -> Verdict:
    """The built-in rule for an SSE `error` event no rule matched: the status the keyword
    classifier reads from its message (the envelope message of SPEC 4.4, a JSON string, or
    the text itself when the data is not JSON), else 502; the route's action override
    applies to it as to every rule."""
    message: str | None
    if doc is _NOT_JSON:
        message = data.decode("utf-8", "replace")
    elif isinstance(doc, str):
        message = doc
    else:
        found = envelope_message(doc)
        message = None if found is None else found[0]
    status = None if message is None else keyword_status(message)
    return Verdict(
        STREAM_ERROR,
        status or STREAM_ERROR_STATUS,
        rules.action or "rewrite",
        "keep",
        None,
        message,
    )


def unjudged_result(exhausted: bool, ended: bool) -> str:
    """The inspections_total result of a stream held without a first event: `clean` when it
    ended first (nothing to judge, as an empty body), else `skipped_size`: a bound of the
    hold was reached, `first_event_bytes` (`exhausted`) or `first_event_timeout`."""
    return CLEAN if ended and not exhausted else SKIPPED_SIZE


def first_event_of(body: bytes, kind: str, limit: int) -> tuple[Event | None, str]:
    """The first event of a whole stream body within `limit` bytes, or None and the
    inspections_total result of a stream without one (`unjudged_result`); MATCHED stands
    for "judge the event"."""
    finder = FirstEvent(kind, limit)
    event = finder.feed(body)
    if event is not None:
        return event, MATCHED
    return None, unjudged_result(finder.exhausted, ended=True)


def stream_text(mtype: str, events: Iterable[TestEvent]) -> bytes:
    """A rule test's `response.events` written out as the stream its media type is: NDJSON,
    one line per event (an SSE event name does not apply); else SSE, an `event:` line when
    named, one `data:` line per line of the data, and the blank line that dispatches it."""
    if STREAM_TYPES.get(mtype) == NDJSON:
        return b"".join(e.data + b"\n" for e in events)
    out = []
    for e in events:
        if e.name is not None:
            out.append(b"event: " + e.name.encode() + b"\n")
        out.extend(b"data: " + line + b"\n" for line in e.data.splitlines() or [b""])
        out.append(b"\n")
    return b"".join(out)


class StreamWatch:
    """The later events of a stream whose head was sent (SPEC 5.1): fed every chunk from
    the stream's first byte, `feed` returns the verdict of each error event completed in
    it.  Events that end at or before `after` (the first event, judged when it was held)
    are not judged again.  Holds at most `limit` bytes of the event being assembled
    (`events.EventScanner`); a larger event is skipped."""

    __slots__ = ("_after", "_mtype", "_rules", "_scanner")

    def __init__(self, rules: RuleSet, kind: str, mtype: str, limit: int, after: int) -> None:
        self._rules = rules
        self._mtype = mtype
        self._after = after
        self._scanner = EventScanner(kind, limit)

    @property
    def holding(self) -> int:
        """Bytes held for the event being assembled."""
        return self._scanner.holding

    def feed(self, chunk: bytes) -> list[Verdict]:
        events = self._scanner.feed(chunk)
        if not events:
            return []
        found = []
        for event in events:
            if event.end <= self._after:
                continue
            verdict = examine_event(self._rules, event, self._mtype).verdict
            if verdict is not None:
                found.append(verdict)
        return found
