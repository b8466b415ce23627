"""Deadline: one timer for a deadline moved on every request (never early, never late)."""

from __future__ import annotations

import asyncio

from proxy.wire.deadline import Deadline


async def _watch(moves: list[tuple[float, float | None]], wait: float) -> list[float]:
    """Apply (after_seconds, deadline_offset or None to clear) moves; return when
    (seconds from the start) the deadline expired."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    fired: list[float] = []
    deadline = Deadline(loop, lambda: fired.append(loop.time() - start))
    for after, offset in moves:
        await asyncio.sleep(max(0.0, start + after - loop.time()))
        if offset is None:
            deadline.clear()
        else:
            deadline.set(start + offset)
    await asyncio.sleep(max(0.0, start + wait - loop.time()))
    deadline.cancel()
    return fired


async def test_a_deadline_that_passes_expires_once() -> None:
    (when,) = await _watch([(0, 0.05)], 0.3)
    assert 0.05 <= when < 0.2


async def test_a_cleared_deadline_never_expires() -> None:
    assert await _watch([(0, 0.05), (0.01, None)], 0.2) == []


async def test_a_deadline_moved_later_expires_at_the_new_time_not_the_first() -> None:
    # the timer armed for 0.05 fires, sees the deadline moved to 0.25, and waits again
    (when,) = await _watch([(0, 0.05), (0.02, None), (0.03, 0.25)], 0.5)
    assert 0.25 <= when < 0.4


async def test_a_deadline_moved_earlier_is_never_late() -> None:
    (when,) = await _watch([(0, 5.0), (0.01, 0.06)], 0.3)
    assert 0.06 <= when < 0.2


async def test_cancel_stops_the_timer() -> None:
    loop = asyncio.get_running_loop()
    fired: list[bool] = []
    deadline = Deadline(loop, lambda: fired.append(True))
    deadline.set(loop.time() + 0.05)
    deadline.cancel()
    await asyncio.sleep(0.15)
    assert fired == [] and deadline.when is None
