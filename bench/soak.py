"""Soak: mixed traffic at a fixed rate through a real tunnelguard process, with reloads.

    python3 bench/soak.py [--duration 600] [--rate 100] [--report-every 60]

Traffic (round robin): clean JSON, a tunnelled error (rewritten to 401), a gzip-compressed
tunnelled error (504), a 1 MiB streamed download, a refused upstream (502), and a WebSocket
echo when the proxy supports it; the config is reloaded (SIGHUP) every 30 s.  Every
`--report-every` seconds it prints the proxy's RSS, open fds, the p99 latency of the admin
`/healthz` (the admin listener shares the proxy's event loop, so this is the loop's lag as a
client sees it) and the counts of answers by kind.  Everything runs on 127.0.0.1; every loop is
bounded by the duration; the proxy is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
STREAM = bytes(range(256)) * 4096  # 1 MiB
EXPECTED = {"clean": 200, "tunnelled": 401, "gzip": 504, "stream": 200, "refused": 502}


@dataclass
class Sample:
    elapsed: float
    rss_kib: int
    fds: int
    loop_p99_ms: float
    answers: dict[str, int]


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    reloads: int = 0
    websocket: bool = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _proc_status(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _upstream_app() -> web.Application:
    app = web.Application()
    tunnelled = gzip.compress(b'{"error": "upstream timeout"}')

    async def clean(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "items": list(range(50))})

    async def lie(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": "invalid_auth"})

    async def gz(request: web.Request) -> web.Response:
        return web.Response(
            body=tunnelled,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(STREAM)
        await resp.prepare(request)
        for i in range(0, len(STREAM), 65536):
            await resp.write(STREAM[i : i + 65536])
        await resp.write_eof()
        return resp

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app.router.add_get("/clean", clean)
    app.router.add_get("/tunnelled", lie)
    app.router.add_get("/gzip", gz)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    return app


def _config(upstream: str, refused: str, retry_after: int) -> str:
    return (
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  app: {{url: '{upstream}', retry_after: {retry_after}s}}\n"
        f"  gone: {{url: '{refused}'}}\n"
        "routes:\n"
        "  - {name: refused, upstream: gone, match: {path_prefix: /refused}}\n"
        "  - {name: app, upstream: app, rules: [slack, error-envelope]}\n"
    )


async def _one(session: aiohttp.ClientSession, base: str, kind: str, result: Result) -> None:
    path = {"refused": "/refused/x"}.get(kind, f"/{kind}")
    try:
        async with session.get(base + path) as r:
            body = await r.read()
            ok = r.status == EXPECTED[kind]
            if kind == "stream":
                ok = ok and body == STREAM
            if r.status >= 500 and kind == "refused":
                ok = ok and r.headers.get("Content-Type") == "application/problem+json"
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.unexpected.append(f"{kind}: {type(exc).__name__}")
        result.counts[f"{kind}:error"] += 1
        return
    result.counts[f"{kind}:{r.status}"] += 1
    if not ok:
        result.unexpected.append(f"{kind}: status {r.status}")


async def _websocket(session: aiohttp.ClientSession, base: str, result: Result) -> None:
    try:
        async with session.ws_connect(base.replace("http", "ws") + "/ws") as sock:
            await sock.send_str("ping")
            reply = await sock.receive(timeout=5)
            ok = reply.type == aiohttp.WSMsgType.TEXT and reply.data == "ping"
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.counts[f"ws:{type(exc).__name__}"] += 1
        return
    result.websocket = True
    result.counts[f"ws:{'ok' if ok else 'wrong'}"] += 1
    if not ok:
        result.unexpected.append("ws: wrong echo")


async def soak(
    duration: float, rate: float, report_every: float, out: TextIO | None = None
) -> Result:
    """Run the soak; returns every sample and count (prints a line per report)."""
    result = Result()
    runner = web.AppRunner(_upstream_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    upstream = f"http://{host}:{port}"
    refused = f"http://127.0.0.1:{_free_port()}"
    workdir = Path(tempfile.mkdtemp(prefix="tunnelguard-soak-"))
    config = workdir / "config.yaml"
    config.write_text(_config(upstream, refused, 5))
    log_path = workdir / "proxy.out"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tasks: set[asyncio.Task[None]] = set()
    try:
        base = admin = ""
        deadline = time.monotonic() + 15
        while not base and time.monotonic() < deadline:
            for line in log_path.read_text().splitlines():
                record = json.loads(line)
                if record.get("event") == "startup":
                    base, admin = record["listen"], record["admin"]
            await asyncio.sleep(0.05)
        if not base:
            raise RuntimeError(f"proxy did not start: {log_path.read_text()}")
        kinds = list(EXPECTED)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.monotonic()
            next_report = started + report_every
            next_reload = started + 30
            lags: list[float] = []
            sent = 0
            while (now := time.monotonic()) < started + duration:
                due = int((now - started) * rate)
                while sent < due:  # a fixed rate, whatever the answers' latency
                    kind = kinds[sent % len(kinds)]
                    task = asyncio.ensure_future(_one(session, base, kind, result))
                    if sent % 50 == 0:
                        ws_task = asyncio.ensure_future(_websocket(session, base, result))
                        tasks.add(ws_task)
                        ws_task.add_done_callback(tasks.discard)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                probe = time.perf_counter()
                async with session.get(admin + "/healthz") as r:
                    await r.read()
                lags.append((time.perf_counter() - probe) * 1000)
                if now >= next_reload:
                    config.write_text(_config(upstream, refused, 5 + result.reloads % 2))
                    proc.send_signal(signal.SIGHUP)
                    result.reloads += 1
                    next_reload += 30
                if now >= next_report:
                    rss, fds = _proc_status(proc.pid)
                    p99 = statistics.quantiles(lags, n=100)[98] if len(lags) > 2 else 0.0
                    sample = Sample(now - started, rss, fds, p99, dict(result.counts))
                    result.samples.append(sample)
                    lags.clear()
                    print(
                        f"t={sample.elapsed:5.0f}s rss={rss / 1024:6.1f} MiB fds={fds:4d} "
                        f"loop_p99={p99:6.2f} ms sent={sent} unexpected={len(result.unexpected)}"
                        f" reloads={result.reloads}",
                        file=out or sys.stdout,
                        flush=True,
                    )
                    next_report += report_every
                await asyncio.sleep(0.02)
            if tasks:
                await asyncio.wait(tasks, timeout=15)
    finally:
        for task in tasks:
            task.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await runner.cleanup()
        failures = [
            json.loads(line)
            for line in log_path.read_text().splitlines()
            if '"event":"reload"' in line and '"result":"failure"' in line
        ]
        for failed in failures:
            result.unexpected.append(f"reload failed: {failed}")
        with contextlib.suppress(OSError):
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--rate", type=float, default=100, help="requests per second")
    parser.add_argument("--report-every", type=float, default=60)
    args = parser.parse_args()
    result = asyncio.run(soak(args.duration, args.rate, args.report_every))
    first, last = result.samples[0], result.samples[-1]
    print(f"\nanswers: {dict(sorted(result.counts.items()))}")
    print(f"reloads: {result.reloads}; websocket tunnelled: {result.websocket}")
    print(
        f"RSS {first.rss_kib / 1024:.1f} -> {last.rss_kib / 1024:.1f} MiB, "
        f"max {max(s.rss_kib for s in result.samples) / 1024:.1f} MiB; "
        f"fds {first.fds} -> {last.fds}, max {max(s.fds for s in result.samples)}"
    )
    print(f"unexpected: {len(result.unexpected)} {result.unexpected[:10]}")
    return 1 if result.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
