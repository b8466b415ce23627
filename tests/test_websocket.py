"""WebSocket tunnels (SPEC 7) through a real proxy to a real aiohttp WebSocket upstream."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from proxy.websocket import MAX_MESSAGE_BYTES
from tests.conftest import (
    LoggedProcess,
    ProxyFactory,
    Running,
    Upstream,
    UpstreamFactory,
    closed_port,
    config_yaml,
    run_tunnelguard,
)

MiB = 1 << 20
Events = list[aiohttp.WSMessage]
Proxied = tuple[Upstream, Running, Events]


def ws_app(events: Events) -> web.Application:
    """An echo WebSocket at /ws that records every message it receives, plus refusals
    and a plain HTTP echo."""
    app = web.Application()

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2",), autoping=False, max_msg_size=8 * MiB)
        ws.headers["Set-Cookie"] = "sticky=abc"
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            events.append(msg)
            if msg.type is WSMsgType.TEXT:
                if msg.data == "close-me":
                    await ws.close(code=4001, message=b"upstream says bye")
                    break
                if msg.data == "ping-me":
                    await ws.ping(b"from-upstream")
                elif msg.data == "drop-me":
                    assert request.transport is not None
                    request.transport.abort()
                    break
                else:
                    await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is not WSMsgType.PONG:
                break  # CLOSE (answered by autoclose), CLOSED, ERROR
        return ws

    async def refuse(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.Response(status=status, text="no socket here", headers={"X-Why": "nope"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})

    app.router.add_get("/ws", socket)
    app.router.add_get("/refuse/{status}", refuse)
    app.router.add_route("*", "/echo", echo)
    return app


@pytest.fixture
async def proxied(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> Proxied:
    events: Events = []
    upstream = await start_upstream(ws_app(events))
    running = await start_proxy(config_yaml(upstream.url))
    return upstream, running, events


def ws_url(tg: Running, path: str = "/ws") -> str:
    return tg.url.replace("http://", "ws://") + path


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def tunnels(tg: Running) -> float:
    labels = {"route": "r", "method": "GET", "code": "101", "class": "1xx", "source": "upstream"}
    return tg.sample("tunnelguard_requests_total", **labels)


def upstream_closes(events: Events) -> list[tuple[int, str | None]]:
    return [(m.data, m.extra) for m in events if m.type is WSMsgType.CLOSE]


# -- messages ------------------------------------------------------------------------------


async def test_text_and_binary_echo(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg, _ = proxied
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str("héllo")
        assert await sock.receive_str() == "héllo"
        await sock.send_bytes(b"\x00\xff\x01")
        assert await sock.receive_bytes() == b"\x00\xff\x01"
        await sock.send_str("")
        assert await sock.receive_str() == ""


async def test_one_mib_messages_round_trip_byte_exact(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    text = "".join(chr(0x20 + i % 0x5F) for i in range(MiB - 3)) + "€"  # 1 MiB of UTF-8
    blob = os.urandom(MiB)
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str(text)
        await sock.send_bytes(blob)
        assert await sock.receive_str() == text
        assert await sock.receive_bytes() == blob
    assert [m.data for m in events[:2]] == [text, blob]


async def test_message_over_the_limit_closes_both_sides(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    async with client.ws_connect(ws_url(tg)) as sock:
        # the proxy sends 1009 (message too big) and drops the connection while the
        # rest of the message is still coming, so the sender may see a reset instead
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await sock.send_bytes(bytes(MAX_MESSAGE_BYTES + 1))
            msg = await sock.receive(timeout=3)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
            assert msg.type is not WSMsgType.CLOSE or msg.data == 1009
    await eventually(lambda: bool(upstream_closes(events)))
    assert upstream_closes(events) == [(1001, "client went away")]
    assert not any(m.type is WSMsgType.BINARY for m in events)


async def test_fragmented_message_and_interleaved_ping(proxied: Proxied) -> None:
    _, tg, events = proxied
    reader, writer, _ = await raw_handshake(tg)
    try:
        writer.write(frame(0x1, b"frag", fin=False))
        writer.write(frame(0x9, b"mid"))  # control frames may come between fragments
        writer.write(frame(0x0, "ménted".encode(), fin=True))
        assert await read_frame(reader) == (0xA, b"mid")
        assert await read_frame(reader) == (0x1, "fragménted".encode())
    finally:
        writer.close()
    assert [m.data for m in events[:2]] == [b"mid", "fragménted"]


# -- pings ---------------------------------------------------------------------------------


async def test_client_ping_crosses_to_the_upstream_and_its_pong_comes_back(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    async with client.ws_connect(ws_url(tg), autoping=False) as sock:
        await sock.ping(b"are you there")
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
    assert (events[0].type, events[0].data) == (WSMsgType.PING, b"are you there")


async def test_upstream_ping_reaches_the_client_and_its_pong_the_upstream(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    async with client.ws_connect(ws_url(tg), autoping=False) as sock:
        await sock.send_str("ping-me")
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data) == (WSMsgType.PING, b"from-upstream")
        await sock.pong(msg.data)
        await eventually(lambda: any(m.type is WSMsgType.PONG for m in events))
    pong = next(m for m in events if m.type is WSMsgType.PONG)
    assert pong.data == b"from-upstream"


# -- closing -------------------------------------------------------------------------------


async def test_client_close_code_reaches_the_upstream(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    sock = await client.ws_connect(ws_url(tg))
    await sock.send_str("hi")
    assert await sock.receive_str() == "hi"
    await sock.close(code=4000, message=b"client done")
    assert sock.close_code == 4000  # the echo of its own close
    await eventually(lambda: bool(upstream_closes(events)))
    assert upstream_closes(events) == [(4000, "client done")]


async def test_upstream_close_code_and_reason_reach_the_client(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, _ = proxied
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str("close-me")
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4001, "upstream says bye")


async def test_upstream_lost_closes_the_client_with_1014(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, _ = proxied
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str("drop-me")
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data, msg.extra) == (
            WSMsgType.CLOSE,
            1014,
            "upstream connection lost",
        )


async def test_client_hang_up_closes_the_upstream_with_1001(proxied: Proxied) -> None:
    _, tg, events = proxied
    reader, writer, _ = await raw_handshake(tg)
    writer.write(frame(0x1, b"hi"))
    assert await read_frame(reader) == (0x1, b"hi")
    writer.transport.abort()  # no close frame
    await eventually(lambda: bool(upstream_closes(events)))
    assert upstream_closes(events) == [(1001, "client went away")]
    await eventually(lambda: tunnels(tg) == 1)
    assert tg.sample("tunnelguard_in_flight_requests", route="r") == 0


# -- handshake -----------------------------------------------------------------------------


async def test_subprotocol_is_the_one_the_upstream_chose(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, _ = proxied
    async with client.ws_connect(ws_url(tg), protocols=("chat.v1", "chat.v2")) as sock:
        assert sock.protocol == "chat.v2"
    async with client.ws_connect(ws_url(tg)) as sock:
        assert sock.protocol is None


async def test_handshake_headers_both_ways(proxied: Proxied) -> None:
    upstream, tg, _ = proxied
    _, writer, head = await raw_handshake(
        tg, extra="Origin: https://app.example\r\nCookie: s=1\r\nX-Custom: yes\r\n"
    )
    writer.close()
    # the client's 101 carries the upstream's other headers, and ours
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert "Set-Cookie: sticky=abc" in lines
    assert "Via: 1.1 tunnelguard" in lines
    raw = upstream.seen[0]["headers"]
    assert isinstance(raw, list)
    sent = {k.decode().lower(): v.decode() for k, v in raw}
    assert sent["origin"] == "https://app.example"
    assert sent["cookie"] == "s=1"
    assert sent["x-custom"] == "yes"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["via"] == "1.1 tunnelguard"
    assert sent["upgrade"] == "websocket"
    assert sent["sec-websocket-key"] != CLIENT_KEY  # each handshake has its own key
    # the raw client sent no User-Agent or Accept: the proxy adds none of its own
    assert not {"user-agent", "accept", "accept-encoding"} & set(sent)


@pytest.mark.parametrize("status", [404, 503])
async def test_upstream_refusing_the_upgrade(
    proxied: Proxied, client: aiohttp.ClientSession, status: int
) -> None:
    _, tg, _ = proxied
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(ws_url(tg, f"/refuse/{status}"))
    assert info.value.status == status
    headers = info.value.headers
    assert headers is not None
    assert headers["X-Why"] == "nope"
    assert headers["Content-Length"] == "0"
    assert "Content-Type" not in headers  # it described the body, which is not passed on
    assert headers.get("Retry-After") == ("5" if status == 503 else None)
    labels = {"route": "r", "method": "GET", "code": str(status), "source": "upstream"}
    await eventually(
        lambda: (
            tg.sample("tunnelguard_requests_total", **labels, **{"class": f"{status // 100}xx"})
            == 1
        )
    )


async def test_upstream_down_is_a_502(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await start_proxy(config_yaml(f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(ws_url(tg))
    assert info.value.status == 502
    headers = info.value.headers
    assert headers is not None
    assert headers["Proxy-Status"] == "tunnelguard; error=connection_refused"
    assert headers["Retry-After"] == "5"
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="connect_error") == 1


async def test_upstream_silent_is_a_504(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app.router.add_get("/ws", hang)
    upstream = await start_upstream(app)
    text = config_yaml(upstream.url).replace("response: 2s", "response: 300ms")
    tg = await start_proxy(text)
    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(ws_url(tg))
    assert info.value.status == 504
    assert time.monotonic() - started < 2.5  # connect (1 s) + response (0.3 s) at most
    headers = info.value.headers
    assert headers is not None
    assert headers["Proxy-Status"] == "tunnelguard; error=http_response_timeout"


async def test_malformed_handshake_is_a_400(proxied: Proxied) -> None:
    upstream, tg, _ = proxied
    host, port = tg.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"  # no Sec-WebSocket-Key
    )
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"application/problem+json" in head
    assert upstream.seen == []


# -- not a WebSocket upgrade ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", {"Connection": "Upgrade", "Upgrade": "h2c"}),
        ("GET", {"Connection": "upgrade"}),
        ("GET", {"Upgrade": "websocket"}),  # without the Connection option
        ("POST", {"Connection": "Upgrade", "Upgrade": "websocket"}),  # RFC 6455: GET only
    ],
)
async def test_other_upgrades_are_plain_http(
    proxied: Proxied, client: aiohttp.ClientSession, method: str, headers: dict[str, str]
) -> None:
    _, tg, _ = proxied
    for _ in range(2):  # the connection stays usable for a second request
        async with client.request(method, tg.url + "/echo", headers=headers) as r:
            assert r.status == 200
            sent = {k.lower() for k, _ in (await r.json())["headers"]}
        assert "upgrade" not in sent
        assert "connection" not in sent


# -- metrics and drain ---------------------------------------------------------------------


async def test_counted_as_101_when_it_ends_and_in_flight_while_open(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, _ = proxied
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str("hi")
        assert await sock.receive_str() == "hi"
        assert tg.sample("tunnelguard_in_flight_requests", route="r") == 1
        assert tunnels(tg) == 0
    await eventually(lambda: tunnels(tg) == 1)
    assert tg.sample("tunnelguard_in_flight_requests", route="r") == 0
    assert tg.sample("tunnelguard_request_duration_seconds_count", route="r", **{"class": "1xx"})
    assert tg.sample("tunnelguard_upstream_duration_seconds_count", route="r", upstream="u") == 1
    assert tg.sample("tunnelguard_inspections_total", route="r", result="clean") == 0
    [record] = tg.log_records()
    assert (record["code"], record["source"], record["path"]) == (101, "upstream", "/ws")


async def test_start_closing_closes_open_tunnels_with_1001(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg, events = proxied
    proxy = tg.app._proxy
    assert proxy is not None
    async with client.ws_connect(ws_url(tg)) as sock:
        await sock.send_str("hi")
        assert await sock.receive_str() == "hi"
        started = time.monotonic()
        proxy.start_closing()
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data, msg.extra) == (
            WSMsgType.CLOSE,
            1001,
            "tunnelguard is shutting down",
        )
        assert time.monotonic() - started < 1.0
    await eventually(lambda: proxy.active == 0)
    await eventually(lambda: bool(upstream_closes(events)))
    assert upstream_closes(events) == [(1001, "tunnelguard is shutting down")]
    assert tunnels(tg) == 1


async def test_drain_waits_only_for_tunnels_to_close(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    events: Events = []
    upstream = await start_upstream(ws_app(events))
    tg = await start_proxy(config_yaml(upstream.url, "drain: {delay: 0s, timeout: 20s}\n"))
    async with client.ws_connect(ws_url(tg)) as sock:
        started = time.monotonic()
        drain = asyncio.create_task(tg.app.drain())
        msg = await sock.receive(timeout=3)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        await asyncio.wait_for(drain, 5)
        assert time.monotonic() - started < 3.0  # far below drain.timeout
    assert tunnels(tg) == 1


async def test_sigterm_closes_tunnels_politely(
    start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    events: Events = []
    upstream = await start_upstream(ws_app(events))
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml(upstream.url, "drain: {delay: 0s, timeout: 20s}\n"))
    log = tmp_path / "out.log"
    proc = run_tunnelguard(["--config", str(config)], log)
    try:
        listen = await _listen_url(log, proc)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(listen.replace("http://", "ws://") + "/ws") as sock,
        ):
            await sock.send_str("hi")
            assert await sock.receive_str() == "hi"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            msg = await sock.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
        assert proc.returncode == 0
        assert time.monotonic() - started < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert upstream_closes(events) == [(1001, "tunnelguard is shutting down")]


async def _listen_url(log: Path, proc: subprocess.Popen[bytes]) -> str:
    (startup,) = await LoggedProcess(proc, log).wait_for("startup")
    return str(startup["listen"])


# -- a raw WebSocket client, for what aiohttp's client cannot send -------------------------

CLIENT_KEY = base64.b64encode(b"0123456789abcdef").decode()


async def raw_handshake(
    tg: Running, extra: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    host, port = tg.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Key: {CLIENT_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer, head


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2), payload below 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 3)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)
