"""deploy/grafana: every PromQL expression of the dashboard runs against a real Prometheus
scraping a real tunnelguard, parses, and returns series."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.observe.metrics import Metrics
from tests.conftest import ROOT, UpstreamFactory, closed_port
from tests.deploy import promstack
from tests.deploy.promstack import PrometheusFactory, TunnelguardFactory

prometheus_server = promstack.prometheus_server
tunnelguard_process = promstack.tunnelguard_process

DASHBOARD = ROOT / "deploy/grafana/tunnelguard.json"
# What Grafana substitutes before it sends a query: the route variable's "All" value and
# the rate window (at least four scrape intervals; 1 s here).
VARIABLES = {"$__rate_interval": "30s", "$route": ".*"}


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tunnelguard"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "route"}
    titles = {title for title, _ in _targets()}
    for wanted in (
        "Success rate per route: delivered vs true",
        "Tunnelled errors by rule",
        "Upstream failures by kind",
        "Request latency percentiles",
        "Suspect responses by shape (discovery)",
    ):
        assert wanted in titles
    families = {family.name for family in Metrics().registry.collect()}
    for title, expr in _targets():
        # every metric the dashboard names is one tunnelguard exports
        for metric in re.findall(r"tunnelguard_[a-z_]+", expr):
            base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
            assert base in families, (title, metric)


async def test_every_expression_returns_series(
    start_upstream: UpstreamFactory,
    prometheus_server: PrometheusFactory,
    tunnelguard_process: TunnelguardFactory,
    tmp_path: Path,
) -> None:
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def auth(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": "invalid_auth"})

    async def down(request: web.Request) -> web.Response:
        return web.json_response({"error": "upstream timeout"})

    async def wechat(request: web.Request) -> web.Response:  # suspect: no rule knows it
        return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})

    app.router.add_get("/ok", ok)
    app.router.add_get("/auth", auth)
    app.router.add_get("/down", down)
    app.router.add_get("/wechat", wechat)
    upstream = await start_upstream(app)
    config = tmp_path / "c.yaml"
    config.write_text(
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  app: {{url: '{upstream.url}'}}\n"
        f"  gone:\n    url: http://127.0.0.1:{closed_port()}\n"
        "    retry: {attempts: 2, on: [connect_error]}\n"
        "    circuit_breaker: {failure_ratio: 0.5, min_requests: 100, window: 10s}\n"
        "routes:\n"
        "  - {name: dead, upstream: gone, match: {path_prefix: /dead}}\n"
        "  - {name: api, upstream: app, rules: [slack, error-envelope]}\n"
    )
    tg = await asyncio.to_thread(tunnelguard_process, "--config", str(config))
    prom = await asyncio.to_thread(prometheus_server, [promstack.host_port(tg.admin)])

    async def traffic(rounds: int) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(rounds):
                for path in ("/ok", "/ok", "/auth", "/down", "/wechat", "/dead/x"):
                    async with s.get(tg.url + path) as r:
                        await r.read()

    # traffic across several scrapes, so that every rate() has two samples in its window
    for _ in range(8):
        await traffic(3)
        await asyncio.sleep(1)

    failures = []
    for title, expr in _targets():
        query = _substitute(expr)
        try:
            result = await asyncio.to_thread(prom.wait_for, query, lambda r: len(r) > 0, 20.0)
        except AssertionError as exc:
            failures.append(f"{title}: {query}: {str(exc)[:300]}")
            continue
        print(f"{title}: {query}\n  => {len(result)} series")
    assert not failures, "\n".join(failures)

    # the route variable's query: Grafana's label_values() is the series API
    routes = await asyncio.to_thread(
        prom.api, "/api/v1/label/route/values", **{"match[]": "tunnelguard_requests_total"}
    )
    assert set(routes) == {"api", "dead"}
