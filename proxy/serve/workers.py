"""`tunnelguard run --workers N`: a supervising master and N worker processes.

The master claims the proxy address once and gives every worker a listening socket on
it: on Linux each worker its own (SO_REUSEPORT, so the kernel spreads new connections
evenly among them), elsewhere one socket they all accept on.  It restarts a worker that
dies, answers the admin endpoints (/shapes merges the workers' catalogues: serve.shapes),
and reports all workers' metrics together through
prometheus-client's multiprocess mode: each worker writes its samples to files in a
private directory, and the master sums them at scrape time.  A dead worker's counter
files stay, so counters never go backwards when a worker is replaced (Prometheus'
`rate()` sees no reset).  SIGTERM is passed to every worker, which drains as a single
process would.
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
from dataclasses import dataclass
from typing import Any

from proxy.config.model import Config, Listen
from proxy.observe.logs import Log
from proxy.serve.reload import Loader, carry_over, try_load, watch
from proxy.serve.shapes import MULTIPROC_ENV, merged_shapes

WORKER_FD_FLAG = "--worker-fd"
_RESTART_PAUSE = 1.0  # seconds between restarts of a crashing worker: no fork storm
# Per listening socket, as the single-process listener's: the connections that wait while
# a worker is at `server.max_connections` (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


def prepare_multiprocess_metrics() -> str:
    """Point prometheus-client at a fresh directory; must run before it is imported."""
    if "prometheus_client" in sys.modules and MULTIPROC_ENV not in os.environ:
        raise RuntimeError("prometheus_client was imported before multiprocess setup")
    directory = tempfile.mkdtemp(prefix="tunnelguard-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    return directory


def reuse_port_spreads() -> bool:
    """Whether SO_REUSEPORT spreads connections over the sockets sharing an address.
    Linux hashes each new connection to one of them; the BSDs and macOS accept the
    option but do not balance with it, and some sandboxes refuse it."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            return False
    return True


class ProxyPort:
    """The proxy's address, claimed once by the master.

    With `reuse_port`, `listener()` makes one listening socket per worker and the
    kernel hashes each new connection to one of them, so a burst of connections is
    spread evenly; with a single shared socket, whichever worker is awake first accepts
    most of the burst, and keeps those connections for their keep-alive life.  The
    master's own socket is then bound but never listens: Linux hands connections only
    to listening sockets, so it holds the port (and the one `:0` chose) without taking
    any.  Without `reuse_port` it listens, and is the one socket every worker accepts on.
    """

    __slots__ = ("address", "reserved", "reuse_port")

    def __init__(self, listen: Listen, reuse_port: bool) -> None:
        self.reuse_port = reuse_port
        self.reserved = _claim(listen, reuse_port)
        # (host, port), or for IPv6 (host, port, flowinfo, scope_id)
        self.address: tuple[str, int] | tuple[str, int, int, int] = self.reserved.getsockname()
        if not reuse_port:
            self.reserved.listen(BACKLOG)
            self.reserved.setblocking(False)

    def listener(self) -> socket.socket:
        """A listening socket for a worker: a new one, or the shared one."""
        if not self.reuse_port:
            return self.reserved
        sock = _socket(self.reserved.family, reuse_port=True)
        try:
            sock.bind(self.address)
            sock.listen(BACKLOG)
            sock.setblocking(False)  # a flag of the open file: the worker's copy too
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self, sock: socket.socket) -> None:
        """Close the master's copy of a worker's socket (never the shared one)."""
        if sock is not self.reserved:
            sock.close()

    def close(self) -> None:
        self.reserved.close()


def _claim(listen: Listen, reuse_port: bool) -> socket.socket:
    """The master's socket, bound to `listen` (IPv6 only for an IPv6 host, as the
    single-process listener; a host name binds its first address, as before)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    address: tuple[str, int] = (listen.host, listen.port)
    if reuse_port and listen.port != 0:
        # A socket without SO_REUSEPORT first: the port may be in use, even by another
        # master whose sockets ours would silently share it with; then fail as a single
        # process does.  (`:0` needs no check: Linux never picks a port in use for it.)
        with _socket(family, reuse_port=False) as probe:
            probe.bind(address)
            address = probe.getsockname()
    sock = _socket(family, reuse_port)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _socket(family: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class Slot:
    """One worker and the listening socket the master keeps open for it, so that when
    the worker is killed, the connections waiting in the socket's backlog are accepted
    by its replacement instead of being reset."""

    sock: socket.socket | None
    proc: subprocess.Popen[bytes]
    seen_dead: bool = False


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
        reuse_port: bool | None = None,
    ):
        """Claims the proxy address (OSError when it cannot); `reuse_port` defaults to
        whether the platform balances with it."""
        self.config = config
        self.loader = loader
        self.watch_path = watch_path
        self.log = log
        self.worker_argv = list(worker_argv)
        self.count = count
        if reuse_port is None:
            reuse_port = reuse_port_spreads()
        self.port = ProxyPort(config.listen, reuse_port)
        self.slots: list[Slot] = []
        self.draining = False
        self.restarts = 0
        self._next_restart = 0.0
        self._start_errors: list[str] | None = None  # why the last restart had to wait
        self._mark_dead: Callable[[int], None] = lambda pid: None

    def _spawn(self, sock: socket.socket) -> subprocess.Popen[bytes]:
        fd = sock.fileno()
        argv = [sys.executable, "-m", "proxy", *self.worker_argv, WORKER_FD_FLAG, str(fd)]
        return subprocess.Popen(argv, pass_fds=(fd,), env=os.environ.copy())

    def ready(self) -> bool:
        return not self.draining and all(s.proc.poll() is None for s in self.slots)

    async def run(self) -> int:
        from aiohttp import web
        from prometheus_client import CollectorRegistry
        from prometheus_client import multiprocess as mp

        from proxy.observe.metrics import Metrics
        from proxy.serve.admin import build_admin
        from proxy.serve.lifecycle import url_of

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        self._mark_dead = mp.mark_process_dead
        self._reloads = Metrics().config_reloads  # written to the shared directory
        directory = os.environ[MULTIPROC_ENV]

        def shapes() -> dict[str, Any]:
            return merged_shapes(directory, self.config)

        admin = web.AppRunner(
            build_admin(registry, lambda: self.config, self.ready, shapes), access_log=None
        )
        await admin.setup()
        listen = self.config.admin_listen
        await web.TCPSite(admin, listen.host, listen.port).start()
        for _ in range(self.count):
            sock = self.port.listener()
            self.slots.append(Slot(sock, self._spawn(sock)))
        address = self.port.address
        self.log.event(
            "startup",
            listen=url_of((address[0], address[1])),
            admin=url_of(admin.addresses[-1][:2]),
            workers=[s.proc.pid for s in self.slots],
            sockets="per-worker" if self.port.reuse_port else "shared",
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
        for slot in self.slots:
            if slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGHUP)

    def _replace_dead(self) -> None:
        """Restart dead workers, each on the listening socket it had when one can start
        at once: connections waiting in its backlog are then served by the replacement
        instead of being reset.  A slot that must wait gives up its socket meanwhile, so
        the kernel sends its share of new connections to the other workers."""
        for slot in self.slots:
            code = slot.proc.poll()
            if code is None:
                continue
            if not slot.seen_dead:
                slot.seen_dead = True
                self._mark_dead(slot.proc.pid)  # its live gauges go; its counters stay
                self.log.event("worker_exit", pid=slot.proc.pid, code=code)
                if code > 0:  # it gave up by itself, as its replacement may
                    self._release(slot)
            if time.monotonic() < self._next_restart:
                self._release(slot)
                continue
            self._next_restart = time.monotonic() + _RESTART_PAUSE
            problem = self._start_problem()
            if problem is not None:
                self._release(slot)
                if problem != self._start_errors:  # once, not at every try
                    self._start_errors = problem
                    self.log.event(
                        "error",
                        message="the config file no longer loads: a worker is restarted "
                        "once it does",
                        pid=slot.proc.pid,
                        errors=problem,
                    )
                continue
            old = slot.proc.pid
            try:
                if slot.sock is None:
                    slot.sock = self.port.listener()  # on the port the master holds
                slot.proc = self._spawn(slot.sock)
            except OSError as exc:  # out of descriptors or processes: try again later
                self._release(slot)
                self.log.event("error", message=f"cannot restart a worker: {exc}", pid=old)
                continue
            slot.seen_dead = False
            self._start_errors = None
            self.restarts += 1
            self.log.event("worker_restart", old=old, pid=slot.proc.pid)

    def _start_problem(self) -> list[str] | None:
        """Why a new worker would exit at start-up: it loads the config file as it is
        now, and one that no longer loads (or whose tests fail) would make it a crash
        loop.  Checked here instead, until the file is fixed."""
        if self.loader is None:
            return None
        attempt = try_load(self.loader)
        return None if attempt.config is not None else list(attempt.errors)

    def _release(self, slot: Slot) -> None:
        if slot.sock is not None:
            self.port.release(slot.sock)  # what waits in its backlog is reset
            slot.sock = None

    async def _drain(self) -> None:
        """SIGTERM every worker (each drains itself), then wait within the drain bound.

        The master closes its copies of the listening sockets at once: each one then
        closes when its worker stops accepting (after `drain.delay`), so from then on
        new connections are refused, as by a single process, not queued and reset."""
        self.draining = True
        self.log.event("draining", workers=[s.proc.pid for s in self.slots])
        for slot in self.slots:
            if slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            self._release(slot)
        self.port.close()
        drain = self.config.drain
        deadline = time.monotonic() + drain.delay + drain.timeout + 5
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 - polling children
            s.proc.poll() is None for s in self.slots
        ):
            await asyncio.sleep(0.05)
        for slot in self.slots:
            if slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()


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

        try:
            master = Master(config, log, worker_argv, count, loader, watch_path)
        except OSError as exc:
            log.event("error", message=f"cannot listen on {config.listen}: {exc}")
            return 1
        return uvloop.run(master.run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
