#!/usr/bin/env python3
"""Event streams through one tunnelguard process (issue 19, SPEC 5.1): the latency each event
gains on its way through the proxy, over a long stream, and the proxy's memory per stream.

Starts an aiohttp upstream (a child process: this script re-run with `--serve-upstream`) that
streams SSE events, each stamped with CLOCK_MONOTONIC when it was written, and one tunnelguard
(`python3 -m proxy run --config FILE`, one worker) with two routes in front of it: `llm`, with
the default presets (the first event held and judged, every later event scanned), and `plain`
(no rules: relayed untouched).  Then:

1. latency: a stream of EVENTS events GAP_MS apart, read directly and through both routes,
   ROUNDS times, alternating; an event's delay is its arrival time minus its stamp, and the
   added latency of event i is the median over the rounds of (delay through the proxy -
   direct delay).  Printed for the first event and as medians of each quarter of the stream:
   flat quarters mean the cost does not grow with the stream;
2. memory: the proxy's VmRSS idle, after one stream of LONG events on `llm`, and its peak
   (sampled every 50 ms) while CONCURRENT streams of EVENTS events GAP_MS apart run at once.

Every stream is checked (status, every event in order, byte for byte with the direct read); a
wrong one makes the exit status 1.  It is a script, not a test: it asserts nothing about the
figures.  Everything is on 127.0.0.1, bounded in time (about 30 s), and every process started is
stopped by PID.

    python3 bench/streams.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # bench/ is not a package: peers.py sits beside this file
    HOST,
    ROOT,
    Processes,
    RssSampler,
    free_port,
    proc_status_kib,
    say,
    tunnelguard_version,
    wait_for_port,
    wait_for_startup,
)

EVENTS = 200  # events per stream in the latency and concurrency phases
GAP_MS = 5.0  # between two events
ROUNDS = 5  # latency: streams read per path (direct, llm, plain), alternating
LONG = 1000  # memory: events in the one long stream
LONG_PAD = 10_000  # bytes of padding per event of the long stream (under the 16 KiB bound)
CONCURRENT = 100  # memory: streams at once
RUN_TIMEOUT_S = 90.0

CONFIG = """\
version: 1
listen: {host}:0
admin: {{listen: {host}:0}}
upstreams:
  up: {{url: "{upstream}", timeouts: {{connect: 2s, response: 10s}}, max_concurrency: 1024}}
routes:
  - {{name: plain, upstream: up, match: {{path_prefix: /plain}}, strip_prefix: true}}
  - {{name: llm, upstream: up, rules: [graphql, jsonrpc, slack, error-envelope]}}
"""


# -- the upstream (a child process) -----------------------------------------------------------


async def _events(request: web.Request) -> web.StreamResponse:
    """`n` events `gap` ms apart, each `{"i": i, "t": <monotonic ns when written>, "pad": ...}`,
    like an LLM's deltas: `event: content_block_delta`."""
    n = int(request.query.get("n", EVENTS))
    gap = float(request.query.get("gap", GAP_MS)) / 1000
    pad = "x" * int(request.query.get("pad", "40"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    start = time.monotonic()
    for i in range(n):
        if gap:
            await asyncio.sleep(max(0.0, start + i * gap - time.monotonic()))
        line = f'event: content_block_delta\ndata: {{"i": {i}, "t": {time.monotonic_ns()}, '
        await resp.write(f'{line}"pad": "{pad}"}}\n\n'.encode())
    await resp.write_eof()
    return resp


def serve_upstream(port: int) -> None:
    app = web.Application()
    app.router.add_get("/events", _events)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


# -- the client ---------------------------------------------------------------------------------


async def read_stream(session: aiohttp.ClientSession, url: str) -> tuple[bytes, list[float]]:
    """The whole body, and each event's delay (arrival - stamp) in microseconds."""
    delays: list[float] = []
    body = bytearray()
    pending = b""
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: status {resp.status}")
        async for chunk in resp.content.iter_any():
            now = time.monotonic_ns()
            body += chunk
            pending += chunk
            while (cut := pending.find(b"\n\n")) >= 0:
                event, pending = pending[:cut], pending[cut + 2 :]
                stamp = int(event.split(b'"t": ', 1)[1].split(b",", 1)[0])
                delays.append((now - stamp) / 1000)
    return bytes(body), delays


def _quarters(n: int) -> list[tuple[int, int]]:
    """The four quarters of events 2..n, as (first, last) event numbers (1-based)."""
    cuts = [1 + (n - 1) * i // 4 for i in range(5)]
    return [(cuts[i] + 1, cuts[i + 1]) for i in range(4)]


async def latency(upstream: str, proxy: str) -> tuple[dict[str, list[float]], bool]:
    paths = {
        "direct": f"{upstream}/events",
        "llm": f"{proxy}/events",
        "plain": f"{proxy}/plain/events",
    }
    delays: dict[str, list[list[float]]] = {k: [] for k in paths}
    ok = True
    async with aiohttp.ClientSession() as session:
        await read_stream(session, paths["llm"] + "?n=20&gap=0")  # warm-up: connections
        for _ in range(ROUNDS):
            bodies = {}
            for key, url in paths.items():
                bodies[key], got = await read_stream(session, url)
                ok &= len(got) == EVENTS
                delays[key].append(got)
            # the stamps differ between reads; every event's shape must have come through
            ok &= all(b.count(b"\n\n") == EVENTS for b in bodies.values())
    added = {}
    for key in ("llm", "plain"):
        added[key] = [
            statistics.median(p - d for p, d in zip(ps, ds, strict=True))
            for ps, ds in zip(
                zip(*delays[key], strict=True), zip(*delays["direct"], strict=True), strict=True
            )
        ]
    added["direct"] = [statistics.median(x) for x in zip(*delays["direct"], strict=True)]
    return added, ok


async def memory(proxy: str, pid: int) -> tuple[dict[str, float], bool]:
    out: dict[str, float] = {}
    ok = True
    await asyncio.sleep(1.0)  # let start-up garbage settle
    out["idle"] = (proc_status_kib(pid, "VmRSS") or 0) / 1024
    async with aiohttp.ClientSession() as session:
        body, got = await read_stream(session, f"{proxy}/events?n={LONG}&gap=0&pad={LONG_PAD}")
        ok &= len(got) == LONG
        out["long_bytes"] = len(body)
        out["after_long"] = (proc_status_kib(pid, "VmRSS") or 0) / 1024
        out["hwm_after_long"] = (proc_status_kib(pid, "VmHWM") or 0) / 1024
    connector = aiohttp.TCPConnector(limit=CONCURRENT * 2)
    with RssSampler([pid], interval=0.05).running() as sampler:
        async with aiohttp.ClientSession(connector=connector) as session:
            results = await asyncio.gather(
                *(read_stream(session, f"{proxy}/events") for _ in range(CONCURRENT))
            )
    ok &= all(len(got) == EVENTS for _, got in results)
    out["peak_concurrent"] = sampler.peak_kib / 1024
    out["after_concurrent"] = (proc_status_kib(pid, "VmRSS") or 0) / 1024
    return out, ok


def _row(name: str, values: list[float]) -> str:
    quarters = " | ".join(
        f"{statistics.median(values[a - 1 : b]):.0f}" for a, b in _quarters(len(values))
    )
    return f"| {name} | {values[0]:.0f} | {quarters} | {statistics.median(values[1:]):.0f} |"


async def measure(upstream: str, proxy: str, pid: int) -> bool:
    added, ok_latency = await latency(upstream, proxy)
    mem, ok_memory = await memory(proxy, pid)
    print(f"{tunnelguard_version()}, {EVENTS} SSE events {GAP_MS:g} ms apart, ")
    print(f"{ROUNDS} rounds per path, medians in microseconds:\n")
    spans = " | ".join(f"events {a}-{b}" for a, b in _quarters(EVENTS))
    print(f"| path | first event | {spans} | all but the first |")
    print("|---|---|---|---|---|---|---|")
    print(_row("direct: delay upstream write -> client read", added["direct"]))
    print(_row("added by tunnelguard, route with rules (held, scanned)", added["llm"]))
    print(_row("added by tunnelguard, route without rules", added["plain"]))
    print()
    growth = mem["after_long"] - mem["idle"]
    per_stream = (mem["peak_concurrent"] - mem["after_long"]) / CONCURRENT * 1024
    print("| proxy memory (VmRSS) | MiB |")
    print("|---|---|")
    print(f"| idle | {mem['idle']:.1f} |")
    print(
        f"| after one {LONG}-event stream ({mem['long_bytes'] / 1e6:.1f} MB) on the route "
        f"with rules | {mem['after_long']:.1f} (+{growth:.1f}; VmHWM {mem['hwm_after_long']:.1f}) |"
    )
    print(
        f"| peak while {CONCURRENT} streams of {EVENTS} events run at once | "
        f"{mem['peak_concurrent']:.1f} (about {per_stream:.0f} KiB per stream) |"
    )
    print(f"| after them | {mem['after_concurrent']:.1f} |")
    return ok_latency and ok_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="tg-streams-") as tmp:
            port = free_port()
            up = procs.start("upstream", [sys.executable, __file__, "--serve-upstream", str(port)])
            if not wait_for_port(port, up, 15):
                say("the upstream did not start")
                return 1
            upstream = f"http://{HOST}:{port}"
            config = Path(tmp) / "streams.yaml"
            config.write_text(CONFIG.format(host=HOST, upstream=upstream))
            log, err = Path(tmp) / "proxy.log", Path(tmp) / "proxy.err"
            with open(log, "wb") as out, open(err, "wb") as errf:
                proxy = procs.start(
                    "tunnelguard",
                    [sys.executable, "-m", "proxy", "run", "--config", str(config)],
                    stdout=out, stderr=errf, cwd=ROOT,
                )  # fmt: skip
            record = wait_for_startup(proxy, log, err, "tunnelguard")
            ok = asyncio.run(
                asyncio.wait_for(measure(upstream, str(record["listen"]), proxy.pid), RUN_TIMEOUT_S)
            )
            if not ok:
                say("a stream came back wrong (status, events or bytes)")
            return 0 if ok else 1
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
