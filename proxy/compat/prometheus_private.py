"""prometheus-client's private attributes that tunnelguard reads, behind one function.

Checked against prometheus-client 0.26.0 (`CHECKED_VERSION`); unchanged since 0.4.
tests/observe/test_metrics.py checks a batch observed here reads exactly as `observe()`
one value at a time, and tests/compat/test_prometheus_private.py that the attributes exist.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import Histogram

CHECKED_VERSION = "0.26.0"


def observe_all(hist: Histogram, values: list[float]) -> None:
    """`hist.observe(v)` for every value, with one increment per bucket touched.

    Reads the histogram's bucket bounds and values, which prometheus-client keeps in
    `_upper_bounds`, `_buckets` and `_sum`."""
    bounds = hist._upper_bounds
    buckets = hist._buckets
    if len(values) == 1:  # a worker writes each request's samples: usually one
        value = values[0]
        hist._sum.inc(value)
        buckets[bisect_left(bounds, value)].inc(1)  # the first bound >= value, as observe()
        return
    hits: dict[int, int] = {}
    for value in values:
        i = bisect_left(bounds, value)
        hits[i] = hits.get(i, 0) + 1
    hist._sum.inc(sum(values))
    for i, n in hits.items():
        buckets[i].inc(n)
