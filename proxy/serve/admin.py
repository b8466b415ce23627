"""The admin listener: /metrics, /healthz, /readyz, /config, /shapes (SPEC section 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from yarl import URL

from proxy.config.model import Config


def redact_url(url: str) -> str:
    """Drop any userinfo: /config must never show credentials."""
    parsed = URL(url)
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))


def config_json(config: Config) -> bytes:
    doc = dataclasses.asdict(config)
    doc.pop("upstream_by_name", None)
    for upstream in doc["upstreams"]:
        upstream["url"] = redact_url(upstream["url"])
    for test in doc["tests"]:
        test["response"]["body"] = test["response"]["body"].decode("utf-8", "replace")
    for route in doc["routes"]:
        route["effective_action"] = route["action"] or config.action or "per rule"
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)


def build_admin(
    registry: CollectorRegistry,
    config: Callable[[], Config],
    ready: Callable[[], bool],
    shapes: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """`registry` is one process's metrics, or a multiprocess collector's view of all
    workers (`--workers N`); `shapes` the suspect-shape catalogue's document (SPEC 10),
    one process's or all workers' merged."""

    async def get_metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def get_config(request: web.Request) -> web.Response:
        return web.Response(body=config_json(config()), content_type="application/json")

    async def get_shapes(request: web.Request) -> web.Response:
        document = shapes() if shapes is not None else {"routes": {}}
        body = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/config", get_config)
    app.router.add_get("/shapes", get_shapes)
    return app
