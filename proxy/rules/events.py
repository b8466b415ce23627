"""The first event of an event stream (SPEC 5.1): SSE (`text/event-stream`) or NDJSON
(`application/x-ndjson`, `application/jsonl`), found as the bytes arrive and within a
bound.  Pure: the caller feeds the chunks it holds and forwards them itself.

SSE follows the WHATWG HTML standard, "Interpreting an event stream": one UTF-8 BOM at the
start is skipped; lines end in CRLF, LF or CR (a CR at the end of one chunk and an LF at the
start of the next are one line end); a line starting with `:` is a comment; `field:value`
loses one space after the colon, a line without a colon is a field with an empty value;
`event` names the event, each `data` line is appended with a `\\n`; a blank line dispatches
the event, unless its data is empty (then nothing is dispatched and the name is reset);
the last `\\n` of the data is removed.  The first event is the first one dispatched, so a
leading comment or keep-alive block is not it.  NDJSON's first event is its first line that
is not blank (a final CR is removed).

Lines are split on bytes, never decoded: CR and LF never occur inside a UTF-8 sequence, and
the data is parsed as JSON afterwards.  No third-party parser is used: the ones packaged
(httpx-sse, sse-starlette's) decode text line by line and hold no byte bound; this one keeps
at most `limit` bytes of state and reports where the event ended.

The plain model is `reference_first_event` in tests/rules/test_events.py, which parses the
whole stream at once; a Hypothesis property holds every split of a stream to it.
"""

from __future__ import annotations

from dataclasses import dataclass

SSE = "sse"
NDJSON = "ndjson"
# media type -> kind of stream (SPEC 5.1)
STREAM_TYPES = {
    "text/event-stream": SSE,
    "application/x-ndjson": NDJSON,
    "application/jsonl": NDJSON,
}
_BOM = b"\xef\xbb\xbf"
_CR, _LF = 13, 10


@dataclass(frozen=True, slots=True)
class Event:
    """A complete first event: its name (SSE `event`, `message` when absent; `` for
    NDJSON), its data (SSE: the `data` lines joined with `\\n`; NDJSON: the line), and
    `end`, the stream's bytes up to and including the CR or LF that completed it (the LF of
    a CRLF is the next byte)."""

    name: str
    data: bytes
    end: int


class FirstEvent:
    """Feed the stream's chunks in order; `feed` returns the first event once it is
    complete within `limit` bytes, else None.  `exhausted` turns true when `limit` bytes
    arrived without one: the stream is then forwarded unjudged."""

    __slots__ = (
        "_at", "_bom", "_buf", "_data", "_has_data", "_kind", "_limit", "_name",
        "_skip_lf", "event", "exhausted",
    )  # fmt: skip

    def __init__(self, kind: str, limit: int) -> None:
        if kind not in (SSE, NDJSON):
            raise ValueError(f"not an event stream kind: {kind!r}")
        self._kind = kind
        self._limit = limit
        self._buf = b""  # the incomplete line so far
        self._at = 0  # stream offset of `_buf`'s first byte
        self._bom = True  # the start of the stream may still be a BOM
        self._skip_lf = False  # the last line ended in a CR: a leading LF belongs to it
        self._name = b""
        self._data = bytearray()
        self._has_data = False
        self.event: Event | None = None
        self.exhausted = False

    def feed(self, chunk: bytes) -> Event | None:
        if self.event is not None or self.exhausted or not chunk:
            return self.event
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        if self._bom:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # too short to tell yet
                self._check_limit(len(buf))
                return None
            self._bom = False
            if buf.startswith(_BOM):
                start = len(_BOM)
        if self._skip_lf:
            self._skip_lf = False
            if buf[start : start + 1] == b"\n":
                start += 1
        event = self._lines(buf, start)
        if event is not None:
            return event
        self._check_limit(self._at + len(self._buf))
        return None

    def _check_limit(self, received: int) -> None:
        if received >= self._limit:
            self.exhausted = True
            self._buf = b""
            self._data = bytearray()

    def _lines(self, buf: bytes, pos: int) -> Event | None:
        """Handle every complete line of `buf` from `pos`; keep the rest."""
        at = self._at
        size = len(buf)
        while pos < size:
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            following = end + 1
            if buf[end] == _CR:
                if following < size:
                    if buf[following] == _LF:
                        following += 1
                else:
                    self._skip_lf = True  # the LF, if any, comes with the next chunk
            # the event ends with its line's CR or LF: an LF after a CR may not have come
            # yet, and waiting for it would hold a CR-terminated event back
            if at + end + 1 > self._limit:
                self.exhausted = True
                self._buf = b""
                return None
            event = self._line(buf[pos:end], at + end + 1)
            if event is not None:
                self.event = event
                self._buf = b""
                return event
            pos = following
        self._buf = buf[pos:]
        self._at = at + pos
        return None

    def _line(self, line: bytes, end: int) -> Event | None:
        if self._kind == NDJSON:
            if line.strip():
                return Event("", line, end)
            return None
        if not line:  # dispatch (WHATWG "If the line is empty")
            if not self._has_data:
                self._name = b""
                return None
            data = bytes(self._data[:-1])  # the last LF removed
            name = self._name.decode("utf-8", "replace") or "message"
            return Event(name, data, end)
        if line[0] == 0x3A:  # ":" a comment
            return None
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data += value
            self._data.append(_LF)
            self._has_data = True
        elif field == b"event":
            self._name = value
        return None  # id, retry and unknown fields do not change the event's data
