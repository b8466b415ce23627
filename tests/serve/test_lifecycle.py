"""Process-level behaviour of the app: graceful drain on SIGTERM (SPEC 6.3)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import LoggedProcess, UpstreamFactory, run_tunnelguard


async def _wait_for_startup(log: Path, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    (startup,) = await LoggedProcess(proc, log).wait_for("startup")
    return {k: str(v) for k, v in startup.items()}


async def test_sigterm_drains_gracefully(start_upstream: UpstreamFactory, tmp_path: Path) -> None:
    app = web.Application()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.json_response({"ok": True})

    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    config = tmp_path / "c.yaml"
    config.write_text(
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u: {{url: '{upstream.url}'}}\n"
        "routes:\n  - {name: r, upstream: u, rules: [slack]}\n"
        "drain: {delay: 1s, timeout: 10s}\n"
    )
    log = tmp_path / "out.log"
    proc = run_tunnelguard(["--config", str(config)], log)
    try:
        startup = await _wait_for_startup(log, proc)
        proxy, admin = startup["listen"], startup["admin"]
        async with aiohttp.ClientSession() as early, aiohttp.ClientSession() as late:
            async with early.get(admin + "/readyz") as r:
                assert r.status == 200
            in_flight = asyncio.ensure_future(early.get(proxy + "/slow?s=2.5"))
            while not upstream.seen:  # the slow request has reached the upstream
                await asyncio.sleep(0.01)
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            # /readyz turns 503 at once
            deadline = time.monotonic() + 0.5
            while True:
                async with late.get(admin + "/readyz") as r:
                    if r.status == 503:
                        break
                assert time.monotonic() < deadline, "/readyz still 200 after SIGTERM"
                await asyncio.sleep(0.02)

            # during drain.delay new requests are still served normally (never a 503)
            async with late.get(proxy + "/slow") as r:
                assert r.status == 200
                assert r.headers.get("Connection", "").lower() != "close"
            assert time.monotonic() - sent_at < 1.0

            # after the delay the listener closes: new connections are refused
            deadline = time.monotonic() + 5
            async with aiohttp.ClientSession() as fresh:
                while True:
                    try:
                        async with fresh.get(proxy + "/slow") as r:
                            assert r.status == 200  # still before the close: fine
                    except aiohttp.ClientConnectorError:
                        break
                    assert time.monotonic() < deadline, "listener still open"
                    await asyncio.sleep(0.05)
            assert time.monotonic() - sent_at >= 0.9

            # the request in flight completes, told to close its connection
            resp = await in_flight
            assert resp.status == 200
            assert await resp.json() == {"ok": True}
            assert resp.headers["Connection"].lower() == "close"
            resp.release()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - sent_at < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    assert "draining" in events and events[-1] == "shutdown"


@pytest.mark.parametrize("timeout", ["1s"])
async def test_drain_timeout_bounds_the_wait(
    start_upstream: UpstreamFactory, tmp_path: Path, timeout: str
) -> None:
    app = web.Application()

    async def forever(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    app.router.add_get("/forever", forever)
    upstream = await start_upstream(app)
    config = tmp_path / "c.yaml"
    config.write_text(
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u:\n    url: '{upstream.url}'\n    timeouts: {{response: 60s}}\n"
        f"routes:\n  - {{name: r, upstream: u}}\ndrain: {{delay: 0s, timeout: {timeout}}}\n"
    )
    log = tmp_path / "out.log"
    proc = run_tunnelguard(["--config", str(config)], log)
    try:
        startup = await _wait_for_startup(log, proc)
        async with aiohttp.ClientSession() as session:
            stuck = asyncio.ensure_future(session.get(startup["listen"] + "/forever"))
            while not upstream.seen:
                await asyncio.sleep(0.01)
            sent_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0
            assert time.monotonic() - sent_at < 3.5  # drain.timeout (1 s) + cancel grace (1 s)
            with pytest.raises(aiohttp.ClientError):
                resp = await stuck
                await resp.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_settle_heap_takes_start_up_objects_out_of_the_collectors_sight() -> None:
    import gc

    from proxy.serve.lifecycle import settle_heap

    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000  # modules, config, app: all of the start-up heap
    finally:
        gc.unfreeze()
