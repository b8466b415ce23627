"""Work batched per request (metrics samples, access-log lines) written once, a moment
after the first request that added to it: `FlushLater`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FlushLater:
    """Calls `flush` once, `delay` seconds after the first `due()` since it last ran (0:
    at the end of the current event-loop iteration); at once when no event loop runs
    (a tool, a synchronous test).  `flush` may also be called directly; the timer then
    finds nothing left to write."""

    __slots__ = ("_delay", "_flush", "_pending")

    def __init__(self, delay: float, flush: Callable[[], None]) -> None:
        self._delay = delay
        self._flush = flush
        self._pending = False

    def due(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._pending = True
        if self._delay > 0:
            loop.call_later(self._delay, self._run)
        else:
            loop.call_soon(self._run)

    def _run(self) -> None:
        self._pending = False
        self._flush()
