"""A cheap event-loop deadline for the per-request path.

`Deadline` moves on every request but rarely expires.  A connection's request-head
deadline (`server.header_timeout`) and an upstream connection's response-head deadline
(`timeouts.response`) are set and cleared once per request.  Arming a timer and
cancelling it each time costs two event-loop heap operations per request; `Deadline`
stores the deadline instead and keeps one timer armed: when it fires, it re-arms for the
current deadline if that is later, and calls back only when the deadline really passed.
A deadline set earlier than the armed timer re-arms at once, so no deadline is ever late.

Fast path.  The plain rule, `loop.call_at` armed and cancelled per request, is what
tests/wire/test_deadline.py states: never early, never late, cancelled when cleared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    """`set(when)` and `clear()` a deadline on the loop's clock (`loop.time()`);
    `expired()` is called once when a set deadline passes.  `cancel()` when the owner
    is gone, so the timer does not keep it alive."""

    __slots__ = ("_armed_at", "_expired", "_loop", "_timer", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self.when: float | None = None

    def set(self, when: float) -> None:
        self.when = when
        if self._timer is None:
            self._arm(when)
        elif self._armed_at > when:  # earlier than the armed timer: never late
            self._timer.cancel()
            self._arm(when)

    def clear(self) -> None:
        self.when = None

    def now(self) -> float:
        return self._loop.time()

    def cancel(self) -> None:
        self.when = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        when = self.when
        if when is None:
            return
        if self._loop.time() < when:  # moved later since it was armed
            self._arm(when)
            return
        self.when = None
        self._expired()
