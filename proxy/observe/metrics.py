"""Prometheus metrics (SPEC section 8), owned by one object with its own registry.

Labels are bounded: route, rule and upstream names come from the config, methods
outside the standard set are `other`, statuses are numbers.  Children are created
once and cached, because `.labels()` takes a lock and does a lookup per call.

The per-request samples (`count_request`, `observe_upstream`, `count_inspection`,
`count_tunnelled`, `count_stream_error`) are batched: a request only adds to plain dicts,
and `flush()` moves the sums into the Prometheus children, one `inc(n)` per series and one
per histogram bucket.  Every read of the registry flushes first (`_FlushFirst`), so /metrics and
tests see every request answered so far, and a timer flushes FLUSH_DELAY after a
request.

A worker of `--workers N` (`shared=True`), whose samples the master reads from shared
files, writes a request's batch when the request is counted (`count_request`, its last
sample), before the last bytes of its response are written: a client that has the
complete response finds it in /metrics, and a killed worker loses nothing it answered.
Samples not followed by a count (a WebSocket handshake's upstream time) are written at
the end of the event-loop iteration.

Fast path (samples summed in dicts, written per batch).  The plain rule is
`observe()`/`inc()` one sample at a time on a fresh registry:
tests/observe/test_metrics.py::test_a_batch_reads_as_every_sample_observed_one_by_one.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.compat.prometheus_private import observe_all
from proxy.observe.batching import FlushLater

PREFIX = "tunnelguard_"
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
# Proxy latency: most answers take milliseconds, a timed-out one tens of seconds.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
UNMATCHED_ROUTE = "(unmatched)"
SOURCES = ("upstream", "rewritten", "flagged", "proxy")
FLUSH_DELAY = 0.1  # seconds a batched sample may wait in a single process


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """Every tunnelguard metric, registered in `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        flush_delay: float = FLUSH_DELAY,
        *,
        shared: bool = False,
    ) -> None:
        """`shared`: read by another process (a `--workers N` worker's samples): each
        request's samples are written when it is counted (see the module doc)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # registered before every metric: a collection flushes, then reads them
        r.register(_FlushFirst(self))
        self._counts: dict[Counter, int] = {}  # child -> increments not flushed yet
        self._observed: dict[Histogram, list[float]] = {}  # child -> observations
        self._shared = shared
        self._later = FlushLater(0.0 if shared else flush_delay, self.flush)
        self.requests = Counter(
            PREFIX + "requests_total",
            "Requests answered, by delivered code and true class.",
            ("route", "method", "code", "class", "source"),
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request received to response complete, by true class.",
            ("route", "class"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            PREFIX + "upstream_duration_seconds",
            "Time from sending the request upstream to receiving the response head.",
            ("route", "upstream"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tunnelled_errors = Counter(
            PREFIX + "tunnelled_errors_total",
            "Errors found in response bodies, by rule, action and mapped status.",
            ("route", "rule", "action", "status"),
            registry=r,
        )
        self.inspections = Counter(
            PREFIX + "inspections_total",
            "Responses considered for inspection, by result.",
            ("route", "result"),
            registry=r,
        )
        self.stream_errors = Counter(
            PREFIX + "stream_errors_total",
            "Errors found in event streams after their head was sent, by rule.",
            ("route", "rule"),
            registry=r,
        )
        self.upstream_failures = Counter(
            PREFIX + "upstream_failures_total",
            "Upstream attempts that failed, by kind.",
            ("upstream", "kind"),
            registry=r,
        )
        self.retries = Counter(
            PREFIX + "retries_total",
            "Retries sent upstream, by reason.",
            ("upstream", "reason"),
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests",
            "Requests being served now.",
            ("route",),
            registry=r,
            multiprocess_mode="livesum",  # with --workers: the sum over live workers
        )
        self.circuit_state = Gauge(
            PREFIX + "circuit_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ("upstream",),
            registry=r,
            multiprocess_mode="livemax",  # with --workers: the worst worker's breaker
        )
        self.config_reloads = Counter(
            PREFIX + "config_reloads_total",
            "Config reloads, by result.",
            ("result",),
            registry=r,
        )
        self.build_info = Gauge(
            PREFIX + "build_info",
            "Build information.",
            ("version",),
            registry=r,
            multiprocess_mode="max",
        )
        self.suspect_responses = Counter(
            PREFIX + "suspect_responses_total",
            "Clean responses with an error marker no rule matched, by shape (SPEC 10); "
            "shape is a catalogue id, or `other` once the route's catalogue is full.",
            ("route", "shape"),
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        for result in ("success", "failure"):  # present from the start, so increase() works
            self.config_reloads.labels(result)
        self._requests: dict[tuple[str, str, int, int, str], Counter] = {}
        self._durations: dict[tuple[str, int], Histogram] = {}  # by (route, true status)
        self._upstream_durations: dict[tuple[str, str], Histogram] = {}
        self._inspections: dict[tuple[str, str], Counter] = {}
        self._in_flight: dict[str, Gauge] = {}
        self._tunnelled: dict[tuple[str, str, str, int], Counter] = {}
        # bounded by the catalogue: per route at most discover.max_shapes ids and `other`
        self._suspects: dict[tuple[str, str], Counter] = {}
        self._stream_errors: dict[tuple[str, str], Counter] = {}

    def declare_upstream(
        self, upstream: str, kinds: tuple[str, ...], reasons: tuple[str, ...]
    ) -> None:
        """Create an upstream's failure and retry series at 0, so that PromQL ratios and
        `increase()` see the first failure instead of a series appearing at 1."""
        for kind in kinds:
            self.upstream_failures.labels(upstream, kind)
        for reason in reasons:
            self.retries.labels(upstream, reason)

    # Children are cached per label tuple; every label value is bounded (see module doc).

    def count_request(
        self, route: str, method: str, code: int, true_status: int, source: str, seconds: float
    ) -> None:
        """A request answered: its last sample.  Called before the last bytes of its
        response are written (the handler, `downstream.server`, `writers.relay`)."""
        key = (route, method, code, true_status, source)
        child = self._requests.get(key)
        if child is None:
            cls = status_class(true_status)
            child = self._requests[key] = self.requests.labels(
                route, method_label(method), str(code), cls, source
            )
        self._count(child)
        hkey = (route, true_status)
        hist = self._durations.get(hkey)
        if hist is None:
            cls = status_class(true_status)
            hist = self._durations[hkey] = self.request_duration.labels(route, cls)
        self._observe(hist, seconds)
        if self._shared:  # in the files before the response is complete
            self.flush()

    def observe_upstream(self, route: str, upstream: str, seconds: float) -> None:
        key = (route, upstream)
        hist = self._upstream_durations.get(key)
        if hist is None:
            hist = self._upstream_durations[key] = self.upstream_duration.labels(route, upstream)
        self._observe(hist, seconds)

    def count_inspection(self, route: str, result: str) -> None:
        key = (route, result)
        child = self._inspections.get(key)
        if child is None:
            child = self._inspections[key] = self.inspections.labels(route, result)
        self._count(child)

    def count_tunnelled(self, route: str, rule: str, action: str, status: int) -> None:
        key = (route, rule, action, status)
        child = self._tunnelled.get(key)
        if child is None:
            child = self._tunnelled[key] = self.tunnelled_errors.labels(
                route, rule, action, str(status)
            )
        self._count(child)

    def count_suspect(self, route: str, shape: str) -> None:
        """A suspect response (SPEC 10); `shape` is the label the catalogue gave it."""
        key = (route, shape)
        child = self._suspects.get(key)
        if child is None:
            child = self._suspects[key] = self.suspect_responses.labels(route, shape)
        self._count(child)

    def count_stream_error(self, route: str, rule: str) -> None:
        """An error event found in a stream whose head was sent (SPEC 5.1)."""
        key = (route, rule)
        child = self._stream_errors.get(key)
        if child is None:
            child = self._stream_errors[key] = self.stream_errors.labels(route, rule)
        self._count(child)

    # -- batching --------------------------------------------------------------------------

    def _count(self, child: Counter) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0) + 1
        self._later.due()

    def _observe(self, hist: Histogram, seconds: float) -> None:
        observed = self._observed.get(hist)
        if observed is None:
            self._observed[hist] = [seconds]
        else:
            observed.append(seconds)
        self._later.due()

    def flush(self) -> None:
        """Move every batched sample into its Prometheus series."""
        counts = self._counts
        if counts:
            self._counts = {}
            for child, n in counts.items():
                child.inc(n)
        observed = self._observed
        if observed:
            self._observed = {}
            for hist, values in observed.items():
                observe_all(hist, values)

    def in_flight_for(self, route: str) -> Gauge:
        gauge = self._in_flight.get(route)
        if gauge is None:
            gauge = self._in_flight[route] = self.in_flight.labels(route)
        return gauge


class _FlushFirst(Collector):
    """Registered first: a registry collection flushes the batched samples before it
    reads any metric."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return ()

    def describe(self) -> Iterable[Metric]:
        return ()
