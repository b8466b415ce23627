"""deploy/prometheus against the real binaries (Debian's `prometheus` package).

promtool validates the config, the rule files and their unit tests, and lints tunnelguard's
live `/metrics`.  A real Prometheus scrapes a real tunnelguard process in front of a lying
upstream, and PromQL through its HTTP API returns the true ratios of a known traffic mix, raw
and through the recording rules of deploy/prometheus/rules.yml.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, UpstreamFactory, closed_port
from tests.deploy import promstack
from tests.deploy.promstack import (
    PrometheusFactory,
    PromServer,
    Result,
    TunnelguardFactory,
    TunnelguardProcess,
    binary,
    by_label,
    matches,
)

# pytest finds fixtures among a module's names: this is how another test module uses them too.
prometheus_server = promstack.prometheus_server
tunnelguard_process = promstack.tunnelguard_process

DEPLOY = ROOT / "deploy/prometheus"

# One round of traffic: path, requests, status the client gets.  Routes (see _config):
# `api` rewrites tunnelled errors, `shadow` only flags them (report-only rollout), `dead`
# goes to an upstream that refuses connections.
ROUND = (
    ("/api/ok", 30, 200),  # {"ok": true}: clean
    ("/api/auth", 10, 401),  # slack invalid_auth: rewritten to 401
    ("/api/down", 10, 504),  # error-envelope "upstream timeout": rewritten to 504
    ("/shadow/ok", 6, 200),
    ("/shadow/auth", 2, 200),  # flagged: delivered 200, true 401
    ("/shadow/down", 2, 200),  # flagged: delivered 200, true 504
    ("/dead/x", 4, 502),  # connection refused: tunnelguard answers 502
)
PER_ROUND = sum(n for _, n, _ in ROUND)  # 64
METRICS_TIMEOUT = 10.0  # tunnelguard's own /metrics catching up with the last response
FIRST_SCRAPE_TIMEOUT = 30.0  # Prometheus 2.42 scrapes a new target ~5 s after start
SCRAPE_TIMEOUT = 15.0  # a later scrape (1 s interval) and the rule evaluation after it


def _config(upstream: str) -> str:
    return f"""\
version: 1
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
upstreams:
  app: {{url: "{upstream}", timeouts: {{connect: 2s, response: 10s}}}}
  gone:
    url: http://127.0.0.1:{closed_port()}
    timeouts: {{connect: 2s, response: 10s}}
    retry: {{attempts: 1}}
routes:
  - name: shadow
    match: {{path_prefix: /shadow}}
    upstream: app
    rules: [slack, error-envelope]
    action: flag
  - name: dead
    match: {{path_prefix: /dead}}
    upstream: gone
  - name: api
    upstream: app
    rules: [graphql, jsonrpc, slack, error-envelope]
"""


def _lying_upstream() -> web.Application:
    """Answers 200 to everything; the last path segment says what the body hides."""
    bodies = {
        "ok": {"ok": True},
        "auth": {"ok": False, "error": "invalid_auth"},
        "down": {"error": "upstream timeout"},
    }
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(bodies[request.path.rsplit("/", 1)[-1]])

    app.router.add_get("/{tail:.*}", answer)
    return app


async def _send_round(client: aiohttp.ClientSession, proxy: str) -> None:
    for path, count, status in ROUND:
        for _ in range(count):
            async with client.get(proxy + path) as r:
                await r.read()
                assert r.status == status, (path, r.status)


async def _own_count(client: aiohttp.ClientSession, admin: str) -> float:
    async with client.get(f"{admin}/metrics") as r:
        text = await r.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tunnelguard_requests_total"
    )


async def _until_counted(client: aiohttp.ClientSession, admin: str, total: int) -> None:
    """Bounded poll: tunnelguard counts a request after answering it."""
    deadline = time.monotonic() + METRICS_TIMEOUT
    while (count := await _own_count(client, admin)) != total:
        assert time.monotonic() < deadline, f"tunnelguard counted {count}, sent {total}"
        await asyncio.sleep(0.05)


def _total_is(n: int) -> Callable[[Result], bool]:
    return lambda result: len(result) == 1 and float(result[0]["value"][1]) == n


async def _wait(
    prom: PromServer, expr: str, predicate: Callable[[Result], bool], timeout: float
) -> Result:
    return await asyncio.to_thread(prom.wait_for, expr, predicate, timeout)


async def _start_proxy(
    start_upstream: UpstreamFactory, tunnelguard_process: TunnelguardFactory, tmp_path: Path
) -> TunnelguardProcess:
    upstream = await start_upstream(_lying_upstream())
    config = tmp_path / "tunnelguard.yaml"
    config.write_text(_config(upstream.url))
    args = ("--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
    return await asyncio.to_thread(tunnelguard_process, *args)


async def _scraped_known_traffic(
    start_upstream: UpstreamFactory,
    tunnelguard_process: TunnelguardFactory,
    prometheus_server: PrometheusFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> PromServer:
    """Two rounds of ROUND through a real tunnelguard, scraped by a real Prometheus.

    rate() needs two samples of a series, and tunnelguard creates a series on its first
    request, so Prometheus starts after round 1 (every series' first sample holds round 1,
    all in one scrape) and round 2 follows its first scrape.  Every series then grows by the
    same factor between the same two timestamps: rate()'s extrapolation is the same for all,
    and ratios of rates are the exact ratios of the traffic.
    """
    tg = await _start_proxy(start_upstream, tunnelguard_process, tmp_path)
    await _send_round(client, tg.url)
    await _until_counted(client, tg.admin, PER_ROUND)
    prom = await asyncio.to_thread(prometheus_server, [tg.admin])
    total = "sum(tunnelguard_requests_total)"
    await _wait(prom, total, _total_is(PER_ROUND), FIRST_SCRAPE_TIMEOUT)
    await _send_round(client, tg.url)
    await _until_counted(client, tg.admin, 2 * PER_ROUND)
    await _wait(prom, total, _total_is(2 * PER_ROUND), SCRAPE_TIMEOUT)
    return prom


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        cwd=DEPLOY,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules.yml", "alerts.yml"),
        ("test", "rules", "rules_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_deploy_files(args: tuple[str, ...]) -> None:
    proc = _promtool(*args)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


async def test_promtool_lints_live_metrics(
    start_upstream: UpstreamFactory,
    tunnelguard_process: TunnelguardFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    tg = await _start_proxy(start_upstream, tunnelguard_process, tmp_path)
    await _send_round(client, tg.url)
    await _until_counted(client, tg.admin, PER_ROUND)
    async with client.get(f"{tg.admin}/metrics") as r:
        text = await r.text()
    # every family the traffic touches is there to be linted
    for line in (
        'tunnelguard_requests_total{class="5xx",code="200",method="GET",route="shadow",'
        'source="flagged"} 2.0',
        'tunnelguard_tunnelled_errors_total{action="rewrite",route="api",rule="slack",'
        'status="401"} 10.0',
        'tunnelguard_upstream_failures_total{kind="connect_error",upstream="gone"} 4.0',
        'tunnelguard_inspections_total{result="clean",route="api"} 30.0',
    ):
        assert line in text
    proc = await asyncio.to_thread(_promtool, "check", "metrics", stdin=text)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


async def test_prometheus_computes_the_true_error_ratio(
    start_upstream: UpstreamFactory,
    tunnelguard_process: TunnelguardFactory,
    prometheus_server: PrometheusFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    prom = await _scraped_known_traffic(
        start_upstream, tunnelguard_process, prometheus_server, client, tmp_path
    )

    async def query(expr: str) -> Result:
        result = await asyncio.to_thread(prom.query, expr)
        shown = by_label(result, "route") if result[0]["metric"] else result[0]["value"][1]
        print(f"{expr}\n  => {shown}")
        return result

    # 2 rounds: 128 requests, of which 5xx for real: 20 api (504), 4 shadow (flagged 504),
    # 8 dead (502).  Delivered as 5xx: the same minus the 4 flagged ones, delivered as 200.
    true_ratio = await query(
        'sum(tunnelguard_requests_total{class="5xx"}) / sum(tunnelguard_requests_total)'
    )
    assert float(true_ratio[0]["value"][1]) == 32 / 128
    delivered = await query(
        'sum(tunnelguard_requests_total{code=~"5.."}) / sum(tunnelguard_requests_total)'
    )
    assert float(delivered[0]["value"][1]) == 28 / 128
    per_route = await query(
        'sum by (route) (tunnelguard_requests_total{class="5xx"})'
        " / sum by (route) (tunnelguard_requests_total)"
    )
    assert by_label(per_route, "route") == {"api": 20 / 100, "shadow": 4 / 20, "dead": 8 / 8}
    # the flagged route: every response delivered as 200, only 12 of 20 really were 2xx
    shadow_delivered = await query(
        'sum(tunnelguard_requests_total{route="shadow",code=~"2.."})'
        ' / sum(tunnelguard_requests_total{route="shadow"})'
    )
    shadow_true = await query(
        'sum(tunnelguard_requests_total{route="shadow",class="2xx"})'
        ' / sum(tunnelguard_requests_total{route="shadow"})'
    )
    assert float(shadow_delivered[0]["value"][1]) == 1.0
    assert float(shadow_true[0]["value"][1]) == 12 / 20


async def test_recording_rules_through_real_prometheus(
    start_upstream: UpstreamFactory,
    tunnelguard_process: TunnelguardFactory,
    prometheus_server: PrometheusFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    prom = await _scraped_known_traffic(
        start_upstream, tunnelguard_process, prometheus_server, client, tmp_path
    )
    loaded = {r["name"] for g in await asyncio.to_thread(prom.rules) for r in g["rules"]}
    assert {
        "route:tunnelguard_requests:rate5m",
        "route:tunnelguard_true_success:ratio_rate5m",
        "route:tunnelguard_delivered_success:ratio_rate5m",
        "route:tunnelguard_tunnelled_errors:ratio_rate5m",
        "rule:tunnelguard_tunnelled_errors:rate5m",
        "upstream:tunnelguard_upstream_failures:rate5m",
        "upstream:tunnelguard_upstream_failures:ratio_rate5m",
        "TunnelguardTunnelledErrorRatioHigh",
        "TunnelguardUpstreamFailures",
        "TunnelguardCircuitOpen",
        "TunnelguardConfigReloadFailed",
        "TunnelguardNewSuspectShape",
    } <= loaded
    # Ratios per round (success = not 5xx): api 40/50 both ways; shadow 8/10 true but 10/10
    # delivered; dead 0/4.  Tunnelled: api 20/50, shadow 4/10.  `gone` never answered.
    ratios = {
        "route:tunnelguard_true_success:ratio_rate5m": (
            "route",
            {"api": 0.8, "shadow": 0.8, "dead": 0.0},
        ),
        "route:tunnelguard_delivered_success:ratio_rate5m": (
            "route",
            {"api": 0.8, "shadow": 1.0, "dead": 0.0},
        ),
        "route:tunnelguard_tunnelled_errors:ratio_rate5m": (
            "route",
            {"api": 0.4, "shadow": 0.4, "dead": 0.0},
        ),
        # every upstream's failure series exist from start-up, so a healthy one reads 0
        "upstream:tunnelguard_upstream_failures:ratio_rate5m": (
            "upstream",
            {"gone": 1.0, "app": 0.0},
        ),
    }
    # Rates are extrapolated over the 5m window, so they are checked against one unit, the
    # rate of `dead` (4 requests a round), in one query (one evaluation): api 50, shadow 10,
    # slack 12 (10 api + 2 shadow), error-envelope 12, failures of `gone` 4.
    unit = ' / on (job) group_left () route:tunnelguard_requests:rate5m{route="dead"}'
    rates = {
        "route:tunnelguard_requests:rate5m" + unit: (
            "route",
            {"api": 12.5, "shadow": 2.5, "dead": 1.0},
        ),
        "rule:tunnelguard_tunnelled_errors:rate5m" + unit: (
            "rule",
            {"slack": 3.0, "error-envelope": 3.0},
        ),
        "upstream:tunnelguard_upstream_failures:rate5m" + unit: (
            "upstream",
            {"gone": 1.0, "app": 0.0},
        ),
    }
    for expr, (label, expected) in {**ratios, **rates}.items():
        result = await _wait(prom, expr, matches(label, expected), SCRAPE_TIMEOUT)
        print(f"{expr}\n  => {by_label(result, label)}")
        assert {s["metric"]["job"] for s in result} == {"tunnelguard"}
