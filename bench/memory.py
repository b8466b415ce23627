#!/usr/bin/env python3
"""Memory bounds of one tunnelguard process: idle, 200 bodies buffered at once, 100 streams.

Starts an aiohttp upstream (a child process: this script re-run with `--serve-upstream`) and
one tunnelguard (`python3 -m proxy run --config FILE`, 1 worker, `inspect.max_body_bytes`
1 MiB) in front of it, then measures the proxy's RSS (VmRSS of /proc/PID/status sampled every
50 ms, and VmHWM) in three phases:

1. idle after start-up;
2. 200 concurrent requests for a clean JSON body of exactly `max_body_bytes`, which the proxy
   buffers and inspects; the upstream answers none until all 200 have arrived, then sends each
   body but its last byte, holds it HOLD_S, and sends the last byte, so all 200 bodies are in
   the proxy at once;
3. 100 concurrent 5 MiB `application/octet-stream` downloads (streamed, never buffered), read
   by the clients at a fixed pace so they all overlap for a few seconds.

It prints one markdown table.  Every answer is checked (status, byte count, and for (2) the
bytes and that the proxy inspected them); a wrong answer makes the exit status 1.  It is a
script, not a test: it asserts nothing about the sizes.  Everything is on 127.0.0.1, every
phase and the whole run are bounded in time, and every process started is stopped by PID.

    python3 bench/memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    tail,
    tunnelguard_version,
    wait_for_port,
    wait_for_startup,
)
from run import scrape_counts

MAX_BODY_BYTES = 1 << 20  # inspect.max_body_bytes in the config below (tunnelguard's default)
BUFFERED = 200  # phase 3: concurrent requests whose bodies the proxy buffers
STREAMS = 100  # phase 2: concurrent streamed downloads
STREAM_BYTES = 5 << 20
STREAM_SECONDS = 3.0  # each client reads its download at STREAM_BYTES / STREAM_SECONDS
CHUNK_BYTES = 64 << 10  # what the upstream writes at a time, and the client reads

HOLD_S = 1.0  # the upstream holds each JSON body's last byte this long: the bodies pile up
BARRIER_TIMEOUT_S = 10.0  # the upstream stops waiting for the rest of a batch after this
SAMPLE_INTERVAL_S = 0.05
IDLE_SAMPLES = 20  # phase 1: one second of samples
SETTLE_S = 1.0  # between phases: let the proxy finish its logs and free what it frees
PHASE_TIMEOUT_S = 30.0  # one phase's requests, all of them
RUN_TIMEOUT_S = 110.0  # the whole measurement, start-up included: under two minutes

CONFIG = """\
version: 1
listen: {host}:0
admin: {{listen: {host}:0}}
upstreams:
  app:
    url: {upstream}
    timeouts: {{connect: 2s, response: 30s}}
    max_concurrency: 512          # above both phases' concurrency: nothing queues or is refused
routes:
  - name: default
    upstream: app
    rules: [graphql, jsonrpc, slack, error-envelope]
inspect:
  max_body_bytes: {max_body}
"""


def clean_document(size: int) -> bytes:
    """A clean JSON object (nothing a preset matches) of exactly `size` bytes: many small
    items, like a real listing, so the proxy's parse builds many objects, then padding."""
    items: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"ok": True, "error": None, "errors": [], "items": items, "pad": ""}
    length = len(json.dumps(doc, separators=(",", ":")))
    i = 0
    while True:
        item = {"id": i, "name": f"item-{i:06d}", "price": i * 1.25, "active": i % 3 != 0}
        grown = length + len(json.dumps(item, separators=(",", ":"))) + 1  # + the comma
        if grown > size - 64:
            break
        items.append(item)
        length = grown
        i += 1
    doc["pad"] = "x" * (size - len(json.dumps(doc, separators=(",", ":"))))
    out = json.dumps(doc, separators=(",", ":")).encode()
    if len(out) != size:
        raise RuntimeError(f"document is {len(out)} B, not {size} B")
    return out


# --------------------------------------------------------------------------- the upstream


@dataclass
class _Batch:
    arrived: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app() -> web.Application:
    """`GET /json?batch=ID&of=N`: the clean document, once N requests of the batch arrived
    (or after BARRIER_TIMEOUT_S), its last byte HOLD_S later; `x-bench-together` says how many
    had arrived when the batch was released.  `GET /stream`: STREAM_BYTES of octet-stream,
    written as fast as the reader takes them."""
    document = clean_document(MAX_BODY_BYTES)
    chunk = bytes(range(256)) * (CHUNK_BYTES // 256)
    batches: dict[str, _Batch] = {}

    async def buffered(request: web.Request) -> web.StreamResponse:
        batch = batches.setdefault(request.query.get("batch", ""), _Batch())
        batch.arrived += 1
        if batch.arrived >= int(request.query.get("of", "1")):
            batch.released.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.released.wait(), BARRIER_TIMEOUT_S)
        batch.released.set()  # a timed-out batch is released for everyone
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json", "x-bench-together": str(batch.arrived)}
        )
        resp.content_length = len(document)
        await resp.prepare(request)
        view = memoryview(document)
        await resp.write(view[:-1])
        await asyncio.sleep(HOLD_S)
        await resp.write(view[-1:])
        await resp.write_eof()
        return resp

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = STREAM_BYTES
        await resp.prepare(request)
        for _ in range(STREAM_BYTES // CHUNK_BYTES):
            await resp.write(chunk)  # waits while the proxy does not read (backpressure)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/json", buffered)
    app.router.add_get("/stream", stream)
    return app


def serve_upstream(port: int) -> None:
    web.run_app(upstream_app(), host=HOST, port=port, access_log=None, print=None, backlog=1024)


# --------------------------------------------------------------------------- clients


@dataclass
class Outcome:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    together: list[int] = field(default_factory=list)  # phase 3: held at once, per answer
    started: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    @property
    def overlap_s(self) -> float:
        """How long every request of the phase was in flight at the same time."""
        if not self.started or len(self.ended) != len(self.started):
            return 0.0
        return max(0.0, min(self.ended) - max(self.started))


async def fetch_buffered(
    session: aiohttp.ClientSession, url: str, document: bytes, outcome: Outcome
) -> None:
    outcome.started.append(time.monotonic())
    view = memoryview(document)
    got = 0
    async with session.get(url) as resp:
        same = True
        async for data in resp.content.iter_chunked(CHUNK_BYTES):
            same = same and view[got : got + len(data)] == data
            got += len(data)
        together = int(resp.headers.get("x-bench-together", "0"))
    outcome.ended.append(time.monotonic())
    outcome.together.append(together)
    if resp.status != 200 or got != len(document) or not same:
        outcome.fail(f"json: status {resp.status}, {got} B, bytes {'ok' if same else 'differ'}")
    else:
        outcome.ok += 1


async def fetch_paced(session: aiohttp.ClientSession, url: str, outcome: Outcome) -> None:
    rate = STREAM_BYTES / STREAM_SECONDS
    started = time.monotonic()
    outcome.started.append(started)
    got = 0
    async with session.get(url) as resp:
        async for data in resp.content.iter_chunked(CHUNK_BYTES):
            got += len(data)
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:  # read no faster than `rate`: the proxy must hold back, not buffer
                await asyncio.sleep(ahead)
    outcome.ended.append(time.monotonic())
    if resp.status != 200 or got != STREAM_BYTES:
        outcome.fail(f"stream: status {resp.status}, {got} B (want 200, {STREAM_BYTES} B)")
    else:
        outcome.ok += 1


async def run_phase(
    count: int, request: Callable[[Outcome], Awaitable[None]], outcome: Outcome
) -> None:
    """`count` concurrent `request(outcome)` calls; an error or the phase timeout is a failure."""
    tasks = [asyncio.create_task(request(outcome)) for _ in range(count)]
    try:
        done, pending = await asyncio.wait(tasks, timeout=PHASE_TIMEOUT_S)
    finally:  # on the timeout, or when the run is cancelled: no request outlives its phase
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        outcome.fail(f"{len(pending)} of {count} requests unfinished after {PHASE_TIMEOUT_S:.0f}s")
    for task in done:
        if (exc := task.exception()) is not None:
            outcome.fail(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    """One phase: the proxy's RSS (KiB) before, at its peak and after, and its answers."""

    phase: str
    proves: str
    concurrent: int = 0
    before_kib: int = 0
    peak_kib: int = 0
    hwm_kib: int | None = None  # at the end of the phase
    after_kib: int | None = None  # SETTLE_S after the phase
    outcome: Outcome | None = None
    notes: list[str] = field(default_factory=list)


def rss_kib(pid: int) -> int:
    value = proc_status_kib(pid, "VmRSS")
    if value is None:
        raise RuntimeError(f"cannot read /proc/{pid}/status: has the proxy exited?")
    return value


async def idle_phase(pid: int) -> tuple[int, Row]:
    """The median of IDLE_SAMPLES samples after start-up: the floor of every other figure."""
    await asyncio.sleep(SETTLE_S)
    samples = []
    for _ in range(IDLE_SAMPLES):
        samples.append(rss_kib(pid))
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    idle = int(statistics.median(samples))
    row = Row("1. idle after start-up", "the floor every other figure is measured from")
    row.before_kib, row.peak_kib, row.hwm_kib = idle, max(samples), proc_status_kib(pid, "VmHWM")
    return idle, row


async def load_phase(
    pid: int, admin: str, row: Row, request: Callable[[Outcome], Awaitable[None]]
) -> tuple[Outcome, Counter[str]]:
    """`row.concurrent` concurrent `request`s with the proxy's RSS sampled throughout; fills in
    `row`; returns the answers and the proxy's /metrics counts (codes, inspections) of the
    phase."""
    outcome = row.outcome = Outcome()
    counts = scrape_counts(admin)
    row.before_kib = rss_kib(pid)
    with RssSampler([pid], SAMPLE_INTERVAL_S).running() as sampler:
        await run_phase(row.concurrent, request, outcome)
    row.peak_kib, row.hwm_kib = sampler.peak_kib, proc_status_kib(pid, "VmHWM")
    await asyncio.sleep(SETTLE_S)  # the proxy writes its last log lines, frees what it frees
    row.after_kib = rss_kib(pid)
    return outcome, scrape_counts(admin) - counts


async def measure(pid: int, base: str, admin: str) -> tuple[int, list[Row]]:
    """(idle RSS, a row per phase)."""
    idle, idle_row = await idle_phase(pid)
    document = clean_document(MAX_BODY_BYTES)
    connector = aiohttp.TCPConnector(limit=0)  # no client-side queueing: all in flight at once
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT_S)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        streamed = Row(
            f"2. {STREAMS} x {STREAM_BYTES >> 20} MiB octet-stream, streamed, paced reads",
            "a streamed body costs bounded buffers, not its size: the peak stays far below "
            f"{STREAMS} x {STREAM_BYTES >> 20} MiB",
            STREAMS,
        )
        url = f"{base}/stream"
        outcome, counts = await load_phase(
            pid, admin, streamed, lambda o: fetch_paced(session, url, o)
        )
        if counts["inspection=skipped_content_type"] != STREAMS:
            outcome.fail(f"the proxy's counts: {dict(counts)} (want {STREAMS} skipped)")
        if outcome.overlap_s < STREAM_SECONDS / 2:  # then phase 2 did not measure 100 streams
            outcome.fail(f"the {STREAMS} downloads overlapped for {outcome.overlap_s:.1f} s only")
        streamed.notes.append(f"all {STREAMS} in flight together for {outcome.overlap_s:.1f} s")

        buffered = Row(
            f"3. {BUFFERED} x {MAX_BODY_BYTES >> 10} KiB JSON, buffered + inspected",
            "a buffered body costs about max_body_bytes: the cap bounds memory per request",
            BUFFERED,
        )
        url = f"{base}/json?batch=phase2&of={BUFFERED}"
        outcome, counts = await load_phase(
            pid, admin, buffered, lambda o: fetch_buffered(session, url, document, o)
        )
        if counts["inspection=clean"] != BUFFERED:
            outcome.fail(f"the proxy's counts: {dict(counts)} (want {BUFFERED} clean)")
        together = min(outcome.together, default=0)
        if together < BUFFERED:
            outcome.fail(f"only {together} held at the upstream together")
        buffered.notes.append(f"{together} held together by the upstream for {HOLD_S:.0f} s")
    return idle, [idle_row, streamed, buffered]


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def render(idle: int, rows: Sequence[Row], setup: dict[str, str]) -> str:
    lines = [
        "## tunnelguard memory bounds (one process, RSS of the proxy alone)",
        "",
        *(f"- {key}: {value}" for key, value in setup.items()),
        "",
        "| phase | concurrent | RSS before | RSS peak | peak - idle | peak - before "
        "| per request | RSS 1 s after | VmHWM | answers | what it proves |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for row in rows:
        loaded = row.concurrent > 0
        own = row.peak_kib - row.before_kib
        answers = "-"
        if row.outcome is not None:
            failed = " **FAILED**" if row.outcome.failures else ""
            answers = f"{row.outcome.ok}/{row.concurrent} right{failed}"
        notes = f" ({'; '.join(row.notes)})" if row.notes else ""
        lines.append(
            f"| {row.phase} | {row.concurrent if loaded else '-'} | {_mib(row.before_kib)} "
            f"| {_mib(row.peak_kib)} | {_mib(row.peak_kib - idle) if loaded else '-'} "
            f"| {_mib(own) if loaded else '-'} "
            f"| {f'{own / row.concurrent:,.0f} KiB' if loaded else '-'} "
            f"| {_mib(row.after_kib)} | {_mib(row.hwm_kib)} | {answers}{notes} | {row.proves} |"
        )
    lines += [
        "",
        f"idle = the median of {IDLE_SAMPLES} samples {SAMPLE_INTERVAL_S * 1000:.0f} ms apart; "
        f"RSS peak = the largest VmRSS sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms during "
        "the phase; per request = (peak - before) / concurrent, the phase's own cost (phase 3 "
        "starts from what phase 2 left, which peak - idle includes); RSS 1 s after = what the "
        "process keeps once the phase is over (the allocator keeps some freed memory); VmHWM = "
        "the kernel's high-water mark since start-up, read at the end of the phase (it catches "
        "a peak between samples, and never goes down).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


async def bench(procs: Processes, tmp: Path) -> tuple[str, list[str]]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM cancels the run: `main` then stops every process
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    port = free_port()
    upstream_argv = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(port)]
    upstream_log = tmp / "upstream.out"
    with open(upstream_log, "wb") as out:
        upstream = procs.start("upstream", upstream_argv, stdout=out, stderr=subprocess.STDOUT)
    if not await asyncio.to_thread(wait_for_port, port, upstream, 30.0):
        raise RuntimeError(f"the aiohttp upstream did not start: {tail(upstream_log)}")

    config = tmp / "tunnelguard.yaml"
    config.write_text(
        CONFIG.format(host=HOST, upstream=f"http://{HOST}:{port}", max_body=MAX_BODY_BYTES)
    )
    argv = [sys.executable, "-m", "proxy", "run", "--config", str(config)]
    argv += ["--listen", f"{HOST}:0", "--admin-listen", f"{HOST}:0"]
    log, err = tmp / "tunnelguard.out", tmp / "tunnelguard.err"
    # stdout (one JSON line per request) goes to a file: it never blocks the proxy.
    with open(log, "wb") as out, open(err, "wb") as errf:
        proxy = procs.start("tunnelguard", argv, stdout=out, stderr=errf, cwd=ROOT)
    record = await asyncio.to_thread(wait_for_startup, proxy, log, err, "tunnelguard")
    base, admin = str(record["listen"]), str(record["admin"])

    idle, rows = await measure(proxy.pid, base, admin)
    if proxy.poll() is not None:
        raise RuntimeError(f"tunnelguard exited with {proxy.returncode}: {tail(err)}")
    setup = {
        "versions": f"{tunnelguard_version()}, Python {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__} (upstream and clients)",
        "proxy": f"`python3 -m proxy run --config FILE` (1 worker), pid {proxy.pid}; "
        f"inspect.max_body_bytes {MAX_BODY_BYTES:,} B; presets graphql, jsonrpc, slack, "
        "error-envelope",
        "upstream": "aiohttp in a child process; clients: aiohttp in this script",
        "phase 2": f"{STREAMS} GETs for {STREAM_BYTES:,} B of application/octet-stream, each "
        f"read at {STREAM_BYTES / STREAM_SECONDS / (1 << 20):.2f} MiB/s "
        f"(about {STREAM_SECONDS:.0f} s)",
        "phase 3": f"{BUFFERED} GETs for a clean application/json body of {MAX_BODY_BYTES:,} B "
        f"(Content-Length set); the upstream answers once all {BUFFERED} arrived and holds "
        f"each body's last byte {HOLD_S:.0f} s",
    }
    failures = []
    for row in rows:
        if row.outcome is not None and row.outcome.failures:
            shown = row.outcome.failures[:5]  # the first few say enough
            more = len(row.outcome.failures) - len(shown)
            failures += [f"{row.phase}: {message}" for message in shown]
            failures += [f"{row.phase}: ... and {more} more"] if more else []
    return render(idle, rows, setup), failures


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # before the event loop runs: unwind through `main`'s finally


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Memory bounds of one tunnelguard process (see bench/README.md)."
    )
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0

    signal.signal(signal.SIGTERM, _on_sigterm)
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tunnelguard-memory-"))
    try:
        table, failures = asyncio.run(asyncio.wait_for(bench(procs, tmp), RUN_TIMEOUT_S))
    except (RuntimeError, TimeoutError) as exc:
        say(f"memory: error: {str(exc) or f'not done within {RUN_TIMEOUT_S:.0f}s'}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("memory: interrupted; stopped every process it started")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # we are stopping anyway: finish that
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    say(table)
    if failures:
        say("\nwrong answers:\n" + "\n".join(f"- {f}" for f in failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
