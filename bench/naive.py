#!/usr/bin/env python3
"""A deliberately naive aiohttp + orjson reverse proxy: the floor `bench/run.py` measures.

    python3 bench/naive.py --upstream http://127.0.0.1:PORT --listen 127.0.0.1:PORT

One catch-all route and one shared ClientSession.  Every body, request and response, is read
whole into memory; nothing is streamed, nothing is bounded.  A JSON response that is an object
with `"ok": false` becomes 401 (scenario (a)'s rule, body kept); anything else passes through.
It is what "a 60-line aiohttp proxy" costs, not part of tunnelguard.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# RFC 9110 section 7.6.1, plus the framing headers aiohttp sets again for the buffered body
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "proxy-authenticate", "proxy-authorization", "host", "content-length"}
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        async with request.app[SESSION].request(
            request.method,
            URL(request.app[UPSTREAM] + request.raw_path, encoded=True),
            headers=_end_to_end(request.headers),
            data=body or None,
            allow_redirects=False,
        ) as resp:
            status, headers, payload = resp.status, _end_to_end(resp.headers), await resp.read()
            is_json = resp.content_type == "application/json"
    except aiohttp.ClientError:
        return web.Response(status=502, text="bad gateway\n")
    if is_json:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and doc.get("ok") is False:
            status = 401  # the tunnelled error, made honest
    return web.Response(status=status, headers=headers, body=payload)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description="naive aiohttp + orjson reverse proxy")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(app, host=host, port=int(port), access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
