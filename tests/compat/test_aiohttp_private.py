"""proxy.compat.aiohttp_private against the installed aiohttp: each private attribute
exists and means what the shim assumes."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from proxy.compat.aiohttp_private import (
    handshake_response,
    name_the_server,
    no_silent_retry,
)
from tests.conftest import serving


async def test_no_silent_retry_sets_the_switch_aiohttp_reads() -> None:
    async with aiohttp.ClientSession() as session:
        assert session._retry_connection is True  # aiohttp's default: one silent retry
        no_silent_retry(session)
        assert session._retry_connection is False


async def test_handshake_response_is_the_101_with_its_headers() -> None:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        ws.headers["X-Upstream"] = "yes"
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    async with (
        serving(app) as upstream,
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{upstream.url}/ws") as ws,
    ):
        response = handshake_response(ws)
        assert response.status == 101
        assert (b"X-Upstream", b"yes") in response.raw_headers


async def test_name_the_server_replaces_aiohttps_default_server_header() -> None:
    from aiohttp import http, web_response

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def own(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Server": "upstream/1"})

    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/own", own)
    before = web_response.SERVER_SOFTWARE  # type: ignore[attr-defined]
    try:
        async with serving(app) as upstream, aiohttp.ClientSession() as session:
            name_the_server(http.SERVER_SOFTWARE)  # aiohttp's own default, for a start
            async with session.get(f"{upstream.url}/plain") as r:
                assert "aiohttp" in r.headers["Server"]  # what the shim replaces
            name_the_server("someone")
            async with session.get(f"{upstream.url}/plain") as r:
                assert r.headers.getall("Server") == ["someone"]
            async with session.get(f"{upstream.url}/own") as r:
                assert r.headers.getall("Server") == ["upstream/1"]  # a response's own wins
    finally:
        name_the_server(before)
