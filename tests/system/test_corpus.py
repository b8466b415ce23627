"""Issue 17's corpora through a real `tunnelguard run --upstream URL` process on the embedded
default, in front of a real upstream that answers each corpus body: a resource that
describes a failure arrives untouched (status, bytes) and is counted 2xx; every tunnelled
error gets the verdict tests/rules/corpus/bodies.json expects."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LoggedProcess, UpstreamFactory, run_tunnelguard, stop_processes
from tests.rules import corpus

ENTRIES = corpus.entries()


def _upstream_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        entry = ENTRIES[int(request.match_info["index"])]
        return web.Response(
            status=entry.status, body=entry.body, headers={"Content-Type": entry.content_type}
        )

    app = web.Application()
    app.router.add_get("/corpus/{index}", answer)
    return app


def _requests_total(metrics: str, labels: dict[str, str]) -> float:
    """The value of the requests_total series with exactly these labels (0: none)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "tunnelguard_requests_total" and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_both_corpora_through_a_real_proxy(
    start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    upstream = await start_upstream(_upstream_app())
    log = tmp_path / "proxy.log"
    proc = run_tunnelguard(
        ["--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        log,
    )
    try:
        (startup,) = await LoggedProcess(proc, log).wait_for("startup")
        proxy, admin = str(startup["listen"]), str(startup["admin"])
        resources = [i for i, e in enumerate(ENTRIES) if e.corpus == "resources"]
        bodies = [i for i, e in enumerate(ENTRIES) if e.corpus == "bodies"]
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            for i in resources:
                async with client.get(f"{proxy}/corpus/{i}") as resp:
                    body = await resp.read()
                    assert (resp.status, body) == (200, ENTRIES[i].body), ENTRIES[i].id
                    assert "Tunnelguard-Rule" not in resp.headers, ENTRIES[i].id
            async with client.get(f"{admin}/metrics") as resp:
                metrics = await resp.text()
            clean = {
                "route": "default", "method": "GET", "code": "200", "class": "2xx",
                "source": "upstream",
            }  # fmt: skip
            assert _requests_total(metrics, clean) == len(resources)
            for i in bodies:
                expect = ENTRIES[i].expect
                async with client.get(f"{proxy}/corpus/{i}") as resp:
                    await resp.read()
                    got = {
                        "status": resp.status,
                        "rule": resp.headers.get("Tunnelguard-Rule"),
                        "action": (
                            None if "Tunnelguard-Rule" not in resp.headers
                            else "flag" if "Tunnelguard-Status" in resp.headers
                            else "rewrite"
                        ),
                    }  # fmt: skip
                    assert got == expect, ENTRIES[i].id
    finally:
        stop_processes([proc])
