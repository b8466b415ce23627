"""`tunnelguard suggest` (SPEC 1 and 10): the command on body files, a HAR
capture in a browser's export format (tests/tools/data/capture.har: Chrome's DevTools
fields, one body base64-encoded as mitmproxy writes it), and a running proxy's /shapes;
then the output checked by `tunnelguard check` and served by a real `tunnelguard run`.
The rules themselves: test_suggest_rules.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    ROOT,
    LoggedProcess,
    UpstreamFactory,
    closed_port,
    run_tunnelguard,
    stop_processes,
)
from tests.tools.test_suggest_rules import judge

HAR = Path(__file__).parent / "data" / "capture.har"

# -- the command -----------------------------------------------------------------------------


def suggest(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "suggest", *args],
        cwd=ROOT, input=stdin.decode() if stdin else None, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_body_files_become_rules_that_check_passes(tmp_path: Path) -> None:
    wechat = tmp_path / "wechat.json"
    wechat.write_text('{"errcode": 40001, "errmsg": "invalid credential, access_token is bad"}')
    clean = tmp_path / "clean.json"
    clean.write_text('{"errcode": 0, "errmsg": "ok"}')
    out = tmp_path / "suggested.yaml"
    done = suggest(str(wechat), str(clean), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 rule(s) from 1 shape(s)" in done.stderr and done.stdout == ""
    assert check(out).returncode == 0
    text = out.read_text()
    assert judge(text, {"errcode": 40001, "errmsg": "x"})[0].startswith("shape-")  # type: ignore[union-attr]
    assert judge(text, {"errcode": 0, "errmsg": "ok"}) == (None, None)
    # no free text from the bodies is ever written
    assert "invalid credential" not in text and "access_token" not in text


def test_a_route_that_forces_rewrite_is_named(tmp_path: Path) -> None:
    """An action override beats a rule's own `flag` (SPEC 4.3): adopting the suggestion
    there would change statuses, so the command says so."""
    config = tmp_path / "tg.yaml"
    config.write_text(
        "version: 1\nupstreams:\n  u: {url: 'http://127.0.0.1:1'}\n"
        "routes:\n  - {name: api, upstream: u, rules: [slack], action: rewrite}\n"
    )
    body = tmp_path / "wechat.json"
    body.write_text('{"errcode": 40001, "errmsg": "invalid credential"}')
    done = suggest("--config", str(config), str(body), "-o", str(tmp_path / "out.yaml"))
    assert done.returncode == 0, done.stderr
    assert "route 'api' overrides every rule's action with rewrite" in done.stderr
    plain = suggest(str(body), "-o", str(tmp_path / "plain.yaml"))
    assert plain.returncode == 0 and "overrides" not in plain.stderr


def test_a_lone_message_gets_its_keyword_rule_and_its_shape_is_counted_once(
    tmp_path: Path,
) -> None:
    lambda_timeout = tmp_path / "lambda.json"  # AWS Lambda's error under a 200
    lambda_timeout.write_text('{"errorMessage": "Task timed out after 3.00 seconds"}')
    out = tmp_path / "out.yaml"
    done = suggest(str(lambda_timeout), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 rule(s) from 1 shape(s)" in done.stderr
    rule, status = judge(out.read_text(), {"errorMessage": "Task timed out"})
    assert rule is not None and rule.startswith("shape-") and rule.endswith("-504")
    assert status == "504"


def test_stdin_and_stdout(tmp_path: Path) -> None:
    done = suggest("-", stdin=b'{"Response": {"Error": {"Code": "AuthFailure", "Message": "m"}}}')
    assert done.returncode == 0, done.stderr
    path = tmp_path / "out.yaml"
    path.write_text(done.stdout)
    assert check(path).returncode == 0


def test_nothing_suspect_exits_1(tmp_path: Path) -> None:
    clean = tmp_path / "clean.json"
    clean.write_text('{"ok": true, "errors": [], "error": null}')
    slack = tmp_path / "slack.json"
    slack.write_text('{"ok": false, "error": "invalid_auth"}')  # the preset knows it
    done = suggest(str(clean), str(slack))
    assert done.returncode == 1 and "nothing suspect" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one source"),
        (("--har", str(HAR), "x.json"), "exactly one source"),
        (("/nonexistent/body.json",), "cannot read /nonexistent/body.json"),
        (("--har", "/nonexistent.har"), "cannot read /nonexistent.har"),
        (("--har", str(Path(__file__))), "not JSON"),
        (("--route", "nope", str(HAR)), "unknown route 'nope'"),
        (("--config", "/nonexistent.yaml", str(HAR)), "cannot read /nonexistent.yaml"),
    ],
)
def test_bad_usage_exits_2(args: tuple[str, ...], message: str) -> None:
    done = suggest(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_not_a_har_and_an_unreachable_admin_exit_2(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"log": {"version": "1.2"}}')
    done = suggest("--har", str(other))
    assert done.returncode == 2 and "not a HAR file" in done.stderr
    done = suggest("--admin", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2 and "cannot read http://127.0.0.1:" in done.stderr


def test_an_invalid_config_exits_2_with_its_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nroutes: 3\n")
    done = suggest("--config", str(bad), str(HAR))
    assert done.returncode == 2 and f"{bad}:" in done.stderr


def har_bodies() -> list[tuple[str, int, str, bytes]]:
    """(url path, status, content type, body) of every entry of the HAR fixture."""
    import base64

    out = []
    for entry in json.loads(HAR.read_text())["log"]["entries"]:
        content = entry["response"]["content"]
        text = content["text"]
        body = base64.b64decode(text) if content.get("encoding") == "base64" else text.encode()
        path = "/" + entry["request"]["url"].split("/", 3)[3]
        out.append((path, entry["response"]["status"], content["mimeType"], body))
    return out


# the HAR's tunnelled errors the presets miss, and its responses that must stay untouched
TUNNELLED = {"errcode": 3, "Response": 1, "errors": 1, "meta": 1}


def test_a_har_capture_becomes_rules(tmp_path: Path) -> None:
    out = tmp_path / "from-har.yaml"
    done = suggest("--har", str(HAR), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert check(out).returncode == 0
    text = out.read_text()
    flagged = 0
    for _, status, ctype, body in har_bodies():
        if status != 200 or "json" not in ctype:
            continue
        doc = json.loads(body)
        rule, _ = judge(text, doc)
        tunnelled = any(doc.get(k) not in (None, 0, False) for k in ("errcode", "errors", "meta"))
        tunnelled = tunnelled or "Error" in doc.get("Response", {})
        if doc.get("ok") is False:
            assert rule == "slack"
        elif tunnelled:
            assert rule is not None and rule.startswith("shape-"), doc
            flagged += 1
        else:
            assert rule is None, doc
    assert flagged == sum(TUNNELLED.values())


Served = dict[str, tuple[int, str, bytes]]  # path -> (status, content type, body)
Seen = dict[str, tuple[int, str | None, str | None]]  # path -> (status, rule, flagged status)


async def _walk_through(
    tmp_path: Path, start_upstream: UpstreamFactory, bodies: Served
) -> tuple[Seen, Seen]:
    """The walk-through of docs/discovery.md, through real processes: run the default in
    front of an upstream answering `bodies`, let each through once, `suggest --admin`,
    `check`, then run the suggested config and ask again: what each path got before and
    after."""
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        status, ctype, body = bodies[request.path]
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})

    app.router.add_get("/{tail:.*}", answer)
    upstream = await start_upstream(app)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = await _start(tmp_path / "first.log", procs, "--upstream", upstream.url)
        async with aiohttp.ClientSession() as session:
            before = {p: await _get(session, first[0] + p) for p in bodies}
            out = tmp_path / "suggested.yaml"
            done = await asyncio.to_thread(suggest, "--admin", first[1], "-o", str(out))
            assert done.returncode == 0, done.stderr
            assert (await asyncio.to_thread(check, out)).returncode == 0
            second = await _start(
                tmp_path / "second.log", procs, "--config", str(out), "--upstream", upstream.url
            )
            after = {p: await _get(session, second[0] + p) for p in bodies}
    finally:
        stop_processes(procs)
    for path, (status, rule, _) in after.items():
        assert status == before[path][0]  # flag: no status changes
        if rule is None or not rule.startswith("shape-"):
            assert (rule, after[path][2]) == before[path][1:], path  # the rest as it was
    return before, after


async def test_from_a_running_proxy_to_a_proxy_that_flags_them(
    tmp_path: Path, start_upstream: UpstreamFactory
) -> None:
    """The HAR capture's responses: its tunnelled errors the presets miss are flagged."""
    bodies = {f"/r{i}": (st, ct, body) for i, (_, st, ct, body) in enumerate(har_bodies())}
    _, after = await _walk_through(tmp_path, start_upstream, bodies)
    flagged = [flag for _, rule, flag in after.values() if rule and rule.startswith("shape-")]
    assert len(flagged) == sum(TUNNELLED.values())
    assert all(flag is not None and 400 <= int(flag) <= 599 for flag in flagged)


async def test_the_discovery_corpora_through_real_processes(
    tmp_path: Path, start_upstream: UpstreamFactory
) -> None:
    """Issue 20's corpora served by a real upstream: after `suggest --admin`, every
    tunnelled body is flagged with the status class the detector read in it, and no clean
    body is touched."""
    from proxy.rules.suspect import detect
    from tests.rules.corpus import discovery

    tunnelled = {f"/t{i}": e for i, e in enumerate(discovery.tunnelled())}
    clean = {f"/c{i}": e for i, e in enumerate(discovery.clean())}
    bodies = {p: (200, e.content_type, e.raw) for p, e in {**tunnelled, **clean}.items()}
    before, after = await _walk_through(tmp_path, start_upstream, bodies)
    for path, entry in tunnelled.items():
        suspect = detect(entry.body)
        assert suspect is not None and before[path][1] is None, entry.api  # no preset knew it
        _, rule, flag = after[path]
        assert rule is not None and rule.startswith("shape-"), entry.api
        assert flag is not None and int(flag) // 100 == suspect.status // 100, entry.api
    for path, entry in clean.items():
        assert after[path] == before[path], entry.api


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None, str | None]:
    async with session.get(url) as response:
        await response.read()
        return (
            response.status,
            response.headers.get("Tunnelguard-Rule"),
            response.headers.get("Tunnelguard-Status"),
        )


async def _start(log: Path, procs: list[subprocess.Popen[bytes]], *args: str) -> tuple[str, str]:
    proc = run_tunnelguard([*args, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], log)
    procs.append(proc)
    (ready,) = await LoggedProcess(proc, log).wait_for("startup")
    return str(ready["listen"]), str(ready["admin"])
