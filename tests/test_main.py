"""`tunnelguard run | demo | check` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ROOT, UpstreamFactory, lying_upstream

PY = [sys.executable, "-m", "proxy"]


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PY, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _startup(proc: subprocess.Popen[str], timeout: float = 15) -> dict[str, object]:
    """Read stdout until the JSON startup line; fail with stderr if the process dies."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process exited {proc.wait()}: {err}")
        record = json.loads(line)
        if record.get("event") == "startup":
            return dict(record)
    raise AssertionError("no startup line")


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        _stop(proc)


def _fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


_run_in_thread = asyncio.to_thread


async def test_run_with_embedded_default(
    start_upstream: UpstreamFactory, procs: list[subprocess.Popen[str]]
) -> None:
    upstream = await lying_upstream(start_upstream)
    with_creds = upstream.replace("http://", "http://user:s3cret@")
    proc = _spawn(
        "run", "--upstream", with_creds, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )
    procs.append(proc)
    startup = await _run_in_thread(_startup, proc)
    status, headers, _ = await _run_in_thread(_fetch, f"{startup['listen']}/api/auth.test")
    assert status == 401
    assert headers["Tunnelguard-Rule"] == "slack"
    admin = startup["admin"]
    assert (await _run_in_thread(_fetch, f"{admin}/healthz"))[0] == 200
    assert (await _run_in_thread(_fetch, f"{admin}/readyz"))[0] == 200
    status, _, body = await _run_in_thread(_fetch, f"{admin}/config")
    assert status == 200
    assert b"s3cret" not in body
    config = json.loads(body)
    assert config["routes"][0]["rules"] == ["graphql", "jsonrpc", "slack", "error-envelope"]
    status, _, metrics = await _run_in_thread(_fetch, f"{admin}/metrics")
    assert (
        b'tunnelguard_requests_total{class="4xx",code="401",method="GET",route="default",'
        b'source="rewritten"} 1.0' in metrics
    )
    assert _stop(proc) == 0


async def test_env_configures_run(
    start_upstream: UpstreamFactory, procs: list[subprocess.Popen[str]]
) -> None:
    upstream = await lying_upstream(start_upstream)
    proc = _spawn(
        "run",
        env={
            "TUNNELGUARD_UPSTREAM": upstream,
            "TUNNELGUARD_LISTEN": "127.0.0.1:0",
            "TUNNELGUARD_ADMIN_LISTEN": "127.0.0.1:0",
        },
    )
    procs.append(proc)
    startup = await _run_in_thread(_startup, proc)
    assert (await _run_in_thread(_fetch, f"{startup['listen']}/x"))[0] == 401


def test_run_without_upstream_is_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELGUARD_")}
    proc = subprocess.run([*PY, "run"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "--upstream" in proc.stderr


def test_invalid_config_lists_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\n"
        "upstreams:\n"
        "  u: {url: http://127.0.0.1:1, timeouts: {connect: 5}}\n"
        "routes:\n"
        "  - name: r\n"
        "    upstream: nope\n"
        "    match: {path_prefx: /api}\n"
    )
    proc = subprocess.run(
        [*PY, "run", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert f"{bad}:3:52: upstreams.u.timeouts.connect: expected a duration" in proc.stderr
    assert f"{bad}:6:15: routes[0].upstream: unknown upstream 'nope'" in proc.stderr
    assert "did you mean `path_prefix`?" in proc.stderr
    assert len(lines) == 3


def test_upstream_flag_with_several_upstreams_is_usage_error(tmp_path: Path) -> None:
    two = tmp_path / "two.yaml"
    two.write_text(
        "version: 1\nupstreams:\n  a: {url: http://127.0.0.1:1}\n  b: {url: http://127.0.0.1:2}\n"
        "routes:\n  - {name: r, upstream: a}\n"
    )
    proc = subprocess.run(
        [*PY, "run", "--config", str(two), "--upstream", "http://127.0.0.1:3"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "exactly one upstream" in proc.stderr


def test_failing_embedded_test_refuses_to_start(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "version: 1\nupstreams:\n  u: {url: http://127.0.0.1:1}\n"
        "routes:\n  - {name: r, upstream: u, rules: [slack]}\n"
        "tests:\n  - name: wrong on purpose\n    route: r\n"
        "    response: {body: {ok: false, error: invalid_auth}}\n    expect: {status: 403}\n"
    )
    proc = subprocess.run(
        [*PY, "run", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "test 'wrong on purpose' failed" in proc.stderr
    assert "status: expected 403, got 401" in proc.stderr
    check = subprocess.run([*PY, "check", str(cfg)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 1


def test_check_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [*PY, "check", "config/default.yaml"], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok (7 tests passed)" in ok.stdout
    missing = subprocess.run(
        [*PY, "check", str(tmp_path / "absent.yaml")], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "cannot read file" in missing.stderr


def test_demo_tour_shows_before_and_after() -> None:
    proc = subprocess.run(
        [*PY, "demo", "--once", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "/slack/api/auth.test" in out and "upstream 200  ->  tunnelguard 401" in out
    assert "tunnelguard 429" in out and "tunnelguard 504" in out
    assert "/api/users                   upstream 200  ->  tunnelguard 200" in out
    # an LLM stream's first event (SPEC 5.1), and an envelope no rule knows (SPEC 10)
    assert "/llm/v1/messages             upstream 200  ->  tunnelguard 503" in out
    assert "/wechat/cgi-bin/user/info    upstream 200  ->  tunnelguard 200  (rule: -)" in out
    assert re.search(r"route default: s-[0-9a-f]{8}  /errcode = 40001  \(would be 400\)", out)
    assert "suggest --admin http://127.0.0.1:" in out
    assert 'tunnelguard_tunnelled_errors_total{action="rewrite",route="default",rule="slack"' in out
    assert "curl -i" in out


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_100mb_json_body_streams_in_bounded_memory(
    start_upstream: UpstreamFactory, procs: list[subprocess.Popen[str]]
) -> None:
    """A 100 MiB JSON body (chunked, no length) is far beyond max_body_bytes: it is
    buffered up to the cap, then streamed; the proxy's peak memory barely moves."""
    import hashlib

    import aiohttp

    chunk = b'{"pad":"' + b"x" * 65520 + b'"}'
    count = 1600  # 100 MiB

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(int(request.query.get("n", count))):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/huge", huge)
    upstream = await start_upstream(app)
    proc = _spawn(
        "run", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin-listen",
        "127.0.0.1:0",
    )  # fmt: skip
    procs.append(proc)
    startup = await _run_in_thread(_startup, proc)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{startup['listen']}/huge?n=40") as r:  # warm-up: 2.5 MiB
            await r.read()
        baseline = _hwm_kib(proc.pid)
        digest = hashlib.sha256()
        size = 0
        async with session.get(f"{startup['listen']}/huge") as r:
            assert r.status == 200
            async for part in r.content.iter_chunked(1 << 16):
                digest.update(part)
                size += len(part)
    assert size == len(chunk) * count
    assert digest.hexdigest() == hashlib.sha256(chunk * count).hexdigest()
    growth_mib = (_hwm_kib(proc.pid) - baseline) / 1024
    assert growth_mib < 24, f"proxy peak RSS grew {growth_mib:.1f} MiB for a 100 MiB body"


def test_bad_listen_env_is_usage_error() -> None:
    env = {**os.environ, "TUNNELGUARD_UPSTREAM": "http://127.0.0.1:1", "TUNNELGUARD_LISTEN": "x"}
    proc = subprocess.run([*PY, "run"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert "TUNNELGUARD_LISTEN" in proc.stderr


def test_expected_header_null_means_absent(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "version: 1\nupstreams:\n  u: {url: http://127.0.0.1:1}\n"
        "routes:\n  - {name: r, upstream: u, rules: [slack], action: flag}\n"
        "tests:\n"
        "  - name: flag adds no Proxy-Status\n    route: r\n"
        "    response: {body: {ok: false, error: invalid_auth}}\n"
        "    expect: {status: 200, headers: {proxy-status: null, tunnelguard-status: '401'}}\n"
        "  - name: wrong on purpose\n    route: r\n"
        "    response: {body: {ok: false, error: invalid_auth}}\n"
        "    expect: {headers: {tunnelguard-rule: null}}\n"
    )
    check = subprocess.run([*PY, "check", str(cfg)], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 1
    assert "test 'flag adds no Proxy-Status' failed" not in check.stderr
    assert "test 'wrong on purpose' failed" in check.stderr
    assert "header tunnelguard-rule: expected absent, got 'slack'" in check.stderr


def test_a_flag_rules_tests_hold_before_and_after_the_switch_to_rewrite(tmp_path: Path) -> None:
    """A rule's own `action: flag` (as `tunnelguard suggest` writes them): a test expecting
    the status it stands for passes while it flags and after it rewrites; `expect.action`
    still tells them apart, and a wrong status still fails."""
    tests = (
        "tests:\n  - name: stands for 401\n    route: r\n"
        "    response: {body: {ok: false}}\n    expect: {status: 401, rule: mine}\n"
        "  - name: says it flags\n    route: r\n"
        "    response: {body: {ok: false}}\n    expect: {action: flag}\n"
        "  - name: wrong status stays wrong\n    route: r\n"
        "    response: {body: {ok: false}}\n    expect: {status: 500}\n"
    )
    base = (
        "version: 1\nupstreams:\n  u: {url: http://127.0.0.1:1}\n"
        "routes:\n  - {name: r, upstream: u, rules: [mine]}\n"
    )
    for action in ("flag", "rewrite"):
        rule = (
            "rules:\n  - {name: mine, when: {path: /ok, equals: false}, status: 401, "
            f"action: {action}}}\n"
        )
        cfg = tmp_path / "c.yaml"
        cfg.write_text(base + rule + tests)
        check = subprocess.run([*PY, "check", str(cfg)], cwd=ROOT, capture_output=True, text=True)
        assert "test 'stands for 401' failed" not in check.stderr, action
        assert ("test 'says it flags' failed" in check.stderr) == (action == "rewrite")
        assert "test 'wrong status stays wrong' failed" in check.stderr


def test_shadow_mode_keeps_the_configs_own_tests_passing(tmp_path: Path) -> None:
    """Switching a tested config to `action: flag` (report-only rollout) must not make its
    own tests reject it: a flagged response meets the status it would have had."""
    tests = (
        "tests:\n  - name: expired token\n    route: r\n"
        "    response: {body: {ok: false, error: invalid_auth}}\n"
        "    expect: {status: 401, rule: slack}\n"
        "  - name: wrong status stays wrong\n    route: r\n"
        "    response: {body: {ok: false, error: invalid_auth}}\n"
        "    expect: {status: 500}\n"
    )
    base = "version: 1\nupstreams:\n  u: {url: http://127.0.0.1:1}\n"
    for action_line, route in (
        ("", "routes:\n  - {name: r, upstream: u, rules: [slack]}\n"),
        ("action: flag\n", "routes:\n  - {name: r, upstream: u, rules: [slack]}\n"),
        ("", "routes:\n  - {name: r, upstream: u, rules: [slack], action: flag}\n"),
    ):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(base + action_line + route + tests)
        check = subprocess.run([*PY, "check", str(cfg)], cwd=ROOT, capture_output=True, text=True)
        assert "test 'expired token' failed" not in check.stderr, (action_line, route)
        assert "test 'wrong status stays wrong' failed" in check.stderr
