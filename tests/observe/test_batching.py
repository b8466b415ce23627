"""FlushLater: work batched per request, written once, a moment after the first request."""

from __future__ import annotations

import asyncio

from proxy.observe.batching import FlushLater


async def test_flush_later_runs_once_for_many_dues() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    later = FlushLater(0.05, lambda: calls.append(loop.time()))
    start = loop.time()
    for _ in range(10):
        later.due()
    await asyncio.sleep(0.15)
    assert len(calls) == 1 and calls[0] - start >= 0.05
    later.due()  # after it ran, the next due() arms it again
    await asyncio.sleep(0.15)
    assert len(calls) == 2


async def test_flush_later_with_no_delay_runs_when_the_iteration_ends() -> None:
    calls: list[bool] = []
    later = FlushLater(0.0, lambda: calls.append(True))
    later.due()
    later.due()
    assert calls == []
    await asyncio.sleep(0)
    assert calls == [True]


def test_flush_later_without_an_event_loop_runs_at_once() -> None:
    calls: list[bool] = []
    FlushLater(5.0, lambda: calls.append(True)).due()
    assert calls == [True]
