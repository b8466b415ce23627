#!/usr/bin/env python3
"""What could a Python proxy reach here?  CPU per request: HAProxy, tunnelguard, and three floors.

Loads five proxies in turn with wrk, pinned like bench/run.py (the proxy on one CPU, wrk and
the upstream nginx on the other), on bodies (a) and (b) of the benchmark, and prints for each
req/s, p50 and the proxy's CPU time per request (user and system, from /proc), then the
p50 latency each adds at one connection (`wrk -c1`, body (a)):

  haproxy   HAProxy 2.x, wait-for-body + the JSON rule (the peer of issue 9)
  tunnelguard  the real thing, embedded default config
  hybrid    aiohttp's low-level server + a raw httptools upstream client + orjson + the rule
  lean      raw asyncio protocols on both sides (httptools parsers, uvloop) + orjson + the rule
  featured  lean's lifecycle with every per-request feature of tunnelguard, called from its own
            modules (`featured_answer`): the least a Python tunnelguard could cost

`hybrid`, `lean` and `featured` are in this file (`--serve hybrid|lean|featured`).  `hybrid`
and `lean` are the least code that does tunnelguard's job on the benchmark's bodies (forward,
parse the JSON, rewrite `"ok": false` to 401, pass the rest) with none of its features
(limits, failure table, metrics, logs, retries): `lean` is what an asyncio-protocol server
and client cost, `hybrid` what replacing only the upstream client costs while aiohttp still
serves the clients.  `featured` adds, around lean's request, the calls tunnelguard's handler
makes for its features, so it bounds what any redesign of tunnelguard's lifecycle in Python
can reach while it keeps them.

    python3 bench/ceiling.py [--duration S] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length"})


# --------------------------------------------------------------------------- the two floors


def serve(kind: str, upstream: str, port: int) -> None:
    import httptools
    import orjson
    import uvloop

    up_host, up_port = upstream.removeprefix("http://").split(":")
    idle: list[Upstream] = []
    tasks: set[asyncio.Future[None]] = set()

    class Upstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.done: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def on_message_begin(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.body: list[bytes] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            assert self.done is not None
            code = self.parser.get_status_code()
            self.done.set_result((code, self.headers, b"".join(self.body)))

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.done is not None and not self.done.done():
                self.done.set_exception(ConnectionError("upstream closed"))

    async def fetch(
        method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if idle:
            conn = idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(Upstream, up_host, int(up_port))
        out = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            if name.lower() not in HOP:
                out += [name, b": ", value, b"\r\n"]
        out.append(b"Via: 1.1 ceiling\r\n\r\n")
        conn.done = asyncio.get_running_loop().create_future()
        conn.transport.write(b"".join(out))  # type: ignore[attr-defined]
        result = await conn.done
        idle.append(conn)
        return result

    def judge(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
        ctype = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        if status == 200 and ctype.startswith(b"application/json"):
            doc = orjson.loads(body)
            if isinstance(doc, dict) and doc.get("ok") is False:
                return 401
        return status

    async def judged(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        status, got, body = await fetch(method, target, headers)
        out = [b"HTTP/1.1 %d X\r\n" % judge(status, got, body)]
        for name, value in got:
            if name.lower() not in HOP:
                out += [name, b": ", value, b"\r\n"]
        out += [b"Content-Length: %d\r\n\r\n" % len(body), body]
        return b"".join(out)

    answer_with = judged
    if kind == "featured":
        answer_with = featured_answer(fetch, upstream)
    if kind in ("lean", "featured"):

        class Client(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.parser = httptools.HttpRequestParser(self)

            def on_message_begin(self) -> None:
                self.headers: list[tuple[bytes, bytes]] = []

            def on_url(self, url: bytes) -> None:
                self.url = url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers.append((name, value))

            def on_message_complete(self) -> None:
                method = self.parser.get_method()
                task = asyncio.ensure_future(self.answer(method, self.url, self.headers))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            def data_received(self, data: bytes) -> None:
                self.parser.feed_data(data)

            async def answer(
                self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
            ) -> None:
                data = await answer_with(method, target, headers)
                if not self.transport.is_closing():  # type: ignore[attr-defined]
                    self.transport.write(data)  # type: ignore[attr-defined]

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(
                Client, "127.0.0.1", port, backlog=4096
            )
            await server.serve_forever()

    else:
        from aiohttp import web

        async def handler(request: web.BaseRequest) -> web.Response:
            raw = [(n, v) for n, v in request.raw_headers]
            status, got, body = await fetch(request.method.encode(), request.raw_path.encode(), raw)
            response = web.Response(body=body, status=judge(status, got, body))
            for name, value in got:
                if name.lower() not in HOP:
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            return response

        async def main() -> None:
            server = web.Server(handler)
            await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=4096)
            await asyncio.Event().wait()

    uvloop.run(main())


def featured_answer(fetch: Any, upstream: str) -> Any:
    """`lean`'s lifecycle with every per-request feature of tunnelguard, called from its
    own modules as its handler calls them: trace context, routing, the in-flight gauge,
    the request and response header policy, the retry budget and the upstream's
    admission, upstream timing, the inspection policy and `decide()` on the embedded
    default rules, the verdict's headers, the response head, and one metrics sample and
    access-log line per request (`Recorder`).  What it leaves out is tunnelguard's own
    lifecycle (the connection's limits and bookkeeping, Call/Outcome/Plan, the await
    chain, the pool's failure table): so lean -> featured is what the features cost, and
    featured -> tunnelguard what the lifecycle costs beyond the least one."""
    import os
    import time

    from proxy.config.load import load_default
    from proxy.downstream import writers
    from proxy.observe.logs import Log
    from proxy.observe.metrics import Metrics
    from proxy.observe.record import Recorder, RequestEnded
    from proxy.rules import inspection as ins
    from proxy.rules.decide import decide
    from proxy.rules.snapshot import build
    from proxy.rules.verdict import Delivery
    from proxy.upstream.guards import UpstreamGuard
    from proxy.wire import headers as h
    from proxy.wire.tracecontext import trace_context_of

    runtime = build(load_default(upstream))
    metrics = Metrics()
    recorder = Recorder(metrics, Log("json", open(os.devnull, "w")))  # noqa: SIM115
    route = runtime.routes[0]
    guard = UpstreamGuard.build(route.upstream)
    policy = runtime.inspect

    async def answer(method: bytes, target: bytes, raw: list[tuple[bytes, bytes]]) -> bytes:
        started = time.perf_counter()
        parents = [v.decode("latin-1") for n, v in raw if n.lower() == b"traceparent"]
        trace_id, traceparent = trace_context_of(parents)
        host = next((v.decode("latin-1") for n, v in raw if n.lower() == b"host"), "")
        path = target.decode("latin-1")
        chosen = runtime.route_for(host, path)
        assert chosen is route
        gauge = metrics.in_flight_for(route.name)
        gauge.inc()
        sent = h.request_headers(
            raw, client_ip="127.0.0.1", scheme="http", upstream_host=route.upstream_host,
            traceparent=traceparent, new_trace=not parents,
        )  # fmt: skip
        wire = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in sent]
        guard.budget.record_request()
        admission = guard.admit()
        with admission:
            up_started = time.perf_counter()
            status, got, body = await fetch(method, route.upstream_target(path).encode(), wire)
            up_seconds = time.perf_counter() - up_started
            admission.record(failed=status >= 500)
        metrics.observe_upstream(route.name, route.upstream.name, up_seconds)
        headers = h.response_headers(got)
        ctype = next((v.decode() for n, v in got if n.lower() == b"content-type"), None)
        coding = next((v.decode() for n, v in got if n.lower() == b"content-encoding"), None)
        delivery = Delivery(status, headers, None)
        verdict = None
        if policy.wants_status(method.decode(), status):
            mtype, codings = ins.media_type(ctype), ins.encodings(coding)
            reason = policy.skip_reason(mtype, codings, len(body))
            if reason is not None:
                metrics.count_inspection(route.name, reason)
            else:
                decision = decide(
                    route.rules, policy, status, headers, body, mtype, codings,
                    fallback_retry_after=route.fallback_retry_after, trace_id=trace_id,
                )  # fmt: skip
                metrics.count_inspection(route.name, decision.result)
                verdict = decision.verdict
                if verdict is not None:
                    metrics.count_tunnelled(
                        route.name, verdict.rule, verdict.action, verdict.status
                    )
                    delivery = decision.delivery or delivery
        out = writers.buffered(delivery, body, route.fallback_retry_after, False)
        data = writers.head(
            out.status, None, out.headers, b"Content-Length: %d\r\n" % len(out.body or b"")
        ) + (out.body or b"")
        gauge.dec()
        recorder.ended(
            RequestEnded(
                route=route.name, method=method.decode(), path=path.split("?", 1)[0],
                code=out.status, true_code=verdict.status if verdict else out.status,
                source="rewritten" if verdict else "upstream",
                total_seconds=time.perf_counter() - started, trace_id=trace_id,
                rule=verdict.rule if verdict else None,
                action=verdict.action if verdict else None,
                upstream_seconds=up_seconds, failure=None, attempts=1,
            )
        )  # fmt: skip
        return data

    return answer


# --------------------------------------------------------------------------- measuring


def _user_sys_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _one_connection(
    wrk: Any, procs: Any, direct: str, sides: dict[str, tuple[str, int]], case: Any, args: Any
) -> None:
    """Latency at one connection (`wrk -c1`): the p50 each proxy adds over the upstream
    alone, and its CPU per request, which is far above the loaded figure: every request
    now pays the proxy's wake-ups from idle and its cold caches."""
    from peers import proc_cpu_seconds

    direct_p50 = statistics.median(
        wrk.run(direct + case.path, 1, args.duration, procs).p50_ms for _ in range(args.repeat)
    )
    print(f"\n| proxy | {case.title}, one connection: p50 | added over direct | CPU us/request |")
    print("|---|--:|--:|--:|")
    print(f"| direct (upstream) | {direct_p50 * 1000:.0f} us | - | - |")
    for side, (url, pid) in sides.items():
        runs = []
        for _ in range(args.repeat):
            before = proc_cpu_seconds(pid) or 0.0
            m = wrk.run(url + case.path, 1, args.duration, procs)
            cpu = ((proc_cpu_seconds(pid) or 0.0) - before) * 1e6 / max(m.requests, 1)
            runs.append((m.p50_ms, cpu))
        p50 = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        added = (p50 - direct_p50) * 1000
        print(f"| {side} | {p50 * 1000:.0f} us | {added:.0f} us | {cpu:.0f} |")
    print(f"\nmedians of {args.repeat} runs of {args.duration} s, wrk -t1 -c1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve", choices=("hybrid", "lean", "featured"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.upstream, args.port)
        return 0

    from peers import (
        Processes,
        ensure_tool,
        free_port,
        say,
        start_haproxy,
        start_tunnelguard,
        start_upstream,
        wait_for_port,
    )
    from run import Wrk, choose_layout, parse_args, scenarios, write_site

    layout, notes = choose_layout(parse_args([]))
    for note in notes:
        say(note)
    nginx = ensure_tool("nginx", ["nginx-light", "nginx"], True)
    haproxy = ensure_tool("haproxy", ["haproxy"], True)
    wrk_path = ensure_tool("wrk", ["wrk"], True)
    if nginx is None or haproxy is None or wrk_path is None:
        say("nginx, haproxy and wrk are needed")
        return 1
    cases = [c for c in scenarios() if c.key in "ab"]
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tunnelguard-ceiling-"))
    ticks = 100.0  # USER_HZ
    try:
        www = write_site(tmp, scenarios())
        upstream = start_upstream(nginx, tmp, www, procs, layout, layout.load_cpus)
        sides: dict[str, tuple[str, int]] = {}
        hp = start_haproxy(haproxy, tmp, upstream, procs, layout, layout.proxy_cpus)
        sides["haproxy"] = (hp.url, hp.proc.pid)
        tg = start_tunnelguard("tg", "tunnelguard", tmp, upstream, procs, layout, layout.proxy_cpus)
        sides["tunnelguard"] = (tg.url, tg.proc.pid)
        for kind in ("hybrid", "lean", "featured"):
            port = free_port()
            argv = [sys.executable, __file__, "--serve", kind, "--upstream", upstream.url]
            proc = procs.start(kind, layout.pinned([*argv, "--port", str(port)], layout.proxy_cpus))
            if not wait_for_port(port, proc, 10):
                say(f"{kind} did not start")
                return 1
            sides[kind] = (f"http://127.0.0.1:{port}", proc.pid)
        wrk = Wrk(wrk_path, "", layout)
        rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        for rep in range(args.repeat):
            for side, (url, pid) in sides.items():
                for case in cases:
                    if rep == 0:
                        wrk.run(url + case.path, 32, 1, procs)  # warm-up
                    before = _user_sys_ticks(pid)
                    m = wrk.run(url + case.path, 32, args.duration, procs)
                    after = _user_sys_ticks(pid)
                    user = (after[0] - before[0]) / ticks * 1e6 / max(m.requests, 1)
                    system = (after[1] - before[1]) / ticks * 1e6 / max(m.requests, 1)
                    rows.setdefault((side, case.key), []).append((m.rps, m.p50_ms, user, system))
        print("| proxy | body | req/s | / HAProxy | p50 ms | CPU us/request (user + sys) |")
        print("|---|---|--:|--:|--:|--:|")
        for case in cases:
            base = statistics.median(r[0] for r in rows[("haproxy", case.key)])
            for side in sides:
                runs = rows[(side, case.key)]
                rps = statistics.median(r[0] for r in runs)
                p50 = statistics.median(r[1] for r in runs)
                user = statistics.median(r[2] for r in runs)
                system = statistics.median(r[3] for r in runs)
                print(
                    f"| {side} | {case.title} | {rps:,.0f} | {rps / base:.2f}x | {p50:.2f} "
                    f"| {user + system:.0f} ({user:.0f} + {system:.0f}) |"
                )
        print(f"\nmedians of {args.repeat} runs of {args.duration} s, wrk -t1 -c32; {time.ctime()}")
        _one_connection(wrk, procs, upstream.url, sides, cases[0], args)
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
