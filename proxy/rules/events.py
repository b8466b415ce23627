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

`EventScanner` finds every later event the same way once the head was sent, holding at most
about `limit` bytes of the event being assembled; an event that outgrows it is skipped.

The plain models are `reference_first_event` and `reference_events` in
tests/rules/test_events.py, which parse the whole stream at once; Hypothesis properties hold
every split of a stream to them.
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


class _Lines:
    """What both readers keep of a stream between chunks: the line in progress, its offset,
    the BOM and CRLF state, and the event being assembled (SSE `event` and `data`)."""

    __slots__ = (
        "_at", "_bom", "_buf", "_data", "_has_data", "_kind", "_limit", "_name", "_skip_lf",
    )  # fmt: skip

    def __init__(self, kind: str, limit: int) -> None:
        if kind not in (SSE, NDJSON):
            raise ValueError(f"not an event stream kind: {kind!r}")
        self._kind = kind
        self._limit = limit
        self._buf = b""  # the line in progress
        self._at = 0  # stream offset of `_buf`'s first byte
        self._bom = True  # the start of the stream may still be a BOM
        self._skip_lf = False  # the last line ended in a CR: a leading LF belongs to it
        self._name = b""
        self._data = bytearray()
        self._has_data = False

    def _begin(self, chunk: bytes) -> tuple[bytes, int] | None:
        """The bytes to read now (the line in progress, then `chunk`) and where to start:
        past a BOM at the stream's start and past the LF of a CRLF split between chunks.
        None while the stream is too short to tell a BOM (the bytes are kept)."""
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        if self._bom:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf
                return None
            self._bom = False
            if buf.startswith(_BOM):
                start = len(_BOM)
        if self._skip_lf:
            self._skip_lf = False
            if buf[start : start + 1] == b"\n":
                start += 1
        return buf, start

    def _line_end(self, buf: bytes, pos: int) -> tuple[int, int] | None:
        """The line of `buf` starting at `pos`, when its end arrived: (the index of its CR
        or LF, where the next line starts).  A CR that ends `buf` may be the first half of a
        CRLF: the LF, if any, comes with the next chunk and is skipped there.  None: no line
        end yet."""
        cr = buf.find(b"\r", pos)
        lf = buf.find(b"\n", pos)
        if cr < 0 and lf < 0:
            return None
        end = lf if cr < 0 or (0 <= lf < cr) else cr
        following = end + 1
        if buf[end] == _CR:
            if following < len(buf):
                if buf[following] == _LF:
                    following += 1
            else:
                self._skip_lf = True
        return end, following

    def _field(self, line: bytes) -> None:
        """An SSE line that is not blank: a comment, or a field (`data` appended with an LF,
        `event` names the event; id, retry and unknown fields do not change its data)."""
        if line[0] == 0x3A:  # ":" a comment
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data += value
            self._data.append(_LF)
            self._has_data = True
        elif field == b"event":
            self._name = value


class FirstEvent(_Lines):
    """Feed the stream's chunks in order; `feed` returns the first event once it is
    complete within `limit` bytes, else None.  `exhausted` turns true when `limit` bytes
    arrived without one: the stream is then forwarded unjudged."""

    __slots__ = ("event", "exhausted")

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind, limit)
        self.event: Event | None = None
        self.exhausted = False

    def feed(self, chunk: bytes) -> Event | None:
        if self.event is not None or self.exhausted or not chunk:
            return self.event
        begun = self._begin(chunk)
        if begun is None:  # too short to tell a BOM yet
            self._check_limit(len(self._buf))
            return None
        buf, start = begun
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
        while pos < len(buf):
            found = self._line_end(buf, pos)
            if found is None:
                break
            end, following = found
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
        self._field(line)
        return None


class EventScanner(_Lines):
    """Every event of a stream, fed in chunks in order: `feed` returns the events completed
    by a chunk (`Event.end` is an offset in the whole stream, as for `FirstEvent`).

    Memory is bounded by `limit`: what an event holds (its name, its data so far and the line
    in progress) never grows past it.  An event that would is skipped: its state is dropped
    and its lines are ignored up to the blank line that would have dispatched it (NDJSON: the
    end of the line).  A skipped event costs nothing but the search for line ends."""

    __slots__ = ("_skipping",)

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind, limit)  # `_buf` holds one byte of a line while skipping
        self._skipping = False  # inside an event that outgrew `limit`

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        begun = self._begin(chunk)
        if begun is None:  # too short to tell a BOM yet
            return []
        buf, pos = begun
        events: list[Event] = []
        at = self._at
        while pos < len(buf):
            found = self._line_end(buf, pos)
            if found is None:
                break
            end, following = found
            event = self._line(buf[pos:end], at + end + 1)
            if event is not None:
                events.append(event)
            pos = following
        rest = buf[pos:]
        if rest and not self._skipping and self._held() + len(rest) > self._limit:
            self._skip()
        if self._skipping and len(rest) > 1:
            # the line is not blank, which is all a skipped event needs to know of it
            pos += len(rest) - 1
            rest = rest[-1:]
        self._buf = rest
        self._at = at + pos
        return events

    @property
    def holding(self) -> int:
        """Bytes held now for the event being assembled (at most about `limit`)."""
        return self._held() + len(self._buf)

    def _held(self) -> int:
        return len(self._name) + len(self._data)

    def _skip(self) -> None:
        self._skipping = True
        self._name = b""
        self._data = bytearray()
        self._has_data = False

    def _line(self, line: bytes, end: int) -> Event | None:
        if self._kind == NDJSON:
            if self._skipping:
                self._skipping = False  # the end of the line that outgrew the bound
                return None
            if len(line) > self._limit or not line.strip():
                return None
            return Event("", line, end)
        if not line:  # dispatch (WHATWG "If the line is empty")
            if not self._has_data:  # nothing to dispatch, or the end of a skipped event
                self._skipping = False
                self._name = b""
                return None
            event = Event(
                self._name.decode("utf-8", "replace") or "message", bytes(self._data[:-1]), end
            )
            self._name = b""
            self._data = bytearray()
            self._has_data = False
            return event
        if self._skipping:
            return None
        if self._held() + len(line) > self._limit:  # a comment too: its line was held
            self._skip()
            return None
        self._field(line)
        return None
