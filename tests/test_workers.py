"""`tunnelguard run --workers N`: N real processes, one /metrics for all of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from .conftest import ROOT, UpstreamFactory


def _records(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a traceback line: the asserts show the log
            out.append(json.loads(line))
    return out


async def _wait(
    log: Path, proc: subprocess.Popen[bytes], event: str, count: int = 1
) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = [r for r in _records(log) if r.get("event") == event]
        if len(found) >= count:
            return found
        assert proc.poll() is None, f"master exited {proc.returncode}: {log.read_text()}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} {event!r} events in {log.read_text()}")


def _total(metrics: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(prefix + "{") or line.startswith(prefix + " ")
    )


async def test_workers_serve_together_and_survive_a_crash(
    start_upstream: UpstreamFactory, tmp_path: Path
) -> None:
    app = web.Application()

    async def lie(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": "invalid_auth"})

    app.router.add_get("/{tail:.*}", lie)
    upstream = await start_upstream(app)
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--upstream", upstream.url,
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--workers", "2"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        (startup,) = await _wait(log, proc, "startup")
        await _wait(log, proc, "worker_startup", 2)
        workers = startup["workers"]
        assert isinstance(workers, list) and len(workers) == 2
        proxy, admin = str(startup["listen"]), str(startup["admin"])

        async def burst(n: int) -> None:
            sem = asyncio.Semaphore(20)

            async def one() -> None:
                # a new connection each time, so the kernel may hand it to either worker
                async with (
                    sem,
                    aiohttp.ClientSession() as s,
                    s.get(proxy + "/api", headers={"Connection": "close"}) as r,
                ):
                    assert r.status == 401

            await asyncio.gather(*(one() for _ in range(n)))

        await burst(200)
        async with aiohttp.ClientSession() as s:
            async with s.get(admin + "/metrics") as r:
                text = await r.text()
            async with s.get(admin + "/readyz") as r:
                assert r.status == 200
        assert _total(text, "tunnelguard_requests_total") == 200  # both workers, summed
        assert _total(text, "tunnelguard_build_info") == 1
        for _ in range(100):  # access-log lines are written as requests finish
            served_by = {r["pid"] for r in _records(log) if r.get("event") == "request"}
            if len(served_by) == 2:
                break
            await asyncio.sleep(0.05)
        assert served_by == set(workers)

        # a worker dies: the master replaces it and no counter goes backwards
        os.kill(int(workers[0]), signal.SIGKILL)
        (restart,) = await _wait(log, proc, "worker_restart")
        assert restart["old"] == workers[0]
        await _wait(log, proc, "worker_startup", 3)
        async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
            after_crash = _total(await r.text(), "tunnelguard_requests_total")
        assert after_crash == 200
        await burst(50)
        async with aiohttp.ClientSession() as s, s.get(admin + "/metrics") as r:
            assert _total(await r.text(), "tunnelguard_requests_total") == 250

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        await _wait(log, proc, "shutdown")
        for pid in [*workers, restart["pid"]]:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(int(str(pid)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
