"""The admin listener: /metrics, /healthz, /readyz, /config, /shapes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from proxy import __version__
from proxy.config.load import load_file
from tests.conftest import ProxyFactory, UpstreamFactory, config_yaml


async def _app(start_upstream: UpstreamFactory) -> str:
    app = web.Application()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/", ok)
    return (await start_upstream(app)).url


async def test_metrics_text_and_openmetrics(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await start_proxy(config_yaml(await _app(start_upstream)))
    async with client.get(tg.url + "/") as r:
        assert r.status == 200
    async with client.get(tg.admin + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    assert f'tunnelguard_build_info{{version="{__version__}"}} 1.0' in text
    assert (
        'tunnelguard_requests_total{class="2xx",code="200",method="GET",route="r",'
        'source="upstream"} 1.0' in text
    )
    async with client.get(
        tg.admin + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        om = await r.text()
    assert om.rstrip().endswith("# EOF")
    assert "tunnelguard_requests_total{" in om


async def test_unknown_methods_are_labelled_other(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await start_proxy(config_yaml(await _app(start_upstream)))
    async with client.request("PROPFIND", tg.url + "/") as r:
        assert r.status == 405  # the upstream's answer, forwarded
    labels = {"route": "r", "method": "other", "code": "405", "class": "4xx", "source": "upstream"}
    assert tg.sample("tunnelguard_requests_total", **labels) == 1


async def test_unmatched_route_is_404_problem(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    route = "  - name: api\n    upstream: u\n    match: {path_prefix: /api}\n"
    tg = await start_proxy(config_yaml(await _app(start_upstream), route=route))
    async with client.get(tg.url + "/other") as r:
        assert r.status == 404
        assert r.headers["Content-Type"] == "application/problem+json"
        doc = orjson.loads(await r.read())
    assert doc["error"] == "no_route" and doc["retryable"] is False
    labels = {"route": "(unmatched)", "method": "GET", "code": "404", "class": "4xx",
              "source": "proxy"}  # fmt: skip
    assert tg.sample("tunnelguard_requests_total", **labels) == 1


async def test_health_ready_and_config(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    url = (await _app(start_upstream)).replace("http://", "http://alice:pw@")
    tg = await start_proxy(config_yaml(url))
    async with client.get(tg.admin + "/healthz") as r:
        assert r.status == 200
    async with client.get(tg.admin + "/readyz") as r:
        assert r.status == 200
    async with client.get(tg.admin + "/config") as r:
        doc = orjson.loads(await r.read())
    assert doc["upstreams"][0]["url"].startswith("http://127.0.0.1:")
    assert "pw" not in doc["upstreams"][0]["url"] and "alice" not in doc["upstreams"][0]["url"]
    assert doc["routes"][0]["effective_action"] == "per rule"
    tg.app.draining = True
    async with client.get(tg.admin + "/readyz") as r:
        assert r.status == 503
    async with client.get(tg.admin + "/healthz") as r:
        assert r.status == 200


async def test_upstream_series_exist_before_the_first_request(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory
) -> None:
    """PromQL ratios and increase() need the series at 0 before the first failure."""
    tg = await start_proxy(config_yaml(await _app(start_upstream)))
    for kind in ("connect_error", "connect_timeout", "response_timeout", "reset",
                 "protocol_error", "overloaded", "circuit_open"):  # fmt: skip
        assert (
            tg.metrics.registry.get_sample_value(
                "tunnelguard_upstream_failures_total", {"upstream": "u", "kind": kind}
            )
            == 0
        )
    assert (
        tg.metrics.registry.get_sample_value(
            "tunnelguard_retries_total", {"upstream": "u", "reason": "connect_error"}
        )
        == 0
    )
    for result in ("success", "failure"):
        assert (
            tg.metrics.registry.get_sample_value(
                "tunnelguard_config_reloads_total", {"result": result}
            )
            == 0
        )


# --- /shapes (SPEC 10) --------------------------------------------------------------------

WECHAT = {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"}


async def _lying(start_upstream: UpstreamFactory) -> str:
    app = web.Application()

    async def wechat(request: web.Request) -> web.Response:
        return web.json_response(WECHAT)

    async def clean(request: web.Request) -> web.Response:
        return web.json_response({"errcode": 0, "errmsg": "ok", "items": []})

    app.router.add_get("/wechat", wechat)
    app.router.add_get("/clean", clean)
    return (await start_upstream(app)).url


async def test_shapes_lists_what_no_rule_matched(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    tg = await start_proxy(config_yaml(await _lying(start_upstream)))
    for path in ("/wechat", "/wechat", "/clean"):
        async with client.get(tg.url + path) as r:
            assert r.status == 200 and await r.json() in (
                WECHAT,
                {"errcode": 0, "errmsg": "ok", "items": []},
            )
            assert "Tunnelguard-Suspect" not in r.headers  # header: false by default
    async with client.get(tg.admin + "/shapes") as r:
        assert r.status == 200 and r.content_type == "application/json"
        document = await r.json()
    (shape,) = document["routes"]["r"]
    assert shape["count"] == 2 and shape["keys"] == ["errcode", "errmsg"]
    assert shape["markers"] == [
        {"pointer": "/errcode", "type": "number", "values": {"40001": {"count": 2, "status": 400}}}
    ]
    assert tg.sample("tunnelguard_suspect_responses_total", route="r", shape=shape["id"]) == 2
    lines = tg.log_records()
    assert [line.get("suspect") for line in lines] == [shape["id"], shape["id"], None]
    assert "suspect" not in lines[2]  # only when there is one (SPEC 9)
    assert [line["true_code"] for line in lines] == [200, 200, 200]  # nothing changes


async def test_the_header_only_when_asked_for(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    url = await _lying(start_upstream)
    tg = await start_proxy(config_yaml(url, "discover: {header: true}\n"))
    async with client.get(tg.url + "/wechat") as r:
        suspect = r.headers.get("Tunnelguard-Suspect")
        assert r.status == 200 and suspect is not None and suspect.startswith("s-")
        assert "Tunnelguard-Rule" not in r.headers and await r.json() == WECHAT
    async with client.get(tg.url + "/clean") as r:
        assert "Tunnelguard-Suspect" not in r.headers


async def test_discovery_turned_off(
    start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    route = (
        "  - name: r\n    upstream: u\n    rules: [slack]\n"
        "    discover: {enabled: false, header: true}\n"
    )
    tg = await start_proxy(config_yaml(await _lying(start_upstream), route=route))
    async with client.get(tg.url + "/wechat") as r:
        assert "Tunnelguard-Suspect" not in r.headers
    async with client.get(tg.admin + "/shapes") as r:
        assert await r.json() == {"routes": {}}
    assert "suspect" not in tg.log_records()[0]
    (family,) = [
        f for f in tg.metrics.registry.collect() if f.name == "tunnelguard_suspect_responses"
    ]
    assert family.samples == []


async def test_a_reload_keeps_the_catalogue(
    start_upstream: UpstreamFactory,
    start_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    text = config_yaml(await _lying(start_upstream))
    tg = await start_proxy(text)
    async with client.get(tg.url + "/wechat") as r:
        await r.read()
    path = tmp_path / "c.yaml"
    path.write_text(
        text.replace("rules: [graphql, jsonrpc, slack, error-envelope]", "rules: [slack]")
    )
    assert await tg.app.reload(lambda: load_file(str(path)), "test")
    async with client.get(tg.url + "/wechat") as r:
        await r.read()
    async with client.get(tg.admin + "/shapes") as r:
        (shape,) = (await r.json())["routes"]["r"]
    assert shape["count"] == 2
