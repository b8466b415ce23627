"""The proxy's HTTP/1.1 server (proxy/downstream/http1.py), byte for byte: what a client
sends on one connection and exactly what it gets back, through a real proxy (in this
process) in front of a raw upstream on 127.0.0.1 whose answers are written by hand (no
Date, no Content-Type, chunked or close-delimited), so every header the proxy adds or
leaves out is visible.  The limits (SPEC 4.7) and framing rules (SPEC 7) are
tests/downstream/test_server.py's; malformed requests are tests/system/test_request_fuzz.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from proxy.config.model import ServerLimits
from proxy.downstream.http1 import FEED_SLICE, HEAD_CEILING, PIPELINE_DEPTH, ClientConnection
from proxy.downstream.request import BODY_HIGH_WATER, BODY_LOW_WATER, Body, HeaderView
from tests.conftest import ProxyFactory, RawServer, config_yaml

BOUND = 5.0  # seconds any single read may take

# path -> the upstream's raw answer (after reading the request head and body)
ANSWERS = {
    b"/bare": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"/chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
    b"/dated": (
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\nServer: upstream/1\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ),
    b"/nocontent": b"HTTP/1.1 204 No Content\r\n\r\n",
}


class HandWritten(RawServer):
    """Answers each request with ANSWERS[path] (the request body, if any, read first);
    `/echo` answers the request body back; a HEAD gets the head only."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.split(b"\r\n")
            method, path, _ = line.split(b" ")
            length, chunked = 0, False
            for field in fields:
                name, _, value = field.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                chunked |= name.strip().lower() == b"transfer-encoding"
            body = await reader.readexactly(length) if length else b""
            while chunked:
                size = int((await reader.readline()).strip(), 16)
                body += (await reader.readexactly(size + 2))[:-2]
                chunked = size > 0
            if path == b"/echo":
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            else:
                answer = ANSWERS[path]
            if method == b"HEAD":
                answer = answer.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
            writer.write(answer)
            await writer.drain()


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return values[0] if values else None

    def names(self) -> list[bytes]:
        return [k.lower() for k, _ in self.headers]


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = [(k, v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
    answer = Answer(status_line, headers, b"")
    length = answer.header(b"content-length")
    if head_only or status_line.split(b" ")[1] in (b"204", b"304"):
        return answer
    if length is not None:
        answer.body = await asyncio.wait_for(reader.readexactly(int(length)), BOUND)
    elif answer.header(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await asyncio.wait_for(reader.readline(), BOUND)).strip(), 16)
            data = await asyncio.wait_for(reader.readexactly(size + 2), BOUND)
            if size == 0:
                break
            answer.body += data[:-2]
    else:
        answer.body = await asyncio.wait_for(reader.read(), BOUND)  # until close
    return answer


@pytest.fixture
async def proxy(start_proxy: ProxyFactory) -> AsyncIterator[tuple[str, int]]:
    upstream = HandWritten()
    port = await upstream.start()
    running = await start_proxy(config_yaml(f"http://127.0.0.1:{port}"))
    assert running.app.proxy_address is not None
    yield running.app.proxy_address
    await upstream.stop()


async def talk(
    address: tuple[str, int], data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    return reader, writer


async def test_pipelined_requests_are_answered_in_order(proxy: tuple[str, int]) -> None:
    data = b"".join(
        b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path for path in (b"/bare", b"/chunked", b"/dated")
    )
    reader, writer = await talk(proxy, data)
    bodies = [(await read_answer(reader)).body for _ in range(3)]
    writer.close()
    assert bodies == [b"hello", b"abcde", b"ok"]


async def test_the_status_line_is_http_1_1_and_nothing_is_invented(proxy: tuple[str, int]) -> None:
    """An answer without Content-Type gets none (aiohttp's server added
    `application/octet-stream`); one without Date gets one (RFC 9110 6.6.1); the
    upstream's Date and Server pass unchanged; `Via` says who relayed it."""
    reader, writer = await talk(
        proxy, b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\nGET /dated HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    bare, dated = await read_answer(reader), await read_answer(reader)
    writer.close()
    assert bare.status_line == b"HTTP/1.1 200 OK"
    assert b"content-type" not in bare.names() and b"server" not in bare.names()
    assert bare.header(b"date") is not None and bare.header(b"via") == b"1.1 tunnelguard"
    assert dated.header(b"date") == b"Sun, 06 Dec 2026 10:00:00 GMT"
    assert dated.header(b"server") == b"upstream/1"
    assert dated.names().count(b"date") == 1


async def test_http_1_0_clients_get_no_chunked_coding(proxy: tuple[str, int]) -> None:
    """An HTTP/1.0 client cannot read chunked: a body of unknown length is delimited by
    closing the connection (RFC 9112 6.3); a kept-alive 1.0 client hears `keep-alive`."""
    reader, writer = await talk(proxy, b"GET /chunked HTTP/1.0\r\nHost: t\r\n\r\n")
    answer = await read_answer(reader)
    writer.close()
    assert answer.status_line == b"HTTP/1.1 200 OK"
    assert answer.header(b"transfer-encoding") is None and answer.body == b"abcde"
    assert answer.header(b"connection") == b"close"

    reader, writer = await talk(
        proxy,
        b"GET /bare HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"
        b"GET /bare HTTP/1.0\r\nHost: t\r\n\r\n",
    )
    first = await read_answer(reader)
    second = await read_answer(reader)
    assert first.header(b"connection") == b"keep-alive" and first.body == b"hello"
    assert second.header(b"connection") == b"close"
    assert await asyncio.wait_for(reader.read(), BOUND) == b""  # closed after the second
    writer.close()


async def test_head_and_204_answers_carry_no_body(proxy: tuple[str, int]) -> None:
    reader, writer = await talk(
        proxy,
        b"HEAD /bare HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /nocontent HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    head = await read_answer(reader, head_only=True)
    empty = await read_answer(reader)
    after = await read_answer(reader)
    writer.close()
    assert head.header(b"content-length") == b"5"  # the length a GET would have
    assert empty.status_line.startswith(b"HTTP/1.1 204") and empty.header(b"content-length") is None
    assert after.body == b"hello"  # no stray body bytes in between


async def test_request_bodies_reach_the_upstream_whole(proxy: tuple[str, int]) -> None:
    """Content-Length and chunked request bodies, larger than the body buffer (reading
    from the client pauses and resumes on the way)."""
    body = bytes(range(256)) * (3 * BODY_HIGH_WATER // 256)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:1000], body[1000:]))
    reader, writer = await talk(
        proxy,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        + b"0\r\n\r\n",
    )  # fmt: skip
    first, second = await read_answer(reader), await read_answer(reader)
    writer.close()
    assert first.body == body and second.body == body


async def test_an_unread_small_body_keeps_the_connection(proxy: tuple[str, int]) -> None:
    """A request answered without its body being read (no route: 404 here) has the rest
    read away, and the next request on the connection is served."""
    config_less = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
    reader, writer = await talk(proxy, b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_answer(reader)).body == b"hello"
    writer.write(config_less + b"0123456789" + b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_answer(reader)).status_line.startswith(b"HTTP/1.1 ")
    assert (await read_answer(reader)).body == b"hello"
    writer.close()


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2"])
async def test_other_http_versions_are_refused(proxy: tuple[str, int], version: bytes) -> None:
    reader, writer = await talk(proxy, b"GET /bare " + version + b"\r\nHost: t\r\n\r\n")
    answer = await read_answer(reader)
    writer.close()
    assert answer.status_line.split(b" ")[:2] in ([b"HTTP/1.1", b"505"], [b"HTTP/1.1", b"400"])
    assert answer.header(b"content-type") == b"application/problem+json"
    assert answer.header(b"server") == b"tunnelguard"


# -- the pure parts: header lookups and the body buffer ------------------------------------------


def test_header_view_is_case_insensitive_and_keeps_every_value() -> None:
    view = HeaderView([(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2"), (b"V", b"\xe9")])
    assert view.get("HOST") == "a" and view.get("missing") is None
    assert view.getall("X-a") == ["1", "2"] and view.getall("nope") == ()
    assert "x-A" in view and "y" not in view and view.get("v") == "\xe9"  # latin-1


async def test_body_pauses_above_the_high_water_mark_and_resumes_below_the_low() -> None:
    events: list[str] = []

    class Flow:
        def pause_body(self) -> None:
            events.append("pause")

        def resume_body(self) -> None:
            events.append("resume")

    body = Body(Flow())
    chunk = b"x" * 1024
    for _ in range(BODY_HIGH_WATER // 1024 + 1):
        body.feed(chunk)
    assert events == ["pause"]
    read = 0
    while events == ["pause"]:
        read += len(await body.readany())
    assert events == ["pause", "resume"]
    assert body.total_bytes - read < BODY_LOW_WATER
    body.feed_eof()
    rest = b"".join([c async for c in body.iter_any()])
    assert read + len(rest) == body.total_bytes


async def test_a_failed_body_raises_to_its_reader() -> None:
    body = Body(None)
    body.feed(b"abc")
    body.fail(ConnectionResetError("gone"))
    assert await body.readany() == b"abc"  # what arrived is still read
    with pytest.raises(ConnectionResetError):
        await body.readany()


async def test_a_head_is_bounded_even_without_max_head_bytes(
    start_proxy: ProxyFactory,
) -> None:
    """`max_head_bytes: 0` lifts the operator's limit, not the bound on what the parser
    holds: a head over HEAD_CEILING still gets 431 (a smaller one passes)."""
    upstream = HandWritten()
    port = await upstream.start()
    try:
        running = await start_proxy(
            config_yaml(f"http://127.0.0.1:{port}", extra="server:\n  max_head_bytes: 0\n")
        )
        assert running.app.proxy_address is not None
        big = b"X-Big: " + b"b" * 40_000 + b"\r\n"
        reader, writer = await talk(
            running.app.proxy_address, b"GET /bare HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n"
        )
        assert (await read_answer(reader)).body == b"hello"  # 40 KB: over the default, fine here
        writer.close()
        reader, writer = await talk(running.app.proxy_address, b"GET /bare HTTP/1.1\r\nHost: t\r\n")
        filler = b"X-Many: " + b"m" * 1000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(HEAD_CEILING // len(filler) + 2):
                writer.write(filler)
                await writer.drain()
        answer = await read_answer(reader)
        writer.close()
        assert answer.status_line.startswith(b"HTTP/1.1 431 ")
    finally:
        await upstream.stop()


async def test_thousands_of_pipelined_requests_in_one_write_are_all_answered(
    proxy: tuple[str, int],
) -> None:
    """More requests in one read than the pipeline holds (PIPELINE_DEPTH): the rest of the
    bytes wait unparsed and are parsed as answers go out, in order, none lost."""
    count = 3000
    one = b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\n"
    reader, writer = await talk(proxy, one * count)
    bodies = [(await read_answer(reader)).body for _ in range(count)]
    writer.close()
    assert bodies == [b"hello"] * count


async def test_a_pipeline_burst_holds_a_bounded_number_of_parsed_requests() -> None:
    """What one connection parses ahead is bounded: a megabyte of tiny pipelined requests
    behind one being answered leaves at most PIPELINE_DEPTH (plus one slice's worth)
    parsed, the rest held as bytes, and reading paused."""
    loop = asyncio.get_running_loop()
    never: asyncio.Future[None] = loop.create_future()

    class Transport(asyncio.Transport):
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            self.paused = False

        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("127.0.0.1", 1) if name == "peername" else default

        def write(self, data: bytes | bytearray | memoryview) -> None:
            pass

    class Listener:
        limits = ServerLimits()
        closing = False
        accounting = None

        def __init__(self) -> None:
            self.loop = loop

        async def handle(self, request: object) -> object:
            await never
            return None

        def opened(self, conn: object) -> None:
            pass

        def closed(self, conn: object) -> None:
            pass

        def hand_off(self, *args: object) -> None:
            pass

    conn = ClientConnection(Listener())  # type: ignore[arg-type]
    transport = Transport()
    conn.connection_made(transport)
    one = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    conn.data_received(one * ((1 << 20) // len(one)))
    parsed = len(conn._pending)
    assert 0 < parsed <= PIPELINE_DEPTH + FEED_SLICE // len(one)
    assert transport.paused
    conn.connection_lost(None)
    await asyncio.sleep(0)  # the handler's task sees its cancellation
    never.cancel()


async def test_an_extension_method_is_forwarded_with_its_own_name(
    proxy: tuple[str, int],
) -> None:
    """SPEC 8: a method llhttp has no table entry for (a token) is forwarded as sent when it
    starts a read; a body is framed as any request's.  Pipelined behind another request in
    the same read it is refused (llhttp tells no offset to restart at): the earlier request
    is answered first."""
    reader, writer = await talk(
        proxy, b"PURGEALL /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    )
    answer = await read_answer(reader)
    assert answer.status_line == b"HTTP/1.1 200 OK" and answer.body == b"abc"
    writer.write(b"get /bare HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await read_answer(reader)).body == b"hello"
    writer.close()
    reader, writer = await talk(
        proxy, b"GET /bare HTTP/1.1\r\nHost: t\r\n\r\nFOO /bare HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first, second = await read_answer(reader), await read_answer(reader)
    writer.close()
    assert first.body == b"hello" and second.status_line.startswith(b"HTTP/1.1 400 ")
