"""proxy.compat.prometheus_private against the installed prometheus-client: a batch
observed through the histogram's private buckets reads exactly as observe() one by one
(tests/observe/test_metrics.py checks the same through Metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.compat.prometheus_private import observe_all

BUCKETS = (0.01, 0.1, 1.0)
VALUES = [0.0, 0.01, 0.010001, 0.5, 1.0, 2.0, 1e9]


def _exposition(batched: bool) -> bytes:
    registry = CollectorRegistry()
    hist = Histogram("h_seconds", "help", buckets=BUCKETS, registry=registry)
    if batched:
        observe_all(hist, VALUES)
    else:
        for value in VALUES:
            hist.observe(value)
    # every line but the creation time stamp, which differs between the two histograms
    lines = generate_latest(registry).splitlines(keepends=True)
    return b"".join(line for line in lines if b"_created" not in line)


def test_a_batch_reads_as_observe_one_by_one() -> None:
    batched = _exposition(batched=True)
    assert batched == _exposition(batched=False)
    assert b'h_seconds_bucket{le="0.01"} 2.0' in batched  # bounds are inclusive
    assert b"h_seconds_count 7.0" in batched
