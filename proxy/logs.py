"""Structured logs on stdout: one JSON object per line, or `--log-format text`.

Access lines (one per request) are kept in memory, as their fields, and formatted and
written together at most every 100 ms (or once FLUSH_LINES are waiting) instead of one
write system call each: the buffer is ours, because the container image runs Python
unbuffered (PYTHONUNBUFFERED=1), where every write to stdout is a system call, and
formatting a batch in one loop costs less than a line at a time between requests.  Every
other event (startup, reload, drain, shutdown) is written at once, after the access lines
before it, so nothing is left behind when the process stops cleanly.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO

import orjson

from .timers import FlushLater

FLUSH_DELAY = 0.1  # seconds an access line may wait in the buffer
FLUSH_LINES = 128  # access lines waiting that make a flush happen at once (bounds memory)

_Record = tuple[float, str, dict[str, object]]  # (time.time(), event, fields)


class Log:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout
        self._second = -1
        self._prefix = ""
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
        line = self._line
        text = "".join([line(*record) for record in self._pending])
        self._pending.clear()
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not stop us
            if text:
                self.stream.write(text)
            self.stream.flush()

    def _stamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # formatting the date once a second is enough
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def _line(self, now: float, event: str, fields: dict[str, object]) -> str:
        stamp = self._stamp(now)
        if self.fmt == "json":
            record: dict[str, object] = {"time": stamp, "event": event, **fields}
            return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE).decode()
        rest = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return f"{stamp} {event} {rest}".rstrip() + "\n"
