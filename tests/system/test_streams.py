"""Event streams through a real `tunnelguard run` process (SPEC 5.1, issue 19): upstreams on
127.0.0.1 that stream with pauses between events (an aiohttp app, the aiohttp-sse library,
and raw sockets for byte-level timing), and what the client gets, /metrics counts and the
access log says.

Every delivered body is compared with what the upstream sends to a client directly, so
"the stream continues byte for byte" is checked, never assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp_sse import sse_response
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    LoggedProcess,
    RawServer,
    UpstreamFactory,
    run_tunnelguard,
    stop_processes,
)

GAP = 0.02  # seconds between two events of a scripted upstream
PRESETS = "[graphql, jsonrpc, slack, error-envelope]"

# Published error events.  Anthropic Messages API, "Errors" (streaming: "errors can occur
# after returning a 200 response"), docs.anthropic.com/en/api/errors; OpenAI API, "Error
# codes", platform.openai.com/docs/guides/error-codes (the error object its endpoints send).
ANTHROPIC_ERROR = (
    '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
)
OPENAI_ERROR = (
    '{"error": {"message": "Rate limit reached for gpt-4 in organization org-x on requests '
    'per min (RPM): Limit 3, Used 3, Requested 1.", "type": "rate_limit_error", '
    '"param": null, "code": "rate_limit_exceeded"}}'
)
START = '{"type": "message_start", "message": {"id": "msg_1", "role": "assistant"}}'
DELTA = '{"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hello"}}'
SSE = "text/event-stream"

# (media type, the pieces written with GAP between them)
SCRIPTS: dict[str, tuple[str, list[bytes]]] = {
    "ndjson-first-error": (
        "application/x-ndjson",
        [OPENAI_ERROR.encode() + b"\n", b'{"done": true}\n'],
    ),
    "jsonl-later-error": (
        "application/jsonl",
        [b'{"n": 1}\n', b'{"n": 2}\n', b'{"error": "deadline exceeded"}\n', b'{"n": 3}\n'],
    ),
    "suspect-first": (  # WeChat's envelope, no preset knows it: a suspect shape (SPEC 10)
        SSE,
        [
            b'data: {"errcode": 45009, "errmsg": "reach max api daily quota limit"}\n\n',
            b"data: [DONE]\n\n",
        ],
    ),
    "over-the-bound": (
        SSE,
        [
            b'data: {"error": "quota", "pad": "' + b"x" * 6000 + b'"}\n\n',  # > 4 KiB
            b'data: {"delta": "ok"}\n\n',
            b"event: error\ndata: service unavailable\n\n",
        ],
    ),
}


def _event(name: str | None, data: str) -> tuple[str | None, str]:
    return name, data


# aiohttp-sse scripts: (event name or None, data), sent with GAP between them
LIBRARY: dict[str, list[tuple[str | None, str]]] = {
    "openai-first-error": [_event(None, OPENAI_ERROR), _event(None, "[DONE]")],
    "anthropic-first-error": [_event("error", ANTHROPIC_ERROR)],
    "anthropic-later-errors": [
        _event("message_start", START),
        _event("content_block_delta", DELTA),
        _event("error", ANTHROPIC_ERROR),
        _event("content_block_delta", DELTA),
        _event(None, OPENAI_ERROR),
    ],
}


def upstream_app(gate: asyncio.Event) -> web.Application:
    async def scripted(request: web.Request) -> web.StreamResponse:
        ctype, pieces = SCRIPTS[request.match_info["name"]]
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(GAP)
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def library(request: web.Request) -> web.StreamResponse:
        async with sse_response(request) as sse:
            for i, (name, data) in enumerate(LIBRARY[request.match_info["name"]]):
                if i:
                    await asyncio.sleep(GAP)
                await sse.send(data, event=name)
        return sse

    async def gated(request: web.Request) -> web.StreamResponse:
        """Two clean events, then nothing until the test opens `gate`, then an error."""
        resp = web.StreamResponse(headers={"Content-Type": SSE})
        await resp.prepare(request)
        await resp.write(f"data: {START}\n\n".encode())
        await resp.write(f"data: {DELTA}\n\n".encode())
        await gate.wait()
        await resp.write(f"event: error\ndata: {ANTHROPIC_ERROR}\n\n".encode())
        await resp.write_eof()
        return resp

    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(f"event: error\ndata: {ANTHROPIC_ERROR}\n\n".encode(), mtime=0)
        return web.Response(body=body, headers={"Content-Type": SSE, "Content-Encoding": "gzip"})

    async def many(request: web.Request) -> web.StreamResponse:
        """`n` events of `size` bytes of data each, as fast as the reader takes them, then
        an error event."""
        n, size = int(request.query["n"]), int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": SSE})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(b'data: {"i": %d, "pad": "%s"}\n\n' % (i, b"x" * size))
        await resp.write(b"event: error\ndata: overloaded\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/script/{name}", scripted)
    app.router.add_get("/plain/script/{name}", scripted)
    app.router.add_get("/lib/{name}", library)
    app.router.add_get("/gated", gated)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/many", many)
    return app


@dataclass
class Proxy:
    url: str
    admin: str
    process: LoggedProcess

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.admin + "/metrics") as r:
            return await r.text()

    async def sample(self, name: str, **labels: str) -> float:
        """The value of the series `name` whose labels include `labels` (summed), 0 if none."""
        total = 0.0
        for family in text_string_to_metric_families(await self.metrics()):
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    total += s.value
        return total


@contextlib.asynccontextmanager
async def proxy_process(
    tmp_path: Path,
    upstream: str,
    inspect: str = "first_event_bytes: 4KiB, first_event_timeout: 300ms",
) -> AsyncIterator[Proxy]:
    """A `tunnelguard run --config` process: route `plain` (/plain, no rules) and route
    `llm` (everything else, the default presets)."""
    config = tmp_path / "streams.yaml"
    config.write_text(
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u: {{url: '{upstream}', timeouts: {{connect: 1s, response: 5s}}}}\n"
        "routes:\n"
        "  - {name: plain, upstream: u, match: {path_prefix: /plain}}\n"
        f"  - {{name: llm, upstream: u, rules: {PRESETS}}}\n"
        f"inspect: {{{inspect}}}\n"
    )
    log = tmp_path / "proxy.log"
    proc = run_tunnelguard(["--config", str(config)], log)
    try:
        process = LoggedProcess(proc, log)
        (startup,) = await process.wait_for("startup")
        yield Proxy(str(startup["listen"]), str(startup["admin"]), process)
    finally:
        stop_processes([proc])


@pytest.fixture
async def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def proxied(
    start_upstream: UpstreamFactory, tmp_path: Path, gate: asyncio.Event
) -> AsyncIterator[tuple[str, Proxy]]:
    upstream = await start_upstream(upstream_app(gate))
    async with proxy_process(tmp_path, upstream.url) as proxy:
        yield upstream.url, proxy


async def _get(url: str) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(url) as r,
    ):
        return r.status, r.headers, await r.read()


# -- the first event -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "ctype"),
    [
        ("/lib/openai-first-error", 429, SSE),
        ("/lib/anthropic-first-error", 503, SSE),
        ("/script/ndjson-first-error", 429, "application/x-ndjson"),
    ],
)
async def test_a_first_event_error_is_answered_honestly_and_the_stream_follows(
    proxied: tuple[str, Proxy], path: str, status: int, ctype: str
) -> None:
    upstream, proxy = proxied
    direct_status, _, direct = await _get(upstream + path)
    got, headers, body = await _get(proxy.url + path)
    assert direct_status == 200
    assert got == status
    assert body == direct  # every byte, in order, after the rewritten head
    assert headers["Content-Type"] == ctype
    assert headers["Retry-After"] == "5"  # a 429/503 always says when (the upstream's default)
    assert headers["Cache-Control"] == "no-store"
    assert headers["Tunnelguard-Rule"] == "error-envelope"
    assert headers["Proxy-Status"] == (
        'tunnelguard; received-status=200; details="rule error-envelope"'
    )
    assert await proxy.sample("tunnelguard_inspections_total", result="matched") == 1
    assert (
        await proxy.sample(
            "tunnelguard_tunnelled_errors_total", rule="error-envelope", status=str(status)
        )
        == 1
    )
    cls = f"{status // 100}xx"
    assert (
        await proxy.sample(
            "tunnelguard_requests_total", code=str(status), source="rewritten", **{"class": cls}
        )
        == 1
    )
    assert await proxy.sample("tunnelguard_stream_errors_total") == 0  # judged before the head


async def test_a_clean_first_event_then_later_errors_are_counted_not_delivered(
    proxied: tuple[str, Proxy],
) -> None:
    upstream, proxy = proxied
    path = "/lib/anthropic-later-errors"
    _, _, direct = await _get(upstream + path)
    status, headers, body = await _get(proxy.url + path)
    assert (status, body) == (200, direct)  # nothing sent changes
    assert "Tunnelguard-Rule" not in headers and headers["Cache-Control"] == "no-cache"
    # each error event counts; the first (Anthropic's overloaded_error) is the true status
    assert await proxy.sample("tunnelguard_stream_errors_total", route="llm") == 2
    assert await proxy.sample("tunnelguard_stream_errors_total", rule="error-envelope") == 2
    assert await proxy.sample("tunnelguard_inspections_total", result="clean") == 1
    labels = {"code": "200", "class": "5xx", "source": "upstream"}
    assert await proxy.sample("tunnelguard_requests_total", **labels) == 1
    assert await proxy.sample("tunnelguard_request_duration_seconds_count", **{"class": "5xx"})
    (line,) = await proxy.process.wait_for("request")
    assert (line["code"], line["true_code"], line["rule"], line["action"]) == (
        200, 503, "error-envelope", None,
    )  # fmt: skip


async def test_ndjson_later_error_line_is_counted(proxied: tuple[str, Proxy]) -> None:
    upstream, proxy = proxied
    _, _, direct = await _get(upstream + "/script/jsonl-later-error")
    status, _, body = await _get(proxy.url + "/script/jsonl-later-error")
    assert (status, body) == (200, direct)
    assert await proxy.sample("tunnelguard_stream_errors_total", rule="error-envelope") == 1
    labels = {"code": "200", "class": "5xx", "source": "upstream"}
    assert await proxy.sample("tunnelguard_requests_total", **labels) == 1
    (line,) = await proxy.process.wait_for("request")
    assert line["true_code"] == 504  # "deadline exceeded"


async def test_events_are_forwarded_while_the_upstream_still_streams(
    proxied: tuple[str, Proxy], gate: asyncio.Event
) -> None:
    """Both clean events reach the client while the upstream holds the rest back; the
    error it then sends is counted (after the head: the 200 stands)."""
    _, proxy = proxied
    async with aiohttp.ClientSession() as s, s.get(proxy.url + "/gated") as r:
        assert r.status == 200
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        second = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert (first, second) == (f"data: {START}\n\n".encode(), f"data: {DELTA}\n\n".encode())
        assert not gate.is_set()  # arrived while the upstream was still holding the error
        gate.set()
        assert await r.read() == f"event: error\ndata: {ANTHROPIC_ERROR}\n\n".encode()
    assert await proxy.sample("tunnelguard_stream_errors_total", rule="error-envelope") == 1


async def test_compressed_streams_and_routes_without_rules_are_untouched(
    proxied: tuple[str, Proxy],
) -> None:
    upstream, proxy = proxied
    _, _, direct = await _get(upstream + "/gzip")
    status, headers, body = await _get(proxy.url + "/gzip")
    assert (status, body) == (200, direct) and "Tunnelguard-Rule" not in headers
    assert await proxy.sample("tunnelguard_inspections_total", result="skipped_encoding") == 1
    _, _, direct = await _get(upstream + "/plain/script/ndjson-first-error")
    status, headers, body = await _get(proxy.url + "/plain/script/ndjson-first-error")
    assert (status, body) == (200, direct) and "Tunnelguard-Rule" not in headers
    assert await proxy.sample("tunnelguard_inspections_total", route="plain") == 0
    assert await proxy.sample("tunnelguard_stream_errors_total") == 0


# -- the bounds ------------------------------------------------------------------------------


async def test_a_first_event_over_the_bound_streams_unchanged(proxied: tuple[str, Proxy]) -> None:
    """first_event_bytes is 4 KiB: a 6 KB first event (an error) is not judged, and the
    scanner skips it too; the error event after it is counted."""
    upstream, proxy = proxied
    _, _, direct = await _get(upstream + "/script/over-the-bound")
    status, headers, body = await _get(proxy.url + "/script/over-the-bound")
    assert (status, body) == (200, direct) and "Tunnelguard-Rule" not in headers
    assert await proxy.sample("tunnelguard_inspections_total", result="skipped_size") == 1
    assert await proxy.sample("tunnelguard_stream_errors_total") == 1
    assert await proxy.sample("tunnelguard_stream_errors_total", rule="stream-error") == 1


class SilentUpstream(RawServer):
    """Sends a stream's head, then nothing until `gate` opens, then an error event."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        await self.gate.wait()
        writer.write(b"event: error\ndata: upstream timed out\n\n")
        await writer.drain()


async def test_a_silent_upstream_gets_its_head_through_after_the_timeout(
    tmp_path: Path, gate: asyncio.Event
) -> None:
    upstream = SilentUpstream(gate)
    port = await upstream.start()
    try:
        async with proxy_process(tmp_path, f"http://127.0.0.1:{port}") as proxy:
            started = time.monotonic()
            async with aiohttp.ClientSession() as s, s.get(proxy.url + "/x") as r:
                waited = time.monotonic() - started
                assert r.status == 200 and not gate.is_set()  # the head, with no event yet
                assert 0.25 <= waited < 5  # held first_event_timeout (300 ms), not longer
                gate.set()
                assert await r.read() == b"event: error\ndata: upstream timed out\n\n"
            assert await proxy.sample("tunnelguard_inspections_total", result="skipped_size") == 1
            assert await proxy.sample("tunnelguard_stream_errors_total", rule="stream-error") == 1
            (line,) = await proxy.process.wait_for("request")
            assert (line["code"], line["true_code"]) == (200, 504)
    finally:
        await upstream.stop()


# -- TCP reads -------------------------------------------------------------------------------

SPLIT_STREAM = f"event: error\r\ndata: {ANTHROPIC_ERROR}\r\n\r\n".encode() + b"data: [DONE]\r\n\r\n"


class SplittingUpstream(RawServer):
    """`GET /cut/N` writes the stream in two writes split at byte N (`/bytes`: one write
    per byte), each drained, with a pause between, then closes (a close-delimited body)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        if target == "/bytes":
            pieces = [bytes([b]) for b in SPLIT_STREAM]
        else:
            cut = int(target.rsplit("/", 1)[1])
            pieces = [SPLIT_STREAM[:cut], SPLIT_STREAM[cut:]]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)  # the next piece in another segment, mostly


async def test_an_event_split_across_reads_at_every_byte(tmp_path: Path) -> None:
    upstream = SplittingUpstream()
    port = await upstream.start()
    try:
        async with proxy_process(tmp_path, f"http://127.0.0.1:{port}") as proxy:
            targets = [f"/cut/{n}" for n in range(len(SPLIT_STREAM) + 1)] + ["/bytes"]
            for target in targets:
                status, headers, body = await _get(proxy.url + target)
                assert (status, body) == (503, SPLIT_STREAM), target
                assert headers["Tunnelguard-Rule"] == "error-envelope", target
            assert await proxy.sample("tunnelguard_inspections_total", result="matched") == len(
                targets
            )
    finally:
        await upstream.stop()


# -- memory and hang-ups ---------------------------------------------------------------------


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_a_thousand_event_stream_is_relayed_in_bounded_memory(
    start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    """1,000 events of 12 KB (12 MB), each scanned (16 KiB bound): the proxy's peak memory
    grows by far less than the stream, and the error at its end is still found."""
    upstream = await start_upstream(upstream_app(asyncio.Event()))
    async with proxy_process(tmp_path, upstream.url, "first_event_bytes: 16KiB") as proxy:
        await _get(proxy.url + "/many?n=100&size=12000")  # warm-up: buffers, allocator
        baseline = _hwm_kib(proxy.process.proc.pid)
        size = 0
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/many?n=1000&size=12000") as r:
            assert r.status == 200
            async for part in r.content.iter_chunked(1 << 16):
                size += len(part)
        assert size > 12_000_000
        growth_mib = (_hwm_kib(proxy.process.proc.pid) - baseline) / 1024
        assert growth_mib < 6, f"peak RSS grew {growth_mib:.1f} MiB for a 12 MB stream"
        assert await proxy.sample("tunnelguard_stream_errors_total", rule="stream-error") == 2


class EndlessUpstream(RawServer):
    """Streams an event every 10 ms until the proxy closes the connection, which sets
    `closed`."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        watcher = asyncio.ensure_future(reader.read())  # done once the proxy closed its side
        try:
            n = 0
            while not watcher.done():
                writer.write(b'data: {"n": %d}\n\n' % n)
                n += 1
                await writer.drain()
                await asyncio.wait({watcher}, timeout=0.01)
        except ConnectionError:
            pass  # written to a connection the proxy had closed: closed all the same
        finally:
            watcher.cancel()
        self.closed.set()


async def test_a_client_hanging_up_mid_stream_closes_the_upstream_connection(
    tmp_path: Path,
) -> None:
    upstream = EndlessUpstream()
    port = await upstream.start()
    try:
        async with proxy_process(tmp_path, f"http://127.0.0.1:{port}") as proxy:
            async with aiohttp.ClientSession() as s, s.get(proxy.url + "/x") as r:
                assert r.status == 200
                for n in range(3):
                    line = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                    assert line == b'data: {"n": %d}\n\n' % n
                r.close()  # hang up mid-stream
            await asyncio.wait_for(upstream.closed.wait(), 10)  # not left open, not pooled
    finally:
        await upstream.stop()


async def test_a_suspect_first_event_is_catalogued_and_the_stream_untouched(
    proxied: tuple[str, Proxy],
) -> None:
    """SPEC 10: a first event no rule matched goes through the detector like a body: its
    shape is in /shapes and counted, the access line names it, nothing delivered changes."""
    upstream, proxy = proxied
    _, _, direct = await _get(upstream + "/script/suspect-first")
    status, headers, body = await _get(proxy.url + "/script/suspect-first")
    assert (status, body) == (200, direct)
    assert not [h for h in headers if h.lower().startswith("tunnelguard-")]
    async with aiohttp.ClientSession() as s, s.get(proxy.admin + "/shapes") as r:
        shapes = (await r.json())["routes"]["llm"]
    assert [(m["pointer"], list(m["values"])) for m in shapes[0]["markers"]] == [
        ("/errcode", ["45009"])
    ]
    assert shapes[0]["markers"][0]["values"]["45009"]["status"] == 429  # "quota"
    assert await proxy.sample("tunnelguard_suspect_responses_total", route="llm") == 1
    (line,) = await proxy.process.wait_for("request")
    assert line["suspect"] == shapes[0]["id"] and line["code"] == 200
