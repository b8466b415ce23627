"""Structured logs on stdout: one JSON object per line, or `--log-format text`."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import orjson


class Log:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stdout

    def event(self, event: str, **fields: object) -> None:
        """Log one event (startup, reload, shutdown, a request)."""
        record: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{int(time.time() * 1000) % 1000:03d}Z",
            "event": event,
            **fields,
        }
        if self.fmt == "json":
            line = orjson.dumps(record, default=str).decode()
        else:
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
            line = f"{record['time']} {event} {rest}".rstrip()
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not take the proxy down
