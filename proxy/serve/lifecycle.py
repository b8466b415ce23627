"""Wiring: the proxy listener, the admin listener, the shared client session."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine

from aiohttp import ClientSession, web

from proxy.config.model import Config
from proxy.downstream.server import Accounting, ProxyServer
from proxy.handler import Proxy
from proxy.observe.logs import Log
from proxy.observe.metrics import Metrics
from proxy.rules.catalogue import ShapeCatalogue
from proxy.rules.snapshot import Runtime, build
from proxy.serve.admin import build_admin
from proxy.serve.reload import Loader, carry_over, try_load, watch
from proxy.serve.shapes import keep_written, shapes_directory
from proxy.upstream.forward import new_session
from proxy.upstream.pool import Pool

_CANCEL_GRACE = 1.0  # seconds a request cancelled at the end of a drain gets to unwind


class TunnelGuard:
    """One serving process: build it from a config, `start()`, then `stop()`."""

    def __init__(
        self,
        config: Config,
        log: Log | None = None,
        metrics: Metrics | None = None,
        *,
        listen_socket: socket.socket | None = None,
        admin: bool = True,
    ):
        """`listen_socket` and `admin=False` make a worker of a `--workers N` master:
        it serves an inherited listening socket and the master answers /metrics."""
        self.runtime: Runtime = build(config)
        self._listen_socket = listen_socket
        self._admin = admin
        self.count_reloads = admin  # a master counts reloads for its workers
        self._reload_event = "reload" if admin else "worker_reload"
        self._reload_lock = asyncio.Lock()
        self.log = log or Log()
        # a worker's samples go to files the master reads: written as each request is
        # counted, before its response is complete
        self.metrics = metrics or Metrics(shared=not admin)
        # suspect shapes (SPEC 10): one catalogue for the process's life, kept by reloads
        self.catalogue = ShapeCatalogue()
        self._shapes_writer: asyncio.Task[None] | None = None  # a worker's, see serve.shapes
        self.draining = False
        self._session: ClientSession | None = None
        self._pool: Pool | None = None
        self._proxy: Proxy | None = None
        self._server: ProxyServer | None = None
        self._runners: list[web.BaseRunner] = []
        self.proxy_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None

    @property
    def config(self) -> Config:
        return self.runtime.config

    def ready(self) -> bool:
        return not self.draining and self._session is not None

    async def start(self) -> None:
        config = self.config
        self._session = new_session()
        self._pool = Pool()
        proxy = self._proxy = Proxy(
            lambda: self.runtime, self._session, self.metrics, self.log, self._pool,
            self.catalogue,
        )  # fmt: skip
        proxy.prepare(self.runtime)
        server = self._server = ProxyServer(  # client-side limits, framing (SPEC 4.7, 7)
            proxy.handle, limits=config.server, accounting=Accounting(self.metrics, self.log)
        )
        # at max_connections it stops accepting: the rest wait in the listen backlog
        self.proxy_address = await server.start(config.listen, self._listen_socket)
        if not self._admin:
            directory = shapes_directory()  # the master merges the workers' shapes
            if directory is not None:
                writer = keep_written(self.catalogue, directory, os.getpid())
                self._shapes_writer = asyncio.ensure_future(writer)
            self.log.event("worker_startup", pid=os.getpid(), listen=url_of(self.proxy_address))
            return
        admin = build_admin(
            self.metrics.registry, lambda: self.config, self.ready, self.catalogue.snapshot
        )
        listen = config.admin_listen
        self.admin_address = await self._listen(
            web.AppRunner(admin, access_log=None),
            lambda r: web.TCPSite(r, listen.host, listen.port, backlog=1024),
        )
        self.log.event(
            "startup",
            listen=url_of(self.proxy_address),
            admin=url_of(self.admin_address),
            routes=[r.name for r in self.runtime.routes],
            upstreams=[u.name for u in config.upstreams],
            config=config.source,
        )

    async def _listen(
        self, runner: web.BaseRunner, site: Callable[[web.BaseRunner], web.BaseSite]
    ) -> tuple[str, int]:
        await runner.setup()
        self._runners.append(runner)
        await site(runner).start()
        address = runner.addresses[-1]
        return str(address[0]), int(address[1])

    async def reload(self, loader: Loader, trigger: str) -> bool:
        """Swap in a new config if it parses and its tests pass (SPEC 4.6).  Requests in
        flight finish on the config they started with."""
        async with self._reload_lock:
            attempt = try_load(loader)
            if attempt.config is None:
                if self.count_reloads:
                    self.metrics.config_reloads.labels("failure").inc()
                self.log.event(
                    self._reload_event, result="failure", trigger=trigger,
                    errors=list(attempt.errors),
                )  # fmt: skip
                return False
            config, notes = carry_over(self.config, attempt.config)
            self.runtime = build(config)
            if self._proxy is not None:
                self._proxy.prepare(self.runtime)
            if self.count_reloads:
                self.metrics.config_reloads.labels("success").inc()
            self.log.event(
                self._reload_event,
                result="success",
                trigger=trigger,
                routes=[r.name for r in self.runtime.routes],
                notes=notes,
            )
            return True

    async def drain(self) -> None:
        """Graceful shutdown (SPEC 6.3): /readyz turns 503 at once; requests are still
        served normally for `drain.delay` (so load balancers can stop sending); then
        the listener closes and in-flight requests finish, answered with
        `Connection: close`, for up to `drain.timeout`.  An accepted request is never
        refused with a 503."""
        drain = self.config.drain
        self.draining = True
        self.log.event("draining", delay=drain.delay, timeout=drain.timeout)
        if drain.delay > 0:
            await asyncio.sleep(drain.delay)
        server, proxy = self._server, self._proxy
        if proxy is not None:
            proxy.closing = True
        if server is not None and proxy is not None:
            server.closing = True  # each connection closes after its current answer
            server.stop_accepting()  # new connections are refused from here on
            deadline = time.monotonic() + drain.timeout
            while proxy.active and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await self.stop()

    async def stop(self) -> None:
        self.draining = True
        if self._server is not None:  # closes idle connections, cancels what is left
            server, self._server = self._server, None
            await server.shutdown(_CANCEL_GRACE)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self.metrics.flush()  # a worker's last samples reach the shared files
        if self._shapes_writer is not None:  # ... and its last shapes (written as it ends)
            writer, self._shapes_writer = self._shapes_writer, None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self.log.event("shutdown")


def settle_heap() -> None:
    """Once started, before any request: collect start-up garbage, then move every
    object left (modules, config, app) out of the garbage collector's sight.  They live
    as long as the process, and a full collection no longer walks them on every pass:
    a few percent of CPU under load and shorter pauses (`bench/results.md`).  Only at
    start-up: freezing later would also freeze requests in flight."""
    gc.collect()
    gc.freeze()


def url_of(address: tuple[str, int] | None) -> str:
    if address is None:
        return ""
    host, port = address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    config: Config,
    log: Log,
    listen_socket: socket.socket | None = None,
    loader: Loader | None = None,
    watch_path: str | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM, then drain; return the process exit code.

    SIGHUP (or a change to `watch_path`) reloads through `loader`.  With
    `listen_socket` this process is a worker of a `--workers N` master."""
    app = TunnelGuard(config, log, listen_socket=listen_socket, admin=listen_socket is None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    background: set[asyncio.Task[object]] = set()

    def start(coro: Coroutine[object, object, object]) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)  # a strong reference until it is done
        task.add_done_callback(background.discard)

    if loader is not None:
        reload_with = loader
        loop.add_signal_handler(signal.SIGHUP, lambda: start(app.reload(reload_with, "SIGHUP")))
        if watch_path is not None:

            async def changed() -> None:
                await app.reload(reload_with, "watch")

            start(watch(watch_path, changed))
    try:
        await app.start()
    except OSError as exc:
        log.event("error", message=f"cannot listen: {exc}")
        await app.stop()
        return 1
    settle_heap()
    await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)  # a second signal stops at once
    for task in list(background):
        task.cancel()
    await app.drain()
    return 0
