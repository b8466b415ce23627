"""`tunnelguard demo`: a bundled upstream that lies the way real APIs do, the proxy in
front of it on the embedded default, and a short tour showing before/after."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace

import aiohttp
from aiohttp import web

from proxy.config.load import load_default
from proxy.config.model import Listen
from proxy.observe.logs import Log
from proxy.serve.lifecycle import TunnelGuard

GRAPHQL = "application/graphql-response+json"

# path -> (content type, body, extra headers); every one of them is a 200 OK.
SCENARIOS: dict[str, tuple[str, bytes]] = {
    "/slack/api/auth.test": ("application/json", b'{"ok":false,"error":"invalid_auth"}'),
    "/slack/api/chat.postMessage": ("application/json", b'{"ok":false,"error":"ratelimited"}'),
    "/slack/api/conversations.list": (
        "application/json",
        b'{"ok":true,"channels":[{"id":"C024BE91L","name":"general"}]}',
    ),
    "/graphql": (
        GRAPHQL,
        b'{"data":null,"errors":[{"message":"You must be signed in",'
        b'"extensions":{"code":"UNAUTHENTICATED"}}]}',
    ),
    "/rpc": (
        "application/json",
        b'{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"limit exceeded"}}',
    ),
    "/api/report": ("application/json", b'{"error":"upstream timeout"}'),
    # an LLM API's stream whose first event is an error (SPEC 5.1; Anthropic's published one)
    "/llm/v1/messages": (
        "text/event-stream",
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n',
    ),
    # an envelope no preset knows (WeChat's): passed through, but suspect (SPEC 10)
    "/wechat/cgi-bin/user/info": (
        "application/json",
        b'{"errcode":40001,"errmsg":"invalid credential, access_token is invalid"}',
    ),
    "/api/users": ("application/json", b'{"users":[{"id":1,"name":"Ada"}],"error":null}'),
}
TOUR = (
    "/slack/api/auth.test",
    "/slack/api/chat.postMessage",
    "/graphql",
    "/rpc",
    "/api/report",
    "/llm/v1/messages",
    "/wechat/cgi-bin/user/info",
    "/api/users",
)


def demo_upstream() -> web.Application:
    """The lying upstream: every scenario answers 200 OK."""

    async def scenario(request: web.Request) -> web.Response:
        found = SCENARIOS.get(request.path)
        if found is None:
            return web.json_response({"error": "no such demo endpoint"}, status=404)
        content_type, body = found
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scenario)
    return app


async def _start_upstream() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(demo_upstream(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _interesting(metrics_text: str) -> dict[str, float]:
    wanted = (
        "tunnelguard_requests_total{",
        "tunnelguard_tunnelled_errors_total{",
        "tunnelguard_suspect_responses_total{",
    )
    samples = {}
    for line in metrics_text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _tour(upstream: str, proxy: str, admin: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/metrics") as r:
            before = _interesting(await r.text())
        print("\nWhat the upstream says vs what clients get through tunnelguard:\n")
        for path in TOUR:
            async with session.get(upstream + path) as direct:
                body = (await direct.read()).decode()
                direct_status = direct.status
            async with session.get(proxy + path) as via:
                await via.read()
                rule = via.headers.get("Tunnelguard-Rule", "-")
                print(
                    f"  {path:<28} upstream {direct_status}  ->  tunnelguard {via.status}"
                    f"  (rule: {rule})"
                )
                print(f"  {'':<28} body: {body[:90].replace(chr(10), chr(92) + 'n')}")
        async with session.get(f"{admin}/metrics") as r:
            after = _interesting(await r.text())
        async with session.get(f"{admin}/shapes") as r:
            shapes = await r.json()
    print("\nMetric lines that changed:\n")
    for name, value in sorted(after.items()):
        if value != before.get(name, 0.0):
            print(f"  {name} {value:g}")
    print("\nError shapes no rule knows yet (GET /shapes; `tunnelguard suggest` makes rules):\n")
    for route, listed in shapes["routes"].items():
        for shape in listed:
            markers = ", ".join(
                f"{m['pointer']} = {'/'.join(m['values']) or m['type']}" for m in shape["markers"]
            )
            print(f"  route {route}: {shape['id']}  {markers}  (would be {shape['status']})")


async def run_demo(listen: Listen, admin_listen: Listen, once: bool = False) -> int:
    upstream_runner, upstream = await _start_upstream()
    config = replace(load_default(upstream), listen=listen, admin_listen=admin_listen)
    app = TunnelGuard(config, Log("text"))
    try:
        await app.start()
    except OSError as exc:
        print(f"tunnelguard demo: cannot listen: {exc} (try --listen 127.0.0.1:0)")
        await app.stop()
        await upstream_runner.cleanup()
        return 1
    assert app.proxy_address and app.admin_address
    proxy = "http://{}:{}".format(*app.proxy_address)
    admin = "http://{}:{}".format(*app.admin_address)
    print(f"demo upstream (lies with 200 OK): {upstream}")
    print(f"tunnelguard proxy:                {proxy}")
    print(f"tunnelguard admin:                {admin}/metrics")
    await _tour(upstream, proxy, admin)
    print("\nTry it yourself:\n")
    print(f"  curl -i {upstream}/slack/api/auth.test      # 200, error hidden in the body")
    print(f"  curl -i {proxy}/slack/api/auth.test      # 401 Unauthorized")
    print(f"  curl -i {proxy}/api/report               # 504 Gateway Timeout")
    print(f"  curl -i {proxy}/slack/api/chat.postMessage  # 429 with Retry-After")
    print(f"  curl -s {admin}/metrics | grep tunnelguard_requests_total")
    print(f"  curl -s {admin}/shapes                   # what no rule knows yet")
    print(f"  tunnelguard suggest --admin {admin} -o rules.yaml   # ... as rules")
    if not once:
        print("\nServing until Ctrl-C.")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    await app.stop()
    await upstream_runner.cleanup()
    return 0
