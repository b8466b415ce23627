"""Metrics: batched per-request samples read exactly like samples written one by one."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proxy.observe.metrics import LATENCY_BUCKETS, Metrics

# every bucket: on a bound, between bounds, zero, beyond the last finite bound
SECONDS = [0.0, 0.001, 0.0011, 0.0025, 0.004, 0.01, 0.3, 1.0, 2.5, 29.0, 60.0, 61.0, 1e6]


def _duration_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        if family.name == "tunnelguard_request_duration_seconds"
        for s in family.samples
        if not s.name.endswith("_created")  # when each was made: differs by microseconds
    }


async def test_a_batch_reads_as_every_sample_observed_one_by_one() -> None:
    metrics = Metrics()
    reference = CollectorRegistry()
    hist = Histogram(
        "tunnelguard_request_duration_seconds", "", ("route", "class"),
        buckets=LATENCY_BUCKETS, registry=reference,
    )  # fmt: skip
    for seconds in SECONDS * 3:
        metrics.count_request("r", "GET", 200, 200, "upstream", seconds)
        hist.labels("r", "2xx").observe(seconds)
    assert (
        metrics.registry.get_sample_value(
            "tunnelguard_requests_total",
            {"route": "r", "method": "GET", "code": "200", "class": "2xx", "source": "upstream"},
        )
        == len(SECONDS) * 3
    )
    got = _duration_samples(metrics.registry)
    assert got == _duration_samples(reference)
    assert got[("tunnelguard_request_duration_seconds_bucket", "+Inf")] == len(SECONDS) * 3


async def test_samples_wait_for_a_read_or_the_timer_not_for_each_request() -> None:
    metrics = Metrics(flush_delay=0.05)
    counter = metrics.inspections.labels("r", "clean")
    for _ in range(5):
        metrics.count_inspection("r", "clean")
    assert counter._value.get() == 0  # batched: nothing written yet
    await asyncio.sleep(0.15)
    assert counter._value.get() == 5  # the timer wrote them, with no read
    metrics.count_inspection("r", "clean")
    text = generate_latest(metrics.registry).decode()  # a scrape flushes first
    assert 'tunnelguard_inspections_total{result="clean",route="r"} 6.0' in text


async def test_a_worker_writes_its_samples_when_the_loop_iteration_ends() -> None:
    metrics = Metrics(flush_delay=0.0)
    counter = metrics.tunnelled_errors.labels("r", "slack", "rewrite", "401")
    metrics.count_tunnelled("r", "slack", "rewrite", 401)
    metrics.count_tunnelled("r", "slack", "rewrite", 401)
    assert counter._value.get() == 0
    await asyncio.sleep(0)
    assert counter._value.get() == 2


async def test_a_shared_registry_gets_each_request_s_samples_when_it_is_counted() -> None:
    """A `--workers N` worker: the master reads its files, possibly before this loop
    iteration ends; a request's samples are written with its count, one by one."""
    metrics = Metrics(shared=True)
    reference = CollectorRegistry()
    hist = Histogram(
        "tunnelguard_request_duration_seconds", "", ("route", "class"),
        buckets=LATENCY_BUCKETS, registry=reference,
    )  # fmt: skip
    inspected = metrics.inspections.labels("r", "clean")
    requests = metrics.requests.labels("r", "GET", "200", "2xx", "upstream")
    for n, seconds in enumerate(SECONDS, 1):
        metrics.count_inspection("r", "clean")
        metrics.count_request("r", "GET", 200, 200, "upstream", seconds)
        hist.labels("r", "2xx").observe(seconds)
        assert (inspected._value.get(), requests._value.get()) == (n, n)  # no await
    assert _duration_samples(metrics.registry) == _duration_samples(reference)
    metrics.observe_upstream("r", "u", 0.2)  # no count follows: the iteration's end
    upstream = metrics.upstream_duration.labels("r", "u")
    assert upstream._sum.get() == 0
    await asyncio.sleep(0)
    assert upstream._sum.get() == 0.2


def test_without_an_event_loop_samples_are_written_at_once() -> None:
    metrics = Metrics()
    metrics.observe_upstream("r", "u", 0.2)
    hist = metrics.upstream_duration.labels("r", "u")
    assert hist._sum.get() == 0.2


def test_suspect_responses_are_counted_by_route_and_shape() -> None:
    """SPEC 8/10: one series per (route, shape); `shape` is a catalogue id or `other`."""
    metrics = Metrics()
    for shape in ("s-3f9a1c2e", "s-3f9a1c2e", "other"):
        metrics.count_suspect("default", shape)
    value = metrics.registry.get_sample_value
    name = "tunnelguard_suspect_responses_total"
    assert value(name, {"route": "default", "shape": "s-3f9a1c2e"}) == 2
    assert value(name, {"route": "default", "shape": "other"}) == 1


def test_stream_errors_are_counted_by_route_and_rule() -> None:
    metrics = Metrics()
    for rule in ("stream-error", "error-envelope", "stream-error"):
        metrics.count_stream_error("llm", rule)
    text = generate_latest(metrics.registry).decode()
    assert 'tunnelguard_stream_errors_total{route="llm",rule="stream-error"} 2.0' in text
    assert 'tunnelguard_stream_errors_total{route="llm",rule="error-envelope"} 1.0' in text
