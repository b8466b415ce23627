"""Structured logs on stdout: one JSON object per line, or `--log-format text`.

Access lines (one per request) are kept in memory, as their fields, and formatted and
written together at most every 100 ms (or once FLUSH_LINES are waiting) instead of one
write system call each: the buffer is ours, because the container image runs Python
unbuffered (PYTHONUNBUFFERED=1), where every write to stdout is a system call, and
formatting a batch in one loop costs less than a line at a time between requests.  Every
other event (startup, reload, drain, shutdown) is written at once, after the access lines
before it, so nothing is left behind when the process stops cleanly.

Fast path (cached time-stamp prefix per second, a millisecond table, orjson bytes spliced
in).  The plain rule, one `json.dumps` of the fields with an ISO time, is what
tests/observe/test_logs.py (`test_json_lines_carry_the_millisecond_and_every_field_once`,
`test_time_stamps_are_consistent`) holds each line to.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO

import orjson

from proxy.observe.batching import FlushLater

FLUSH_DELAY = 0.1  # seconds an access line may wait in the buffer
FLUSH_LINES = 128  # access lines waiting that make a flush happen at once (bounds memory)

_Record = tuple[float, str, dict[str, object]]  # (time.time(), event, fields)
# the end of a JSON line's time stamp, by millisecond: `.123Z",`
_MILLIS = [b'.%03dZ","event":' % ms for ms in range(1000)]


class Log:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout
        self._second = -1
        self._prefix = ""  # the stamp's date and time to the second
        self._json_prefix = b""  # the same, opening a JSON line: `{"time":"2026-...:07`
        self._events: dict[str, bytes] = {}  # event name -> its JSON string
        self._pending: list[_Record] = []
        self._later = FlushLater(FLUSH_DELAY, self.flush)

    def event(self, event: str, **fields: object) -> None:
        """Log one event (startup, reload, shutdown, ...) and flush it."""
        self._pending.append((time.time(), event, fields))
        self.flush()

    def access(self, **fields: object) -> None:
        """Log one request (SPEC section 9); written within FLUSH_DELAY."""
        pending = self._pending
        pending.append((time.time(), "request", fields))
        if len(pending) >= FLUSH_LINES:
            self.flush()
        else:
            self._later.due()

    def flush(self) -> None:
        records, self._pending = self._pending, []
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not stop us
            if self.fmt != "json":
                text = "".join([self._line(*record) for record in records])
                if text:
                    self.stream.write(text)
                self.stream.flush()
                return
            data = b"".join([self._json(*record) for record in records])
            buffer = getattr(self.stream, "buffer", None)
            if buffer is None:  # a text-only stream (tests)
                if data:
                    self.stream.write(data.decode())
                self.stream.flush()
                return
            # orjson's bytes go straight to stdout's byte buffer: no decoding and
            # re-encoding of every line; the text layer is flushed first to keep order
            self.stream.flush()
            if data:
                buffer.write(data)
            buffer.flush()

    def _to_second(self, now: float) -> int:
        second = int(now)
        if second != self._second:  # formatting the date once a second is enough
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._json_prefix = b'{"time":"' + self._prefix.encode()
        return second

    def _stamp(self, now: float) -> str:
        second = self._to_second(now)
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def _json(self, now: float, event: str, fields: dict[str, object]) -> bytes:
        """One JSON line: `time` and `event` first, then the fields in their order."""
        name = self._events.get(event)
        if name is None:
            name = self._events[event] = orjson.dumps(event)  # a handful of names
        second = self._to_second(now)
        head = self._json_prefix + _MILLIS[int((now - second) * 1000)] + name
        if not fields:
            return head + b"}\n"
        if "time" in fields or "event" in fields:  # never two keys of the same name
            fields = {k: v for k, v in fields.items() if k not in ("time", "event")}
            return self._json(now, event, fields)
        # the fields' own object, spliced after the two leading keys (no dict copy)
        rest = orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        return head + b"," + rest[1:]

    def _line(self, now: float, event: str, fields: dict[str, object]) -> str:
        """One line for humans (`--log-format text`)."""
        stamp = self._stamp(now)
        rest = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{stamp} {event} {rest}".rstrip() + "\n"
