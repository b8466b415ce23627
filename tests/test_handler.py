"""The request lifecycle through a real proxy in front of a real upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import zlib
from collections.abc import AsyncIterator

import aiohttp
import brotli
import orjson
import pytest
import zstandard
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.conftest import (
    ProxyFactory,
    Running,
    Upstream,
    UpstreamFactory,
    closed_port,
    config_yaml,
)

Proxied = tuple[Upstream, Running]

SLACK_ERROR = b'{"ok":false,"error":"invalid_auth"}'
CLEAN = b'{"ok":true,"users":[{"id":1}],"error":null}'
JSON = "application/json"


def _json(body: bytes, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": JSON, **headers})


def scenario_app() -> web.Application:
    """One route per scenario."""
    app = web.Application(client_max_size=64 << 20)

    async def clean(request: web.Request) -> web.Response:
        resp = _json(CLEAN, ETag='"v1"')
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers.add("X-Order", "first")
        resp.headers.add("X-Order", "second")
        return resp

    async def slack_error(request: web.Request) -> web.Response:
        return _json(
            SLACK_ERROR,
            ETag='"e1"',
            **{"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT", "Cache-Control": "max-age=60"},
        )

    async def ratelimited(request: web.Request) -> web.Response:
        return _json(b'{"ok":false,"error":"ratelimited"}')

    async def ratelimited_with_header(request: web.Request) -> web.Response:
        return _json(b'{"ok":false,"error":"ratelimited"}', **{"Retry-After": "17"})

    async def encoded(request: web.Request) -> web.Response:
        coding = request.match_info["coding"]
        raw = b'{"error": "upstream timeout"}'
        body = {
            "gzip": gzip.compress(raw),
            "deflate": zlib.compress(raw),
            "br": brotli.compress(raw),
            "zstd": zstandard.ZstdCompressor().compress(raw),
        }[coding]
        return _json(body, **{"Content-Encoding": coding})

    async def bad_gzip(request: web.Request) -> web.Response:
        return _json(BAD_GZIP, **{"Content-Encoding": "gzip"})

    async def bomb(request: web.Request) -> web.Response:
        return _json(BOMB, **{"Content-Encoding": "gzip"})

    async def big_json(request: web.Request) -> web.Response:
        return _json(BIG_ERROR)

    async def chunked_big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(BIG_ERROR), 65536):
            await resp.write(BIG_ERROR[i : i + 65536])
        await resp.write_eof()
        return resp

    async def raw_body(request: web.Request) -> web.Response:
        return _json(RAW_BODIES[request.match_info["name"]])

    async def html(request: web.Request) -> web.Response:
        return web.Response(body=SLACK_ERROR, content_type="text/html")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def tunnelguard_headers(request: web.Request) -> web.Response:
        return _json(CLEAN, **{"Tunnelguard-Rule": "forged", "Tunnelguard-Status": "500"})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await SSE_GATE.wait()
        await resp.write(b"data: second\n\n")
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.5")))
        return _json(CLEAN)

    async def hangup_mid_body(request: web.Request) -> web.StreamResponse:
        ctype = request.query.get("type", "application/octet-stream")
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        resp.content_length = 1_000_000
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def huge_stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query["mb"]) << 20
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        chunk = bytes(range(256)) * 256
        for _ in range(size // len(chunk)):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def batch(request: web.Request) -> web.Response:
        return _json(BATCHES[request.match_info["kind"]])

    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get("/clean", clean)
    app.router.add_route("*", "/slack-error", slack_error)
    app.router.add_get("/ratelimited", ratelimited)
    app.router.add_get("/ratelimited-header", ratelimited_with_header)
    app.router.add_get("/encoded/{coding}", encoded)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/bad-gzip", bad_gzip)
    app.router.add_get("/big-json", big_json)
    app.router.add_get("/chunked-big", chunked_big)
    app.router.add_get("/raw/{name}", raw_body)
    app.router.add_get("/html", html)
    app.router.add_get("/unavailable", unavailable)
    app.router.add_get("/tg-headers", tunnelguard_headers)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/sse", sse)
    app.router.add_route("*", "/slow", slow)
    app.router.add_get("/hangup", hangup_mid_body)
    app.router.add_get("/huge", huge_stream)
    app.router.add_get("/batch/{kind}", batch)
    app.router.add_get("/no-content", no_content)
    return app


BAD_GZIP = gzip.compress(b'{"error": "upstream timeout"}')[:-12] + b"garbage!"
BOMB = gzip.compress(b"{" + b" " * (64 << 20) + b"}", compresslevel=9)
BIG_ERROR = b'{"error": "upstream timeout", "pad": "' + b"x" * (2 << 20) + b'"}'
RAW_BODIES = {
    "truncated": b'{"error": "upstream tim',
    "not-json": b"<html>oops</html>",
    "bom-error": b'\xef\xbb\xbf{"error": "service unavailable"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "invalid-utf8": b'{"error": "\xff\xfe"}',
    "empty": b"",
}
BATCHES = {
    "all": b'[{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}},'
    b'{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"Method not found"}}]',
    "some": b'[{"jsonrpc":"2.0","id":1,"result":"0x1"},'
    b'{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"Method not found"}}]',
}
SSE_GATE = asyncio.Event()


@pytest.fixture
async def proxied(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> Proxied:
    upstream = await start_upstream(scenario_app())
    running = await start_proxy(config_yaml(upstream.url))
    return upstream, running


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with client.get(url) as r:
        return r.status, r.headers, await r.read()


async def test_clean_json_passes_byte_for_byte(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    async with client.get(tg.url + "/clean") as r:
        body = await r.read()
        assert r.status == 200
        assert body == CLEAN
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert r.headers.getall("X-Order") == ["first", "second"]
        assert r.headers["ETag"] == '"v1"'
        assert r.headers["Via"] == "1.1 tunnelguard"
        assert not any(k.lower().startswith("tunnelguard-") for k in r.headers)
    labels = {"route": "r", "method": "GET", "code": "200", "class": "2xx", "source": "upstream"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1
    assert tg.sample("tunnelguard_inspections_total", route="r", result="clean") == 1
    assert (
        tg.sample("tunnelguard_request_duration_seconds_count", route="r", **{"class": "2xx"}) == 1
    )
    assert tg.sample("tunnelguard_upstream_duration_seconds_count", route="r", upstream="u") == 1


async def test_tunnelled_error_is_rewritten(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    async with client.get(tg.url + "/slack-error") as r:
        assert r.status == 401
        assert await r.read() == SLACK_ERROR  # body: keep forwards the original bytes
        assert r.headers["Tunnelguard-Rule"] == "slack"
        assert r.headers["Proxy-Status"] == (
            'tunnelguard; received-status=200; details="rule slack"'
        )
        assert r.headers["Cache-Control"] == "no-store"
        assert "ETag" not in r.headers
        assert "Last-Modified" not in r.headers
        assert "Retry-After" not in r.headers
        assert r.headers["Content-Type"] == JSON
    labels = {"route": "r", "method": "GET", "code": "401", "class": "4xx", "source": "rewritten"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1
    assert (
        tg.sample(
            "tunnelguard_tunnelled_errors_total",
            route="r",
            rule="slack",
            action="rewrite",
            status="401",
        )
        == 1
    )
    assert tg.sample("tunnelguard_inspections_total", route="r", result="matched") == 1


async def test_flag_passes_through_and_counts_true_class(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    upstream = await start_upstream(scenario_app())
    route = "  - name: r\n    upstream: u\n    rules: [slack]\n    action: flag\n"
    tg = await start_proxy(config_yaml(upstream.url, route=route))
    async with client.get(tg.url + "/slack-error") as r:
        assert r.status == 200
        assert await r.read() == SLACK_ERROR
        assert r.headers["Tunnelguard-Rule"] == "slack"
        assert r.headers["Tunnelguard-Status"] == "401"
        assert r.headers["ETag"] == '"e1"'  # every upstream header untouched
        assert r.headers["Cache-Control"] == "max-age=60"
        assert "Proxy-Status" not in r.headers
    labels = {"route": "r", "method": "GET", "code": "200", "class": "4xx", "source": "flagged"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1
    assert (
        tg.sample(
            "tunnelguard_tunnelled_errors_total",
            route="r",
            rule="slack",
            action="flag",
            status="401",
        )
        == 1
    )


async def test_rewritten_429_carries_retry_after(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, headers, _ = await _get(client, tg.url + "/ratelimited")
    assert status == 429
    assert headers["Retry-After"] == "5"  # the upstream's retry_after default
    status, headers, _ = await _get(client, tg.url + "/ratelimited-header")
    assert status == 429
    assert headers.getall("Retry-After") == ["17"]  # the upstream's own value wins


async def test_retry_after_from_body_and_problem_body(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def busy(request: web.Request) -> web.Response:
        return _json(b'{"status":"error","code":"BUSY","retry_in_seconds":2.5}')

    app.router.add_get("/busy", busy)
    upstream = await start_upstream(app)
    extra = (
        "rules:\n  - name: env\n    when: {all: [{path: /status, equals: error}, "
        "{path: /code, exists: true}]}\n    status: {from: /code, map: {BUSY: 503}, default: 502}\n"
        "    body: problem\n    retry_after_from: /retry_in_seconds\n"
    )
    route = "  - name: r\n    upstream: u\n    rules: [env]\n"
    tg = await start_proxy(config_yaml(upstream.url, extra=extra, route=route))
    async with client.get(
        tg.url + "/busy",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    ) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "3"  # ceil(2.5)
        assert r.headers["Content-Type"] == "application/problem+json"
        doc = orjson.loads(await r.read())
    assert doc["status"] == 503
    assert doc["error"] == "tunnelled_error"
    assert doc["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert doc["retryable"] is True
    assert doc["upstream"] == {"status": "error", "code": "BUSY", "retry_in_seconds": 2.5}
    assert doc["rule"] == "env"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
async def test_compressed_error_is_inspected_and_forwarded_compressed(
    proxied: Proxied, client: aiohttp.ClientSession, coding: str
) -> None:
    _, tg = proxied
    async with client.get(tg.url + f"/encoded/{coding}") as r:
        assert r.status == 504
        assert r.headers["Content-Encoding"] == coding
        body = await r.read()
    assert body != b'{"error": "upstream timeout"}'  # still compressed: original bytes
    assert tg.sample("tunnelguard_inspections_total", route="r", result="matched") == 1


async def test_decompression_bomb_is_forwarded_uninspected(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, _headers, body = await _get(client, tg.url + "/bomb")
    assert status == 200
    assert body == BOMB
    assert tg.sample("tunnelguard_inspections_total", route="r", result="skipped_size") == 1


async def test_wrongly_compressed_body_is_forwarded_untouched(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, headers, body = await _get(client, tg.url + "/bad-gzip")
    assert (status, body) == (200, BAD_GZIP)
    assert headers["Content-Encoding"] == "gzip"
    assert tg.sample("tunnelguard_inspections_total", route="r", result="skipped_encoding") == 1


@pytest.mark.parametrize("path", ["/big-json", "/chunked-big"])
async def test_body_over_max_streams_through_uninspected(
    proxied: Proxied, client: aiohttp.ClientSession, path: str
) -> None:
    _, tg = proxied
    status, _, body = await _get(client, tg.url + path)
    assert status == 200  # an error in a 2 MiB body is beyond max_body_bytes
    assert body == BIG_ERROR
    assert tg.sample("tunnelguard_inspections_total", route="r", result="skipped_size") == 1


@pytest.mark.parametrize(
    ("name", "status", "result"),
    [
        ("truncated", 200, "invalid_json"),
        ("not-json", 200, "invalid_json"),
        ("bom-error", 503, "matched"),
        ("deep", 200, "invalid_json"),
        ("deep-object", 200, "invalid_json"),
        ("invalid-utf8", 200, "invalid_json"),
        ("empty", 200, "clean"),
    ],
)
async def test_bad_bodies_never_change_a_byte(
    proxied: Proxied, client: aiohttp.ClientSession, name: str, status: int, result: str
) -> None:
    _, tg = proxied
    got_status, _headers, body = await _get(client, tg.url + f"/raw/{name}")
    assert got_status == status
    assert body == RAW_BODIES[name]
    assert tg.sample("tunnelguard_inspections_total", route="r", result=result) == 1
    # the worker survived: the next request is served normally
    assert (await _get(client, tg.url + "/clean"))[0] == 200


async def test_non_json_content_type_is_not_inspected(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, _, body = await _get(client, tg.url + "/html")
    assert (status, body) == (200, SLACK_ERROR)
    assert tg.sample("tunnelguard_inspections_total", route="r", result="skipped_content_type") == 1


async def test_event_stream_is_relayed_as_it_arrives(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    SSE_GATE.clear()
    async with client.get(tg.url + "/sse") as r:
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"  # arrived while the upstream still holds the stream
        SSE_GATE.set()
        assert await r.read() == b"data: second\n\n"


async def test_head_is_not_inspected_and_keeps_length(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    async with client.head(tg.url + "/slack-error") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(SLACK_ERROR))
        assert await r.read() == b""


async def test_204_has_no_body(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied
    status, _, body = await _get(client, tg.url + "/no-content")
    assert (status, body) == (204, b"")


async def test_request_forwarding(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied
    payload = bytes(range(256)) * 40_000  # ~10 MiB, streamed, not buffered
    async with client.post(
        tg.url + "/echo/a%2Fb?x=1&y=%20z",
        data=payload,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        headers={
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "203.0.113.9",
            "Via": "1.0 edge",
            "Host": "api.example.test",
            "X-Custom": "kept",
            "Content-Type": "application/octet-stream",
        },
    ) as r:
        assert r.status == 200
        echoed = orjson.loads(await r.read())
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert echoed["method"] == "POST"
    assert echoed["path_qs"] == "/echo/a%2Fb?x=1&y=%20z"
    assert echoed["length"] == len(payload)
    assert echoed["sha256"] == hashlib.sha256(payload).hexdigest()
    assert headers["content-length"] == str(len(payload))
    assert "x-hop" not in headers and "keep-alive" not in headers
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "api.example.test"
    assert headers["host"] == "api.example.test"
    assert headers["via"] == "1.0 edge, 1.1 tunnelguard"
    assert headers["x-custom"] == "kept"
    assert headers["traceparent"].startswith("00-")
    for invented in ("user-agent", "accept", "accept-encoding"):
        assert invented not in headers  # the proxy invents no headers


async def test_chunked_upload_is_streamed(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(64):
            yield bytes([i]) * 65536

    async with client.put(tg.url + "/echo", data=chunks()) as r:
        echoed = orjson.loads(await r.read())
    assert echoed["length"] == 64 * 65536
    expected = hashlib.sha256(b"".join(bytes([i]) * 65536 for i in range(64))).hexdigest()
    assert echoed["sha256"] == expected


async def test_upstream_connections_are_kept_alive(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    upstream, tg = proxied
    for _ in range(10):
        assert (await _get(client, tg.url + "/clean"))[0] == 200
    assert len(upstream.peers) == 1


async def test_an_absolute_form_target_is_routed_and_forwarded_by_its_authority(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory
) -> None:
    """RFC 9112 3.2.2: the target's authority, not Host, names the host (routing and the
    Host sent upstream); the upstream gets the origin form, path and query (3.2.1)."""
    upstream = await start_upstream(scenario_app())
    routes = (
        "  - {name: by-target, match: {host: api.example}, upstream: u}\n"
        "  - {name: other, upstream: u}\n"
    )
    tg = await start_proxy(config_yaml(upstream.url, route=routes))
    host, port = tg.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET http://api.example/echo?x=1 HTTP/1.1\r\nHost: fz\r\nConnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    seen = upstream.seen[-1]
    assert seen["path_qs"] == "/echo?x=1"
    hosts = [v for k, v in seen["headers"] if k.lower() == b"host"]  # type: ignore[union-attr]
    assert hosts == [b"api.example"]
    (line,) = tg.log_records()
    assert (line["route"], line["path"]) == ("by-target", "/echo")


async def test_no_generated_answer_names_python_or_aiohttp(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """Issue 18 point 4: an answer tunnelguard generates discloses no software versions in
    `Server` (aiohttp's default is `Python/3.x aiohttp/3.y`).  That an upstream's own
    `Server` wins is tests/compat/test_aiohttp_private.py's (the upstreams of these tests
    run in this process, on the same aiohttp)."""
    dead = await start_proxy(config_yaml(f"http://127.0.0.1:{closed_port()}"))
    async with client.get(dead.url + "/x") as r:
        assert r.status == 502
        assert r.headers.getall("Server") == ["tunnelguard"]
        assert not any("aiohttp" in v or "Python" in v for v in r.headers.values())


async def test_underscore_lookalikes_of_framing_headers_never_reach_the_upstream(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    """SPEC 7: a WSGI/PHP backend reads `Transfer_Encoding` as `Transfer-Encoding`."""
    upstream, tg = proxied
    sent = {"Transfer_Encoding": "chunked", "Content_Length": "5", "X_Custom": "kept"}
    async with client.get(tg.url + "/echo", headers=sent) as r:
        assert r.status == 200
        await r.read()
    names = [name.decode("latin-1") for name, _ in upstream.seen[-1]["headers"]]  # type: ignore[union-attr]
    assert "X_Custom" in names
    assert "Transfer_Encoding" not in names and "Content_Length" not in names


async def test_traceparent_is_forwarded_unchanged(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with client.get(tg.url + "/echo", headers={"traceparent": tp}) as r:
        echoed = orjson.loads(await r.read())
    assert dict((k.lower(), v) for k, v in echoed["headers"])["traceparent"] == tp


async def test_upstream_verdict_headers_are_removed(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, headers, _ = await _get(client, tg.url + "/tg-headers")
    assert status == 200
    assert "Tunnelguard-Rule" not in headers and "Tunnelguard-Status" not in headers


async def test_upstream_503_gets_retry_after(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    status, headers, body = await _get(client, tg.url + "/unavailable")
    assert (status, body) == (503, b"down")
    assert headers["Retry-After"] == "5"


async def test_jsonrpc_batches(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied
    status, headers, _ = await _get(client, tg.url + "/batch/all")
    assert status == 500 and headers["Tunnelguard-Rule"] == "jsonrpc"
    status, headers, _ = await _get(client, tg.url + "/batch/some")
    assert status == 200
    assert headers["Tunnelguard-Rule"] == "jsonrpc"
    assert headers["Tunnelguard-Status"] == "404"


async def test_huge_download_streams_in_constant_memory(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    digest = hashlib.sha256()
    size = 0
    async with client.get(tg.url + "/huge?mb=100") as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
    expected = hashlib.sha256((bytes(range(256)) * 256) * 1600).hexdigest()
    assert size == 100 << 20
    assert digest.hexdigest() == expected


async def test_failure_after_head_aborts_the_client(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(tg.url + "/hangup") as r:
            assert r.status == 200
            await r.read()
    assert (await _get(client, tg.url + "/clean"))[0] == 200
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="reset") == 1


async def test_failure_while_buffering_is_502(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    async with client.get(tg.url + "/hangup?type=application/json") as r:
        assert r.status == 502  # nothing was sent yet, so the table answers
        assert r.headers["Proxy-Status"] == "tunnelguard; error=http_protocol_error"
        assert r.headers["Retry-After"] == "5"
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="reset") == 1


async def test_in_flight_gauge(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied
    task = asyncio.ensure_future(_get(client, tg.url + "/slow?s=0.5"))
    for _ in range(100):
        if tg.sample("tunnelguard_in_flight_requests", route="r") == 1:
            break
        await asyncio.sleep(0.01)
    assert tg.sample("tunnelguard_in_flight_requests", route="r") == 1
    assert (await task)[0] == 200
    assert tg.sample("tunnelguard_in_flight_requests", route="r") == 0


async def test_connection_refused_is_502_problem(
    start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await start_proxy(config_yaml(f"http://127.0.0.1:{closed_port()}"))
    async with client.get(tg.url + "/x") as r:
        assert r.status == 502
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.headers["Retry-After"] == "5"
        assert r.headers["Proxy-Status"] == "tunnelguard; error=connection_refused"
        doc = orjson.loads(await r.read())
    assert doc["error"] == "connection_refused" and doc["retryable"] is True
    assert len(doc["traceId"]) == 32
    labels = {"route": "r", "method": "GET", "code": "502", "class": "5xx", "source": "proxy"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1
    # the default policy tries twice (one retry on connect_error); each attempt counts
    assert tg.sample("tunnelguard_upstream_failures_total", upstream="u", kind="connect_error") == 2
    assert tg.sample("tunnelguard_retries_total", upstream="u", reason="connect_error") == 1


@pytest.mark.parametrize(
    ("method", "headers", "retry_after"),
    [
        ("GET", {}, "5"),
        ("POST", {}, None),
        ("POST", {"Idempotency-Key": "k1"}, "5"),
    ],
)
async def test_response_timeout_is_504(
    proxied: Proxied,
    client: aiohttp.ClientSession,
    method: str,
    headers: dict[str, str],
    retry_after: str | None,
) -> None:
    _, tg = proxied
    async with client.request(method, tg.url + "/slow?s=3", headers=headers) as r:
        assert r.status == 504
        assert r.headers.get("Retry-After") == retry_after
        assert r.headers["Proxy-Status"] == "tunnelguard; error=http_response_timeout"
        doc = orjson.loads(await r.read())
    assert doc["retryable"] is (retry_after is not None)
    assert ("may have completed" in doc["detail"]) is (retry_after is None)


async def test_client_hangup_is_counted_as_499(
    proxied: Proxied, client: aiohttp.ClientSession
) -> None:
    _, tg = proxied
    with pytest.raises(asyncio.TimeoutError):
        async with client.get(tg.url + "/slow?s=1.5", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    labels = {"route": "r", "method": "GET", "code": "499", "class": "4xx", "source": "proxy"}
    for _ in range(100):
        if tg.sample("tunnelguard_requests_total", **labels) == 1:
            break
        await asyncio.sleep(0.02)
    assert tg.sample("tunnelguard_requests_total", **labels) == 1
    assert tg.sample("tunnelguard_in_flight_requests", route="r") == 0


async def test_access_log_line_per_request(proxied: Proxied, client: aiohttp.ClientSession) -> None:
    _, tg = proxied
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with client.get(tg.url + "/slack-error?token=secret", headers={"traceparent": tp}) as r:
        await r.read()
    (record,) = tg.log_records()
    assert record["route"] == "r"
    assert record["method"] == "GET"
    assert record["path"] == "/slack-error"  # no query string: it may carry secrets
    assert (record["code"], record["true_code"], record["source"]) == (401, 401, "rewritten")
    assert (record["rule"], record["action"]) == ("slack", "rewrite")
    assert isinstance(record["upstream_time"], float) and record["upstream_time"] >= 0
    assert record["total_time"] >= record["upstream_time"]
    assert record["failure"] is None
    assert record["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert "time" in record
    assert "invalid_auth" not in tg.log_text()  # bodies are never logged


async def test_inspected_503_uses_retry_after_from_the_body(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    app = web.Application()

    async def busy(request: web.Request) -> web.Response:
        return _json(b'{"status":"error","code":"BUSY","retry_in_seconds":7}', status=503)

    app.router.add_get("/busy", busy)
    upstream = await start_upstream(app)
    extra = (
        "inspect: {statuses: [200-299, 503]}\n"
        "rules:\n  - name: env\n    when: {path: /code, equals: BUSY}\n    status: 503\n"
        "    retry_after_from: /retry_in_seconds\n"
    )
    route = "  - name: r\n    upstream: u\n    rules: [env]\n"
    tg = await start_proxy(config_yaml(upstream.url, extra=extra, route=route))
    status, headers, _ = await _get(client, tg.url + "/busy")
    assert status == 503
    assert headers.getall("Retry-After") == ["7"]  # the body's value, not the fallback


@pytest.mark.parametrize(
    ("traceparents", "kept"),
    [
        (["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], True),
        (["garbage"], False),
        (
            [
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ],
            False,
        ),
    ],
)
async def test_trace_context_is_forwarded_or_restarted(
    proxied: Proxied, client: aiohttp.ClientSession, traceparents: list[str], kept: bool
) -> None:
    _, tg = proxied
    from multidict import CIMultiDict

    headers: CIMultiDict[str] = CIMultiDict([("traceparent", t) for t in traceparents])
    headers.add("tracestate", "vendor=abc")
    async with client.get(tg.url + "/echo", headers=headers) as r:
        echoed = orjson.loads(await r.read())
    sent = [(k.lower(), v) for k, v in echoed["headers"]]
    forwarded = [v for k, v in sent if k == "traceparent"]
    assert len(forwarded) == 1
    assert (forwarded[0] == traceparents[0]) is kept
    assert (("tracestate", "vendor=abc") in sent) is kept


async def _expecting(
    url: str, path: str, length: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client that sends a request head with `Expect: 100-continue` (as curl does
    for large uploads) and no body yet."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def _final(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_expect_100_continue_end_to_end(proxied: Proxied) -> None:
    """The expectation goes upstream (SPEC 7, RFC 9110 10.1.1); the client gets its 100
    once the upstream sent one, then the body flows."""
    _, tg = proxied
    reader, writer = await _expecting(tg.url, "/echo", 1000)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"x" * 1000)
    await writer.drain()
    head, body = await _final(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    echoed = orjson.loads(body)
    assert echoed["length"] == 1000
    assert ("expect", "100-continue") in {(k.lower(), v) for k, v in echoed["headers"]}


async def test_an_upstream_refuses_an_expected_body_early(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory
) -> None:
    """An upstream that answers the expectation with a final status gets no body, and the
    client gets that answer without ever sending its (large) body: nothing is buffered."""
    received: list[int] = []

    async def refuse(request: web.Request) -> web.StreamResponse | None:
        return web.Response(status=401, text="no", headers={"WWW-Authenticate": "Bearer"})

    async def upload(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(text="stored")

    app = web.Application()
    app.router.add_post("/upload", upload, expect_handler=refuse)
    upstream = await start_upstream(app)
    tg = await start_proxy(config_yaml(upstream.url))
    reader, writer = await _expecting(tg.url, "/upload", 50 << 20)
    head, body = await _final(reader)  # the body (50 MiB) was never sent
    writer.close()
    assert head.startswith(b"HTTP/1.1 401"), head
    assert b"WWW-Authenticate: Bearer" in head
    assert body == b"no"
    assert received == []  # the upload handler never ran


async def test_an_upstream_that_never_sends_100_still_gets_the_body(
    start_proxy: ProxyFactory,
) -> None:
    """An HTTP/1.0-era upstream ignores the expectation and waits for the body: after
    client.CONTINUE_TIMEOUT the proxy tells the client to go ahead and sends it."""
    got: list[bytes] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        got.append(head + await r.readexactly(5))
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        tg = await start_proxy(config_yaml(f"http://127.0.0.1:{port}"))
        reader, writer = await _expecting(tg.url, "/x", 5)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        head, body = await _final(reader)
        writer.close()
    finally:
        server.close()
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    assert got[0].endswith(b"\r\n\r\nhello")
    assert b"Expect: 100-continue" in got[0]


@pytest.mark.parametrize(
    ("client_auth", "expected"),
    [(None, "Basic dXNlcjpzM2NyZXQ="), ("Bearer client-token", "Bearer client-token")],
)
async def test_upstream_userinfo_is_basic_auth_unless_the_client_sends_its_own(
    start_upstream: UpstreamFactory,
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    client_auth: str | None,
    expected: str,
) -> None:
    upstream = await start_upstream(scenario_app())
    tg = await start_proxy(config_yaml(upstream.url.replace("http://", "http://user:s3cret@")))
    headers = {"Authorization": client_auth} if client_auth else {}
    async with client.get(tg.url + "/echo", headers=headers) as r:
        assert r.status == 200
        echoed = orjson.loads(await r.read())
    sent = {k.lower(): v for k, v in echoed["headers"]}
    assert sent["authorization"] == expected
    assert "s3cret" not in tg.log_text()


# -- event streams (SPEC 5.1; tests/system/test_streams.py drives a real process) -------------

OVERLOADED_EVENT = (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "Overloaded"}}\n\n'
)
STREAM = OVERLOADED_EVENT + b"data: [DONE]\n\n"


def stream_app() -> web.Application:
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "ETag": '"s"'})
        await resp.prepare(request)
        await resp.write(OVERLOADED_EVENT)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/events", events)
    return app


async def test_a_flagged_stream_keeps_its_status_and_headers(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    upstream = await start_upstream(stream_app())
    route = "  - name: r\n    upstream: u\n    rules: [error-envelope]\n    action: flag\n"
    tg = await start_proxy(config_yaml(upstream.url, route=route))
    async with client.get(tg.url + "/events") as r:
        assert r.status == 200 and await r.read() == STREAM
        assert r.headers["ETag"] == '"s"'  # flag: every upstream header untouched
        assert (r.headers["Tunnelguard-Rule"], r.headers["Tunnelguard-Status"]) == (
            "error-envelope",
            "503",
        )
    labels = {"route": "r", "method": "GET", "code": "200", "class": "5xx", "source": "flagged"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1


async def test_body_problem_replaces_a_stream_with_a_problem_document(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    upstream = await start_upstream(stream_app())
    extra = (
        "rules:\n  - name: overloaded\n    when: {path: /error/type, equals: overloaded_error}\n"
        "    status: 503\n    body: problem\n"
    )
    route = "  - name: r\n    upstream: u\n    rules: [overloaded]\n"
    tg = await start_proxy(config_yaml(upstream.url, extra=extra, route=route))
    async with client.get(tg.url + "/events") as r:
        assert r.status == 503
        assert r.headers["Content-Type"] == "application/problem+json"
        doc = orjson.loads(await r.read())
    assert doc["upstream"] == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
    }  # fmt: skip
    assert doc["rule"] == "overloaded" and doc["retryable"] is True


async def test_head_and_a_first_event_bytes_of_0_do_not_hold_streams(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    upstream = await start_upstream(stream_app())
    tg = await start_proxy(config_yaml(upstream.url))
    async with client.head(tg.url + "/events") as r:
        assert r.status == 200 and "Tunnelguard-Rule" not in r.headers
    assert tg.sample("tunnelguard_inspections_total", route="r", result="matched") == 0
    off = await start_proxy(config_yaml(upstream.url, extra="inspect: {first_event_bytes: 0}\n"))
    async with client.get(off.url + "/events") as r:
        assert (r.status, await r.read()) == (200, STREAM)
    assert (
        off.sample("tunnelguard_inspections_total", route="r", result="skipped_content_type") == 1
    )
    assert off.sample("tunnelguard_stream_errors_total", route="r", rule="error-envelope") == 0
