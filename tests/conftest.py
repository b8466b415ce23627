"""Shared fixtures: real upstream servers and real proxies on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from proxy.config.load import parse_text
from proxy.observe.logs import Log
from proxy.observe.metrics import Metrics
from proxy.serve.lifecycle import TunnelGuard
from proxy.upstream.connection import Connection
from proxy.upstream.pool import Pool, endpoint

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RawServer:
    """A raw TCP server on 127.0.0.1 for upstreams that misbehave below HTTP (no parser of
    its own): a subclass's `serve(reader, writer)` handles one connection.  Each
    connection's task is tracked and `open` counts the live ones; a connection ends with
    `writer.close()` (after whatever `serve` did to it), and `stop()` cancels what is left.
    `QUIET` are the ways a connection may end that are no anomaly (the proxy went away)."""

    QUIET: ClassVar[tuple[type[BaseException], ...]] = (
        ConnectionError,
        asyncio.IncompleteReadError,
    )
    open: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open += 1
        try:
            await self.serve(reader, writer)
        except self.QUIET:
            pass
        finally:
            writer.close()
            self.open -= 1
            self._tasks.discard(task)


@dataclass
class Upstream:
    """A running upstream; `seen` records every request it received."""

    url: str
    runner: web.AppRunner
    seen: list[dict[str, object]] = field(default_factory=list)
    peers: set[tuple[str, int]] = field(default_factory=set)


@dataclass
class Running:
    """A running tunnelguard (in this process, on real sockets)."""

    app: TunnelGuard
    url: str
    admin: str
    log: io.StringIO

    def log_text(self) -> str:
        """Everything logged so far (access lines wait up to 100 ms in the log's buffer)."""
        self.app.log.flush()
        return self.log.getvalue()

    def log_records(self, event: str = "request") -> list[dict[str, object]]:
        records = [json.loads(line) for line in self.log_text().splitlines()]
        return [r for r in records if r.get("event") == event]

    @property
    def metrics(self) -> Metrics:
        return self.app.metrics

    def sample(self, name: str, **labels: str) -> float:
        """A metric sample value (0.0 when the series does not exist yet)."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


UpstreamFactory = Callable[[web.Application], Awaitable[Upstream]]
ProxyFactory = Callable[..., Awaitable[Running]]


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[Upstream]:
    """`app` served on 127.0.0.1 (an ephemeral port) while the context lasts, recording
    what it receives; `start_upstream` for a fixture of a wider scope."""
    holder: list[Upstream] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        up = holder[0]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            up.peers.add((peer[0], peer[1]))
        up.seen.append(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": list(request.raw_headers),
            }
        )
        return await handler(request)

    app.middlewares.append(record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        upstream = Upstream(f"http://{host}:{port}", runner)
        holder.append(upstream)
        yield upstream
    finally:
        await runner.cleanup()


@pytest.fixture
async def start_upstream() -> AsyncIterator[UpstreamFactory]:
    async with contextlib.AsyncExitStack() as servers:

        async def start(app: web.Application) -> Upstream:
            return await servers.enter_async_context(serving(app))

        yield start


def config_yaml(upstream_url: str, extra: str = "", route: str = "") -> str:
    """A config with one upstream and one catch-all route `r` (override with `route`)."""
    route = (
        route
        or "  - name: r\n    upstream: u\n    rules: [graphql, jsonrpc, slack, error-envelope]\n"
    )
    return (
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u:\n    url: {upstream_url}\n    timeouts: {{connect: 1s, response: 2s}}\n"
        f"routes:\n{route}{extra}"
    )


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    apps: list[TunnelGuard] = []

    async def start(text: str) -> Running:
        config = parse_text(text, "test.yaml")
        log = io.StringIO()
        app = TunnelGuard(config, Log("json", stream=log))
        await app.start()
        apps.append(app)
        assert app.proxy_address and app.admin_address
        return Running(
            app,
            "http://{}:{}".format(*app.proxy_address),
            "http://{}:{}".format(*app.admin_address),
            log,
        )

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client that changes nothing (no decompression, no cookies)."""
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


def closed_port() -> int:
    """A port that was bound and closed: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def lying_upstream(start_upstream: UpstreamFactory) -> str:
    """An upstream that tunnels a Slack-style auth error in a 200 on every GET path (the
    `slack` preset rewrites it to 401); `?s=SECONDS` delays the answer."""
    return (await lying_server(start_upstream)).url


async def lying_server(start_upstream: UpstreamFactory) -> Upstream:
    """`lying_upstream`, with what it received (`seen`)."""
    app = web.Application()

    async def lie(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.json_response({"ok": False, "error": "invalid_auth"})

    app.router.add_get("/{tail:.*}", lie)
    return await start_upstream(app)


def run_tunnelguard(
    args: Sequence[str], stdout: Path, stderr: Path | None = None
) -> subprocess.Popen[bytes]:
    """`tunnelguard run ARGS` from this checkout as its own process, stdin closed; its
    stdout (JSON lines) goes to the file `stdout`, its stderr to `stderr` or there too."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("wb"))
        err = files.enter_context(stderr.open("wb")) if stderr is not None else subprocess.STDOUT
        return subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """SIGTERM every process still running (a master stops its workers), SIGKILL after
    `timeout` seconds: only processes the test started, by PID."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class LoggedProcess:
    """A `tunnelguard run` process and the file its stdout (JSON lines) goes to."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def records(self, event: str) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a traceback line: the asserts show the log
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out

    async def wait_for(
        self, event: str, count: int = 1, timeout: float = 15
    ) -> list[dict[str, object]]:
        """The first `count` lines of `event`, once they are there (bounded by `timeout`);
        the process exiting first fails the test with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.records(event)
            if len(found) >= count:
                return found
            assert self.proc.poll() is None, (
                f"exited {self.proc.returncode}: {self.log.read_text()}"
            )
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {count} {event!r} in {self.log.read_text()}")


async def connected() -> tuple[Pool, Connection, socket.socket]:
    """A pool and one upstream connection of it over a socket pair: the test writes the
    upstream's bytes with `conn.data_received` (or through the other socket)."""
    pool = Pool()
    ours, theirs = socket.socketpair()
    key = endpoint("http://127.0.0.1:1")
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection(pool, key), sock=ours)
    return pool, conn, theirs


async def status_and_verdict(url: str) -> tuple[int, str | None]:
    """GET `url`: the status and the `Tunnelguard-Status` a flagging rule added, if any."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        await r.read()
        return r.status, r.headers.get("Tunnelguard-Status")


async def reload_counts(admin: str) -> dict[str, float]:
    """`tunnelguard_config_reloads_total` by `result`, read from the admin's /metrics."""
    async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("tunnelguard_config_reloads_total{"):
            result = line.split('result="')[1].split('"')[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out
