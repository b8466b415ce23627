"""Config reload (SPEC 4.6) on a real process: SIGHUP, --watch, rejection, in-flight."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.serve.reload import ReloadResult, carry_over, try_load
from tests.conftest import (
    LoggedProcess,
    UpstreamFactory,
    lying_server,
    lying_upstream,
    reload_counts,
    run_tunnelguard,
    status_and_verdict,
    stop_processes,
)


def config_text(upstream: str, action: str = "rewrite", extra: str = "") -> str:
    return (
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u: {{url: '{upstream}'}}\n"
        f"routes:\n  - {{name: r, upstream: u, rules: [slack], action: {action}}}\n{extra}"
    )


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., LoggedProcess]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> LoggedProcess:
        log = tmp_path / f"out{len(procs)}.log"
        proc = run_tunnelguard(args, log)
        procs.append(proc)
        return LoggedProcess(proc, log)

    yield start
    stop_processes(procs, 10)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_and_rejects(
    start_upstream: UpstreamFactory,
    spawn: Callable[..., LoggedProcess],
    tmp_path: Path,
    workers: str,
) -> None:
    upstream = await lying_upstream(start_upstream)
    path = tmp_path / "c.yaml"
    path.write_text(config_text(upstream))
    p = spawn("--config", str(path), "--workers", workers)
    (startup,) = await p.wait_for("startup")
    proxy, admin = str(startup["listen"]), str(startup["admin"])
    assert await status_and_verdict(proxy + "/a") == (401, None)
    assert await reload_counts(admin) == {"success": 0, "failure": 0}

    # a good config: report-only from now on
    path.write_text(config_text(upstream, action="flag"))
    p.proc.send_signal(signal.SIGHUP)
    await p.wait_for("reload")
    if workers != "1":  # each worker applies it a moment after the master checked it
        assert len(await p.wait_for("worker_reload", int(workers))) == int(workers)
    for _ in range(8):  # new connections, whichever worker takes them
        assert await status_and_verdict(proxy + "/a") == (200, "401")
    assert await reload_counts(admin) == {"success": 1, "failure": 0}

    # a broken file is rejected: the old config keeps serving
    path.write_text("version: 1\nupstreams: [nope\n")
    p.proc.send_signal(signal.SIGHUP)
    failed = [r for r in await p.wait_for("reload", 2) if r["result"] == "failure"]
    assert failed and "invalid YAML" in str(failed[0]["errors"])
    assert await status_and_verdict(proxy + "/a") == (200, "401")
    assert await reload_counts(admin) == {"success": 1, "failure": 1}

    # a config whose own tests fail is rejected too
    path.write_text(
        config_text(
            upstream,
            extra="tests:\n  - name: wrong\n    route: r\n"
            "    response: {body: {ok: false, error: invalid_auth}}\n    expect: {status: 500}\n",
        )
    )
    p.proc.send_signal(signal.SIGHUP)
    records = await p.wait_for("reload", 3)
    assert records[-1]["result"] == "failure"
    assert "test 'wrong' failed" in str(records[-1]["errors"])
    assert await status_and_verdict(proxy + "/a") == (200, "401")
    assert await reload_counts(admin) == {"success": 1, "failure": 2}


async def test_watch_reloads_on_file_change(
    start_upstream: UpstreamFactory, spawn: Callable[..., LoggedProcess], tmp_path: Path
) -> None:
    upstream = await lying_upstream(start_upstream)
    path = tmp_path / "c.yaml"
    path.write_text(config_text(upstream))
    p = spawn("--config", str(path), "--watch")
    (startup,) = await p.wait_for("startup")
    proxy = str(startup["listen"])
    assert await status_and_verdict(proxy + "/a") == (401, None)
    # replace the file the way Kubernetes updates a ConfigMap: a new file renamed over it
    new = tmp_path / "c.yaml.new"
    new.write_text(config_text(upstream, action="flag"))
    new.replace(path)
    (record,) = await p.wait_for("reload")
    assert record["result"] == "success" and record["trigger"] == "watch"
    assert await status_and_verdict(proxy + "/a") == (200, "401")


async def test_in_flight_requests_finish_on_their_config(
    start_upstream: UpstreamFactory, spawn: Callable[..., LoggedProcess], tmp_path: Path
) -> None:
    server = await lying_server(start_upstream)
    upstream = server.url
    path = tmp_path / "c.yaml"
    path.write_text(config_text(upstream))
    p = spawn("--config", str(path))
    (startup,) = await p.wait_for("startup")
    proxy = str(startup["listen"])
    slow = asyncio.ensure_future(status_and_verdict(proxy + "/a?s=1.5"))
    for _ in range(200):  # until the slow request is in flight (it reached the upstream)
        if server.seen:
            break
        await asyncio.sleep(0.01)
    assert server.seen and not slow.done()
    path.write_text(config_text(upstream, action="flag"))
    p.proc.send_signal(signal.SIGHUP)
    await p.wait_for("reload")
    assert await status_and_verdict(proxy + "/b") == (200, "401")  # new requests: the new config
    assert await slow == (401, None)  # the one in flight: the config it started with


def test_try_load_and_carry_over(tmp_path: Path) -> None:
    from proxy.config.load import load_file

    good = tmp_path / "g.yaml"
    good.write_text(config_text("http://127.0.0.1:1"))
    attempt = try_load(lambda: load_file(good))
    assert isinstance(attempt, ReloadResult) and attempt.ok
    moved = tmp_path / "m.yaml"
    moved.write_text(
        config_text("http://127.0.0.1:1").replace("127.0.0.1:0\nadmin", "127.0.0.1:9\nadmin")
    )
    assert attempt.config is not None
    kept, notes = carry_over(attempt.config, load_file(moved))
    assert kept.listen == attempt.config.listen
    assert notes == ["listen stays 127.0.0.1:0 until a restart"]
    bad = try_load(lambda: load_file(tmp_path / "missing.yaml"))
    assert not bad.ok and "cannot read file" in bad.errors[0]
