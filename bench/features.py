#!/usr/bin/env python3
"""What each per-request feature of tunnelguard costs on its own, in µs of CPU.

Calls every step tunnelguard's handler takes for scenario (a) of bench/run.py (a 200 B
Slack `invalid_auth` answer rewritten to 401), from tunnelguard's own modules, in a
tight loop inside a running uvloop (so the metrics and the access log batch as they do
when serving: a flush per loop iteration, every `--batch` requests).  These are the
features' floors: warm caches, no I/O, no lifecycle.  bench/ceiling.py's `featured`
side runs the same calls around a real request; their difference is what a busy loop,
cold caches and the interleaving with I/O add.

    python3 bench/features.py [--requests N] [--batch B] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY = (
    b'{"ok": false, "error": "invalid_auth", "warning": "superfluous_charset", '
    b'"response_metadata": {"warnings": ["superfluous_charset"]}, "padding": "' + b"x" * 60 + b'"}'
)
REQUEST = [(b"Host", b"127.0.0.1:8080"), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]
RESPONSE = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 15:57:44 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"%d" % len(BODY)),
    (b"Connection", b"keep-alive"),
    (b"ETag", b'"abc-123"'),
]


def steps() -> list[tuple[str, Callable[[], Any]]]:
    """(name, one call) for each feature, in the order the handler runs them."""
    from proxy.config.load import load_default
    from proxy.downstream import writers
    from proxy.observe.logs import Log
    from proxy.observe.metrics import Metrics
    from proxy.observe.record import Recorder, RequestEnded
    from proxy.rules import inspection as ins
    from proxy.rules.decide import decide
    from proxy.rules.snapshot import build
    from proxy.upstream.guards import UpstreamGuard
    from proxy.wire import headers as h
    from proxy.wire.tracecontext import trace_context_of

    runtime = build(load_default("http://127.0.0.1:1"))
    metrics = Metrics()
    log = Log("json", open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the run)
    recorder = Recorder(metrics, log)
    route = runtime.routes[0]
    guard = UpstreamGuard.build(route.upstream)
    policy = runtime.inspect
    gauge = metrics.in_flight_for(route.name)
    trace_id, traceparent = trace_context_of([])
    headers = h.response_headers(RESPONSE)

    def admission() -> None:
        guard.budget.record_request()
        held = guard.admit()
        with held:
            held.record(failed=False)

    def judge() -> Any:
        return decide(
            route.rules, policy, 200, headers, BODY, "application/json", (),
            fallback_retry_after=route.fallback_retry_after, trace_id=trace_id,
        )  # fmt: skip

    def request_policy() -> Any:
        return h.request_headers(
            REQUEST, client_ip="127.0.0.1", scheme="http", upstream_host=None,
            traceparent=traceparent, new_trace=True,
        )  # fmt: skip

    decision = judge()
    verdict = decision.verdict
    assert verdict is not None and verdict.status == 401, "the body must be judged 401"
    answer = writers.buffered(decision.delivery, BODY, 5, False)
    ended = RequestEnded(
        route="default", method="GET", path="/api/x", code=401, true_code=401,
        source="rewritten", total_seconds=0.001, trace_id=trace_id, rule="slack",
        action="rewrite", upstream_seconds=0.0003, failure=None, attempts=1,
    )  # fmt: skip
    return [
        ("trace context (new trace id)", lambda: trace_context_of([])),
        ("route_for", lambda: runtime.route_for("127.0.0.1:8080", "/api/x")),
        ("in-flight gauge inc + dec", lambda: (gauge.inc(), gauge.dec())),
        ("request header policy", request_policy),
        ("retry budget + admission", admission),
        (
            "upstream duration histogram",
            lambda: metrics.observe_upstream(route.name, route.upstream.name, 0.0003),
        ),
        ("response header policy", lambda: h.response_headers(RESPONSE)),
        (
            "content type + coding",
            lambda: (ins.media_type("application/json"), ins.encodings(None)),
        ),
        ("decide() on the 200 B body", judge),
        (
            "inspection + tunnelled counters",
            lambda: (
                metrics.count_inspection(route.name, decision.result),
                metrics.count_tunnelled(route.name, verdict.rule, verdict.action, 401),
            ),
        ),
        ("verdict headers (buffered)", lambda: writers.buffered(decision.delivery, BODY, 5, False)),
        (
            "response head bytes",
            lambda: writers.head(answer.status, None, answer.headers, b"Content-Length: 200\r\n"),
        ),
        ("metrics sample + access line", lambda: recorder.ended(ended)),
    ]


async def measure(fn: Callable[[], Any], requests: int, batch: int) -> float:
    """µs per call: `batch` calls, then one loop iteration (the batched flushes run)."""
    for _ in range(batch):
        fn()
    await asyncio.sleep(0)
    cpu = time.process_time()
    for _ in range(requests // batch):
        for _ in range(batch):
            fn()
        await asyncio.sleep(0)
    return (time.process_time() - cpu) / (requests // batch * batch) * 1e6


async def run(args: argparse.Namespace) -> None:
    table = steps()
    results: dict[str, list[float]] = {name: [] for name, _ in table}
    for _ in range(args.repeat):
        for name, fn in table:
            results[name].append(await measure(fn, args.requests, args.batch))
    total = 0.0
    print("| feature (handler order) | µs per request |")
    print("|---|--:|")
    for name, runs in results.items():
        median = statistics.median(runs)
        total += median
        print(f"| {name} | {median:.2f} |")
    print(f"| **sum** | **{total:.1f}** |")
    print(
        f"\nmedians of {args.repeat} runs of {args.requests} calls, a loop iteration every "
        f"{args.batch}; {time.ctime()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=32, help="requests per loop iteration")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
