"""The proxy's listening sockets, accepted from only while there is room
(`server.max_connections`, SPEC 4.7): further clients wait in the kernel's listen
backlog.  An asyncio server cannot pause accepting, so `Acceptor` accepts itself.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable

from proxy.config.model import Listen

_ACCEPT_RETRY_DELAY = 1.0  # out of file descriptors: try accepting again after this (as asyncio)
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ConnectionGate:
    """Counts open client connections; `wait()` returns when one more may be accepted.
    `max_connections` bounds the file descriptors and per-connection memory."""

    __slots__ = ("_room", "limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._room: asyncio.Event | None = None

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
        if self._room is not None:
            self._room.set()

    async def wait(self) -> None:
        while self.open >= self.limit:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()


class Acceptor(asyncio.AbstractServer):
    """Accepts on `sockets` while the gate has room, one connection at a time; the
    rest wait in the kernel's listen backlog.  Public event-loop calls only
    (`sock_accept`, `connect_accepted_socket`), so it runs on uvloop too."""

    def __init__(
        self,
        sockets: Iterable[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        gate: ConnectionGate,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = tuple(sockets)
        self._factory = factory
        self._gate = gate
        self._closed = False
        self._tasks = [self._loop.create_task(self._accept(s)) for s in self._sockets]

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else self._sockets

    def close(self) -> None:
        """Stop accepting; each socket is closed as its accept loop ends."""
        self._closed = True
        for task in self._tasks:
            task.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed

    async def start_serving(self) -> None:
        return None  # serving from construction

    async def serve_forever(self) -> None:
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        try:
            while True:
                await self._gate.wait()
                try:
                    conn, _ = await loop.sock_accept(sock)
                except ConnectionAbortedError:  # the client gave up in the backlog
                    continue
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                        raise
                    await asyncio.sleep(_ACCEPT_RETRY_DELAY)  # out of descriptors for now
                    continue
                try:
                    await loop.connect_accepted_socket(self._factory, conn)
                except OSError:
                    conn.close()
        finally:
            sock.close()


async def bind(listen: Listen, backlog: int) -> list[socket.socket]:
    """Listening sockets for `listen`, set up as asyncio's `create_server` does
    (SO_REUSEADDR; IPv6 sockets IPv6-only; a host name may give several)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        listen.host or None, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
