"""The failure table (SPEC 6.1) and resilience (6.3), row by row, through a real proxy in
front of real misbehaving upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.upstream.failures import FAILURES, OVERLOADED, PROTOCOL_ERROR, REFUSED_BY_BREAKER
from proxy.upstream.guards import REPLAY_LIMIT
from tests.conftest import ProxyFactory, Running, UpstreamFactory, closed_port, config_yaml

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """A TCP server whose bytes we control completely."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> str:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def upstream_yaml(url: str, settings: str = "", route_extra: str = "") -> str:
    """One upstream `u` with extra settings, one catch-all route `r` with the presets."""
    return (
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u:\n    url: {url}\n"
        "    timeouts: {connect: 500ms, response: 1s}\n"
        f"{settings}"
        "routes:\n  - name: r\n    upstream: u\n"
        "    rules: [graphql, jsonrpc, slack, error-envelope]\n"
        f"{route_extra}"
    )


async def _problem(
    client: aiohttp.ClientSession, url: str, method: str = "GET", **kw: object
) -> tuple[int, dict[str, str], dict[str, object]]:
    async with client.request(method, url, **kw) as r:  # type: ignore[arg-type]
        body = await r.read()
        assert r.headers["Content-Type"] == "application/problem+json", body
        doc = orjson.loads(body)
        return r.status, dict(r.headers), doc


def _assert_problem(
    status: int,
    headers: dict[str, str],
    doc: dict[str, object],
    error: str,
    retry_after: str | None,
) -> None:
    assert doc["status"] == status
    assert doc["error"] == error
    assert headers["Proxy-Status"] == f"tunnelguard; error={error}"
    assert headers.get("Retry-After") == retry_after
    assert doc["retryable"] is (retry_after is not None)
    assert isinstance(doc["traceId"], str) and len(doc["traceId"]) == 32
    assert headers["Cache-Control"] == "no-store"


# -- the table, row by row ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "retry_after"),
    [("GET", {}, "5"), ("POST", {}, None), ("POST", {"Idempotency-Key": "k"}, "5")],
)
async def test_connection_refused(
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    method: str,
    headers: dict[str, str],
    retry_after: str | None,
) -> None:
    tg = await start_proxy(upstream_yaml(f"http://127.0.0.1:{closed_port()}"))
    status, h, doc = await _problem(client, tg.url + "/x", method, headers=headers)
    assert status == 502
    _assert_problem(status, h, doc, "connection_refused", retry_after)
    # nothing was sent, so even a POST is retried once (attempts: 2)
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="connect_error") == 1
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="connect_error") == 2


async def test_dns_failure(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    tg = await start_proxy(upstream_yaml("http://no-such-host.invalid:8080"))
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "dns_error", "5")


async def test_tls_failure(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    plain = await start_upstream(web.Application())  # speaks HTTP, not TLS
    tg = await start_proxy(upstream_yaml(plain.url.replace("http://", "https://")))
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "tls_protocol_error", "5")


async def test_connect_timeout(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    """A listener whose accept backlog is full and that never accepts: SYNs go unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the backlog; further connects hang
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        tg = await start_proxy(upstream_yaml(f"http://127.0.0.1:{port}"))
        started = time.monotonic()
        status, h, doc = await _problem(client, tg.url + "/x")
        elapsed = time.monotonic() - started
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert status == 504
    _assert_problem(status, h, doc, "connection_timeout", "5")
    assert 0.9 < elapsed < 5  # two attempts of 500 ms each, plus a short backoff
    assert (
        tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="connect_timeout") == 2
    )


async def test_hang_up_before_the_head(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    seen = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await _read_head(reader)
        seen += 1

    tg = await start_proxy(upstream_yaml(await raw_server(hang_up)))
    status, h, doc = await _problem(client, tg.url + "/x", "POST", data=b"payload")
    assert status == 502
    _assert_problem(status, h, doc, "http_protocol_error", None)
    assert "may have completed" in str(doc["detail"])
    assert seen == 1  # a POST that reached the upstream is never retried
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="reset") == 1


async def test_garbage_response(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HELLO THIS IS NOT HTTP\r\n\r\n")
        await writer.drain()

    tg = await start_proxy(upstream_yaml(await raw_server(garbage)))
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "http_protocol_error", "5")
    assert (
        tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="protocol_error") == 1
    )


async def test_ambiguous_upstream_framing_is_502(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    async def smuggle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
        await writer.drain()

    tg = await start_proxy(upstream_yaml(await raw_server(smuggle)))
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "http_protocol_error", "5")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)),
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n",
    ],
    ids=["head over 64 KiB", "one line over 8190 B"],
)
async def test_an_oversized_upstream_head_is_502(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    head: bytes,
) -> None:
    """Bounded memory per response: a head the proxy will not hold is a malformed response."""

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(head + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    tg = await start_proxy(upstream_yaml(await raw_server(big)))
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "http_protocol_error", "5")


async def test_a_head_that_never_ends_is_502_without_waiting(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    """A header line that keeps coming (no CRLF) is cut off once the head passes 64 KiB,
    not held until the response timeout: memory stays bounded."""

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(200):  # up to 200 x 1 KiB, slowly
            writer.write(b"a" * 1024)
            await writer.drain()
            await asyncio.sleep(0.005)

    tg = await start_proxy(upstream_yaml(await raw_server(endless)))
    started = asyncio.get_running_loop().time()
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 502
    _assert_problem(status, h, doc, "http_protocol_error", "5")
    assert asyncio.get_running_loop().time() - started < 1.5  # not the 2 s response timeout


async def test_a_head_and_a_large_body_in_one_read_are_forwarded(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    """Once a bug: body bytes that arrived in the same read as the head were counted as head
    bytes, so a fast upstream's large response (256 KiB per read) became a 502."""
    body = os.urandom(1 << 20)

    async def fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    tg = await start_proxy(upstream_yaml(await raw_server(fast)))
    for _ in range(3):
        async with client.get(tg.url + "/x") as r:
            assert (r.status, await r.read() == body) == (200, True)


async def test_interim_responses_are_dropped(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    """103 Early Hints (and an unsolicited 100) before the final response: the final one is
    forwarded, and the connection is reused for the next request."""
    heads = connections = 0

    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal heads, connections
        connections += 1
        while True:
            try:
                await _read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            heads += 1
            writer.write(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
            )
            await writer.drain()

    tg = await start_proxy(upstream_yaml(await raw_server(hints)))
    for _ in range(3):
        async with client.get(tg.url + "/x") as r:
            assert (r.status, await r.read()) == (200, b"ok")
            assert "Link" not in r.headers
    assert (heads, connections) == (3, 1)


async def test_max_concurrency_reached(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()
    app = web.Application()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    tg = await start_proxy(upstream_yaml(upstream.url, "    max_concurrency: 2\n"))
    busy = [asyncio.ensure_future(client.get(tg.url + "/slow")) for _ in range(2)]
    for _ in range(200):
        if len(upstream.seen) == 2:
            break
        await asyncio.sleep(0.01)
    status, h, doc = await _problem(client, tg.url + "/slow")
    assert status == 503
    _assert_problem(status, h, doc, "connection_limit_reached", "1")
    assert len(upstream.seen) == 2  # the third never reached the upstream
    release.set()
    for task in busy:
        resp = await task
        assert resp.status == 200
        resp.release()
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="overloaded") == 1
    labels = {"route": "r", "method": "GET", "code": "503", "class": "5xx", "source": "proxy"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1


def test_one_table_holds_every_row() -> None:
    rows = {(f.error, f.status, f.kind) for f in FAILURES.values()}
    rows |= {(f.error, f.status, f.kind) for f in (PROTOCOL_ERROR, OVERLOADED, REFUSED_BY_BREAKER)}
    assert rows == {
        ("connection_refused", 502, "connect_error"),
        ("dns_error", 502, "connect_error"),
        ("tls_protocol_error", 502, "connect_error"),
        ("connection_timeout", 504, "connect_timeout"),
        ("http_response_timeout", 504, "response_timeout"),
        ("http_protocol_error", 502, "reset"),
        ("http_protocol_error", 502, "protocol_error"),
        ("connection_limit_reached", 503, "overloaded"),
        ("destination_unavailable", 503, "circuit_open"),
    }


# -- retries ------------------------------------------------------------------------------------


class Script:
    """An upstream that answers from a script of (status, body, headers), then 200."""

    def __init__(self, *steps: tuple[int, bytes, dict[str, str]]) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[str, bytes]] = []

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            self.calls.append((request.method, await request.read()))
            if self.steps:
                status, body, headers = self.steps.pop(0)
            else:
                status, body, headers = 200, b'{"ok":true}', {}
            if status == 0:  # stall past the response timeout
                await asyncio.sleep(3)
                status = 200
            return web.Response(
                status=status, body=body, headers={"Content-Type": "application/json", **headers}
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        return app


RETRY_ALL = "    retry: {attempts: 3, on: [connect_error, timeout, 429, 502, 503, 504], " \
    "backoff: 10ms, max_backoff: 2s}\n"  # fmt: skip


async def _proxy_for(
    script: Script, start_upstream: UpstreamFactory, start_proxy: ProxyFactory, settings: str
) -> Running:
    upstream = await start_upstream(script.app())
    return await start_proxy(upstream_yaml(upstream.url, settings))


@pytest.mark.parametrize(
    ("method", "headers", "calls"),
    [
        ("GET", {}, 2),
        ("PUT", {}, 2),
        ("DELETE", {}, 2),
        ("POST", {"Idempotency-Key": "abc"}, 2),
        ("POST", {}, 1),  # reached the upstream: never retried without a key
        ("PATCH", {}, 1),
    ],
)
async def test_upstream_503_is_retried_only_when_safe(
    start_upstream: UpstreamFactory,
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    method: str,
    headers: dict[str, str],
    calls: int,
) -> None:
    script = Script((503, b'{"error":"unavailable"}', {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    async with client.request(method, tg.url + "/x", data=b"body", headers=headers) as r:
        await r.read()
        assert r.status == (200 if calls == 2 else 503)
    assert len(script.calls) == calls
    assert all(body == b"body" for _, body in script.calls)  # the body was replayed
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="503") == calls - 1


async def test_timeout_on_post_is_not_retried(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((0, b"", {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    status, h, doc = await _problem(client, tg.url + "/x", "POST", data=b"x")
    assert status == 504
    _assert_problem(status, h, doc, "http_response_timeout", None)
    assert "may have completed" in str(doc["detail"])
    assert len(script.calls) == 1


async def test_timeout_on_get_is_retried(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((0, b"", {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    async with client.get(tg.url + "/x") as r:
        assert r.status == 200
    assert len(script.calls) == 2
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="timeout") == 1


async def test_tunnelled_503_is_retried_like_a_real_one(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((200, b'{"error": "service unavailable"}', {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    async with client.get(tg.url + "/x") as r:
        assert r.status == 200
        assert await r.read() == b'{"ok":true}'
    assert len(script.calls) == 2
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="503") == 1
    # the discarded attempt was still inspected and counted
    assert tg.sample("tunnelguard_inspections_total", route="r", result="matched") == 1


async def test_attempts_bound_and_last_outcome_wins(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script(*[(502, b"{}", {})] * 5)
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    async with client.get(tg.url + "/x") as r:
        assert r.status == 502  # the upstream's own 502, from the last attempt
    assert len(script.calls) == 3


async def test_backoff_honours_retry_after(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((429, b"{}", {"Retry-After": "1"}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    started = time.monotonic()
    async with client.get(tg.url + "/x") as r:
        assert r.status == 200
    assert time.monotonic() - started >= 1.0
    assert len(script.calls) == 2


async def test_retry_after_beyond_max_backoff_is_not_retried(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((503, b"{}", {"Retry-After": "30"}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    async with client.get(tg.url + "/x") as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "30"
    assert len(script.calls) == 1


async def test_large_bodies_are_not_replayed(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((503, b"{}", {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, RETRY_ALL)
    big = b"x" * (200 << 10)
    async with client.put(tg.url + "/x", data=big) as r:
        assert r.status == 503
    assert len(script.calls) == 1
    assert script.calls[0][1] == big  # streamed through intact


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """A request body as framed by its head: chunked, Content-Length, or none."""
    fields = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    )
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailer fields
        return body
    return await reader.readexactly(int(fields.get(b"content-length", b"0")))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize(
    ("size", "replayed"),
    [(REPLAY_LIMIT, True), (REPLAY_LIMIT + 1, False)],
    ids=["64KiB", "64KiB+1"],
)
async def test_bodies_up_to_the_replay_limit_are_replayed(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    size: int,
    replayed: bool,
    framing: str,
) -> None:
    """SPEC 6.3: a body of 64 KiB is buffered and sent again when the first attempt
    fails; one byte more streams through and is not retried.  The upstream reads each
    body whole, then hangs up without a head the first time (502, retried for a PUT);
    with a Content-Length the proxy knows the size at once, chunked it finds out."""
    received: list[bytes] = []

    async def hang_up_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            received.append(await _read_body(reader, head))
            if len(received) == 1:
                return  # closed: no head at all
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    tg = await start_proxy(upstream_yaml(await raw_server(hang_up_once), RETRY_ALL))
    body = os.urandom(size)

    async def pieces() -> AsyncIterator[bytes]:  # no length given: sent chunked
        for start in range(0, size, 10_000):
            yield body[start : start + 10_000]

    data = body if framing == "content-length" else pieces()
    async with client.put(tg.url + "/x", data=data) as r:
        answer = await r.read()
    if replayed:
        assert (r.status, answer) == (200, b"ok")
        assert received == [body, body]  # whole both times
    else:
        assert r.status == 502 and orjson.loads(answer)["error"] == "http_protocol_error"
        assert received == [body]
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="502") == int(replayed)
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="reset") == 1


async def test_budget_stops_retry_storms(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script(*[(503, b"{}", {})] * 10_000)
    settings = "    retry: {attempts: 3, on: [503], backoff: 1ms, max_backoff: 1ms, budget: 0.2}\n"
    tg = await _proxy_for(script, start_upstream, start_proxy, settings)
    requests = 200
    sem = asyncio.Semaphore(20)

    async def one() -> int:
        async with sem, client.get(tg.url + "/x") as r:
            await r.read()
            return r.status

    statuses = await asyncio.gather(*(one() for _ in range(requests)))
    assert set(statuses) == {503}
    # without a budget this would be 600 attempts
    assert len(script.calls) <= requests * 1.2 + 10
    assert len(script.calls) >= requests + 10  # the budget did allow some retries


# -- circuit breaker ----------------------------------------------------------------------------


async def test_circuit_breaker_opens_probes_and_closes(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    # tunnelled errors count as failures too: 200 {"error": "upstream timeout"} is a 504
    script = Script(*[(200, b'{"error": "upstream timeout"}', {})] * 4)
    settings = (
        "    retry: {attempts: 1}\n"
        "    circuit_breaker: {failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s}\n"
    )
    tg = await _proxy_for(script, start_upstream, start_proxy, settings)
    for _ in range(4):
        async with client.get(tg.url + "/x") as r:
            assert r.status == 504
    assert tg.sample("tunnelguard_circuit_state", upstream="u") == 2
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 503
    _assert_problem(status, h, doc, "destination_unavailable", "1")
    assert len(script.calls) == 4  # the open circuit kept the request away
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="circuit_open") == 1
    await asyncio.sleep(1.1)  # open_for elapses: one probe goes through, succeeds
    async with client.get(tg.url + "/x") as r:
        assert r.status == 200
    assert tg.sample("tunnelguard_circuit_state", upstream="u") == 0
    assert len(script.calls) == 5


async def test_connection_failures_open_the_circuit(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    settings = (
        "    retry: {attempts: 1}\n"
        "    circuit_breaker: {failure_ratio: 0.5, min_requests: 3, window: 10s, open_for: 30s}\n"
    )
    tg = await start_proxy(upstream_yaml(f"http://127.0.0.1:{closed_port()}", settings))
    for _ in range(3):
        async with client.get(tg.url + "/x") as r:
            assert r.status == 502
    status, h, doc = await _problem(client, tg.url + "/x")
    assert status == 503
    assert 29 <= int(h["Retry-After"]) <= 30  # seconds until half-open, rounded up
    assert doc["error"] == "destination_unavailable"


async def test_upstream_429_without_retry_after_gets_one(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((429, b"slow down", {}))
    tg = await _proxy_for(script, start_upstream, start_proxy, "    retry_after: 7s\n")
    async with client.get(tg.url + "/x") as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
        assert await r.read() == b"slow down"


async def test_config_yaml_helper_is_valid() -> None:
    # guards the helpers above: a typo there would turn every test into a config error
    from proxy.config.load import parse_text

    parse_text(upstream_yaml("http://127.0.0.1:1", RETRY_ALL), "t.yaml")
    parse_text(config_yaml("http://127.0.0.1:1"), "t.yaml")


async def test_a_retry_refused_by_the_breaker_leaves_the_real_outcome(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    script = Script((502, b'{"upstream": "broken"}', {}))
    settings = (
        "    retry: {attempts: 2, on: [502], backoff: 10ms}\n"
        "    circuit_breaker: {failure_ratio: 0.5, min_requests: 1, window: 10s, open_for: 30s}\n"
    )
    tg = await _proxy_for(script, start_upstream, start_proxy, settings)
    async with client.get(tg.url + "/x") as r:
        assert r.status == 502
        assert await r.read() == b'{"upstream": "broken"}'  # the upstream's, not a 503
    assert len(script.calls) == 1
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="502") == 0
    assert tg.sample("tunnelguard_circuit_state", upstream="u") == 2


async def test_no_circuit_state_series_without_a_breaker(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await _proxy_for(Script(), start_upstream, start_proxy, "")
    async with client.get(tg.url + "/x") as r:
        assert r.status == 200
    assert (
        tg.metrics.registry.get_sample_value("tunnelguard_circuit_state", {"upstream": "u"}) is None
    )


async def test_every_attempt_is_ours(
    raw_server: Callable[[RawHandler], Awaitable[str]],
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    """aiohttp would silently re-send a GET whose connection dropped before the head;
    with retries off, the upstream must see it exactly once."""
    seen = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        await _read_head(reader)
        seen += 1

    tg = await start_proxy(upstream_yaml(await raw_server(hang_up), "    retry: {attempts: 1}\n"))
    async with client.get(tg.url + "/x") as r:
        assert r.status == 502
    assert seen == 1
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="reset") == 1


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json"])
async def test_response_timeout_covers_the_head_only(
    start_upstream: UpstreamFactory,
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    content_type: str,
) -> None:
    """timeouts.response is 1 s; a body that pauses 1.5 s after its head still arrives
    whole (event streams and slow downloads must not be cut)."""
    app = web.Application()

    async def pausing(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        await resp.write(b'{"part": "one", ')
        await asyncio.sleep(1.5)
        await resp.write(b'"then": "two"}')
        await resp.write_eof()
        return resp

    app.router.add_get("/pause", pausing)
    upstream = await start_upstream(app)
    tg = await start_proxy(upstream_yaml(upstream.url))
    async with client.get(tg.url + "/pause") as r:
        assert r.status == 200
        assert await r.read() == b'{"part": "one", "then": "two"}'
