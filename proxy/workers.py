"""`tunnelguard run --workers N`: a supervising master and N worker processes.

The master binds the proxy socket once and hands it to every worker (the kernel
spreads connections among them), restarts a worker that dies, answers the admin
endpoints, and reports all workers' metrics together through prometheus-client's
multiprocess mode: each worker writes its samples to files in a private directory,
and the master sums them at scrape time.  A dead worker's counter files stay, so
counters never go backwards when a worker is replaced (Prometheus' `rate()` sees no
reset).  SIGTERM is passed to every worker, which drains as a single process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from .config import Config
from .logs import Log
from .reload import Loader, carry_over, try_load, watch

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_FD_FLAG = "--worker-fd"
_RESTART_PAUSE = 1.0  # seconds between restarts of a crashing worker: no fork storm


def prepare_multiprocess_metrics() -> str:
    """Point prometheus-client at a fresh directory; must run before it is imported."""
    if "prometheus_client" in sys.modules and MULTIPROC_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before multiprocess setup")
    directory = tempfile.mkdtemp(prefix="tunnelguard-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def bind(config: Config) -> socket.socket:
    """The proxy's listening socket, shared by every worker."""
    host, port = config.listen.host, config.listen.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.set_inheritable(True)
    return sock


class Master:
    """Starts, watches and stops the workers; serves the admin listener."""

    def __init__(
        self,
        config: Config,
        log: Log,
        worker_argv: Sequence[str],
        count: int,
        loader: Loader | None = None,
        watch_path: str | None = None,
    ):
        self.config = config
        self.loader = loader
        self.watch_path = watch_path
        self.log = log
        self.worker_argv = list(worker_argv)
        self.count = count
        self.sock = bind(config)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.draining = False
        self.restarts = 0
        self._next_restart = 0.0
        self._mark_dead: Callable[[int], None] = lambda pid: None

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self.sock.fileno()
        argv = [sys.executable, "-m", "proxy", *self.worker_argv, WORKER_FD_FLAG, str(fd)]
        return subprocess.Popen(argv, pass_fds=(fd,), env=os.environ.copy())

    def ready(self) -> bool:
        return not self.draining and all(w.poll() is None for w in self.workers)

    async def run(self) -> int:
        from aiohttp import web
        from prometheus_client import CollectorRegistry
        from prometheus_client import multiprocess as mp

        from .admin import build_admin
        from .app import url_of
        from .metrics import Metrics

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        self._mark_dead = mp.mark_process_dead
        self._reloads = Metrics().config_reloads  # written to the shared directory
        admin = web.AppRunner(
            build_admin(registry, lambda: self.config, self.ready), access_log=None
        )
        await admin.setup()
        listen = self.config.admin_listen
        await web.TCPSite(admin, listen.host, listen.port).start()
        self.workers = [self._spawn() for _ in range(self.count)]
        address = self.sock.getsockname()
        self.log.event(
            "startup",
            listen=url_of((address[0], address[1])),
            admin=url_of(admin.addresses[-1][:2]),
            workers=[w.pid for w in self.workers],
            config=self.config.source,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pending = asyncio.Event()  # a reload was asked for (SIGHUP or a file change)
        loop.add_signal_handler(signal.SIGHUP, pending.set)
        watcher = None
        if self.watch_path is not None:

            async def changed() -> None:
                pending.set()

            watcher = asyncio.ensure_future(watch(self.watch_path, changed))
        while not stop.is_set():
            if pending.is_set():
                pending.clear()
                self._reload()
            self._replace_dead()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        if watcher is not None:
            watcher.cancel()
        await self._drain()
        await admin.cleanup()
        self.sock.close()
        self.log.event("shutdown", restarts=self.restarts)
        return 0

    def _reload(self) -> None:
        """Check the candidate here, once; only a good one is passed to the workers
        (SIGHUP), so a bad file never reaches them and the count is not multiplied."""
        if self.loader is None:
            return
        attempt = try_load(self.loader)
        if attempt.config is None:
            self._reloads.labels("failure").inc()
            self.log.event("reload", result="failure", errors=list(attempt.errors))
            return
        self.config, notes = carry_over(self.config, attempt.config)
        self._reloads.labels("success").inc()
        self.log.event("reload", result="success", notes=notes)
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGHUP)

    def _replace_dead(self) -> None:
        for i, worker in enumerate(self.workers):
            code = worker.poll()
            if code is None or time.monotonic() < self._next_restart:
                continue
            self._mark_dead(worker.pid)  # its live gauges go; its counters stay
            self.log.event("worker_exit", pid=worker.pid, code=code)
            self.workers[i] = self._spawn()
            self.restarts += 1
            self._next_restart = time.monotonic() + _RESTART_PAUSE
            self.log.event("worker_restart", old=worker.pid, pid=self.workers[i].pid)

    async def _drain(self) -> None:
        """SIGTERM every worker (each drains itself), then wait within the drain bound."""
        self.draining = True
        self.log.event("draining", workers=[w.pid for w in self.workers])
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        drain = self.config.drain
        deadline = time.monotonic() + drain.delay + drain.timeout + 5
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 - polling children
            w.poll() is None for w in self.workers
        ):
            await asyncio.sleep(0.05)
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def run_master(
    config: Config,
    log: Log,
    worker_argv: Sequence[str],
    count: int,
    loader: Loader | None = None,
    watch_path: str | None = None,
) -> int:
    """Run `count` workers (each `tunnelguard <worker_argv>`); return the exit code."""
    directory = prepare_multiprocess_metrics()
    try:
        import uvloop

        master = Master(config, log, worker_argv, count, loader, watch_path)
        return uvloop.run(master.run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
