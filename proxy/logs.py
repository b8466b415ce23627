"""Structured logs on stdout: one JSON object per line, or `--log-format text`.

Access lines (one per request) are flushed at most every 100 ms instead of one write
system call each; every other event (startup, reload, drain, shutdown) is flushed at
once, so nothing is left in the buffer when the process stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO

import orjson

FLUSH_DELAY = 0.1  # seconds an access line may wait in the buffer


class Log:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout
        self._second = -1
        self._prefix = ""
        self._flush_pending = False

    def event(self, event: str, **fields: object) -> None:
        """Log one event (startup, reload, shutdown, ...) and flush it."""
        self._write(event, fields)
        self.flush()

    def access(self, **fields: object) -> None:
        """Log one request (SPEC section 9); flushed within FLUSH_DELAY."""
        self._write("request", fields)
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_pending = True
            loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(OSError, ValueError):  # a closed stdout must not stop us
            self.stream.flush()

    def _stamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # formatting the date once a second is enough
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"

    def _write(self, event: str, fields: dict[str, object]) -> None:
        stamp = self._stamp()
        if self.fmt == "json":
            record: dict[str, object] = {"time": stamp, "event": event, **fields}
            line = orjson.dumps(record, default=str).decode()
        else:
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{stamp} {event} {rest}".rstrip()
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(line + "\n")
