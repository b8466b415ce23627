"""Changing rules in Kubernetes, end to end on a real process: a ConfigMap update reaches the
sidecar as a file change, and `--watch` reloads it (docs/deploy.md#change-the-rules).

The kubelet does not write a mounted ConfigMap's file in place.  The volume directory holds a
timestamped directory with the real files, a `..data` symlink to it, and one symlink per key
(`config.yaml -> ..data/config.yaml`).  An update writes a new timestamped directory, points a
`..data_tmp` symlink at it, renames `..data_tmp` over `..data` (one atomic rename swaps every
file at once) and removes the old directory.  This test builds that layout in a tmp dir and
updates it exactly that way, with the config of deploy/kubernetes/configmap.yaml.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import (
    ROOT,
    LoggedProcess,
    UpstreamFactory,
    reload_counts,
    run_tunnelguard,
    status_and_verdict,
)

CONFIGMAP = ROOT / "deploy/kubernetes/configmap.yaml"
KEY = "config.yaml"


def configmap_config() -> str:
    """The config text the ConfigMap holds, exactly as the sidecar reads it."""
    (doc,) = yaml.safe_load_all(CONFIGMAP.read_text())
    text: str = doc["data"][KEY]
    return text


class ConfigMapVolume:
    """A directory laid out and updated the way the kubelet's atomic writer does it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.updates = 0

    @property
    def path(self) -> Path:
        """What the container reads: /etc/tunnelguard/config.yaml."""
        return self.root / KEY

    def _write_version(self, text: str) -> str:
        self.updates += 1
        name = f"..2026_11_25_10_{self.updates:02d}_00.{self.updates:09d}"
        version = self.root / name
        version.mkdir(mode=0o755)
        (version / KEY).write_text(text)
        (version / KEY).chmod(0o644)
        return name

    def create(self, text: str) -> None:
        self.root.mkdir()
        version = self._write_version(text)
        os.symlink(version, self.root / "..data")
        os.symlink(f"..data/{KEY}", self.path)

    def update(self, text: str) -> None:
        old = os.readlink(self.root / "..data")
        version = self._write_version(text)
        os.symlink(version, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")  # the atomic swap
        shutil.rmtree(self.root / old)

    def entries(self) -> dict[str, str]:
        """Each entry of the volume directory: a symlink's target, or `dir`."""
        return {p.name: os.readlink(p) if p.is_symlink() else "dir" for p in self.root.iterdir()}


@pytest.fixture
async def lying_upstream(start_upstream: UpstreamFactory) -> str:
    """Every path answers 200 with a Slack-style tunnelled error."""
    app = web.Application()

    async def lie(request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "error": "invalid_auth"})

    app.router.add_get("/{tail:.*}", lie)
    return (await start_upstream(app)).url


@pytest.fixture
async def sidecar(
    tmp_path: Path, lying_upstream: str
) -> AsyncIterator[Callable[[Path], LoggedProcess]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> LoggedProcess:
        log = tmp_path / "sidecar.log"
        proc = run_tunnelguard(
            ["--config", str(config), "--watch",
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             # replaces the url of the config's only upstream, on every reload too
             "--upstream", lying_upstream],
            log,
        )  # fmt: skip
        procs.append(proc)
        return LoggedProcess(proc, log)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


FLAG_LINE = "\n    # action: flag\n"

# A rule that does not parse: a JSON pointer must start with '/'.
BAD_RULE = """\
rules:
  - name: my-envelope
    when: {path: status, equals: error}
    status: 502
"""

# A rule that parses but matches ordinary JSON: the ConfigMap's own test
# "ordinary JSON is left alone" fails, so the config is rejected all the same.
GREEDY_RULE = """\
rules:
  - name: my-envelope
    when: {path: /ok, exists: true}
    status: 502
"""


def with_rule(text: str, rule: str) -> str:
    routed = text.replace(
        "rules: &rules [graphql, jsonrpc, slack, error-envelope]",
        "rules: &rules [my-envelope, graphql, jsonrpc, slack, error-envelope]",
    )
    assert routed != text
    return routed + rule


async def test_configmap_update_reloads_and_a_bad_rule_is_rejected(
    tmp_path: Path, sidecar: Callable[[Path], LoggedProcess]
) -> None:
    rewrite = configmap_config()
    assert FLAG_LINE in rewrite, "configmap.yaml should carry the commented `# action: flag`"
    flag = rewrite.replace(FLAG_LINE, "\n    action: flag\n")

    volume = ConfigMapVolume(tmp_path / "tunnelguard")
    volume.create(rewrite)
    assert volume.entries() == {
        "..2026_11_25_10_01_00.000000001": "dir",
        "..data": "..2026_11_25_10_01_00.000000001",
        "config.yaml": "..data/config.yaml",
    }
    p = sidecar(volume.path)
    (startup,) = await p.wait_for("startup")
    proxy, admin = str(startup["listen"]), str(startup["admin"])
    assert await status_and_verdict(proxy + "/api") == (401, None)  # rewritten
    assert await reload_counts(admin) == {"success": 0, "failure": 0}

    # 1. `kubectl apply` of the ConfigMap with `action: flag`: report-only from now on.
    volume.update(flag)
    assert volume.entries() == {
        "..2026_11_25_10_02_00.000000002": "dir",
        "..data": "..2026_11_25_10_02_00.000000002",
        "config.yaml": "..data/config.yaml",
    }
    (reload,) = await p.wait_for("reload")
    assert reload["result"] == "success" and reload["trigger"] == "watch", reload
    assert await status_and_verdict(proxy + "/api") == (200, "401")  # flagged, delivered as it was
    assert await reload_counts(admin) == {"success": 1, "failure": 0}

    # 2. A rule that does not parse is rejected; the flag config keeps serving.
    volume.update(with_rule(flag, BAD_RULE))
    records = await p.wait_for("reload", 2)
    assert records[-1]["result"] == "failure" and records[-1]["trigger"] == "watch"
    assert "expected a JSON pointer starting with '/'" in str(records[-1]["errors"])
    assert await status_and_verdict(proxy + "/api") == (200, "401")
    assert await reload_counts(admin) == {"success": 1, "failure": 1}

    # 3. A rule whose false positive the config's own tests catch is rejected too.
    volume.update(with_rule(flag, GREEDY_RULE))
    records = await p.wait_for("reload", 3)
    assert records[-1]["result"] == "failure"
    assert "ordinary JSON is left alone" in str(records[-1]["errors"])
    assert await status_and_verdict(proxy + "/api") == (200, "401")
    assert await reload_counts(admin) == {"success": 1, "failure": 2}

    # 4. Back to the ConfigMap as shipped: rewriting again.
    volume.update(rewrite)
    records = await p.wait_for("reload", 4)
    assert records[-1]["result"] == "success"
    assert await status_and_verdict(proxy + "/api") == (401, None)
    assert await reload_counts(admin) == {"success": 2, "failure": 2}
    assert len([e for e in volume.entries() if e.startswith("..2026")]) == 1

    # 5. Pod deletion with the ConfigMap's drain (delay 5 s, timeout 25 s): not ready at
    #    once, still serving during the delay, exit 0 well within the grace period (40 s).
    stopped = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    await p.wait_for("draining")
    async with aiohttp.ClientSession() as s, s.get(admin + "/readyz") as r:
        assert r.status == 503
    assert await status_and_verdict(proxy + "/api") == (401, None)
    code = await asyncio.to_thread(p.proc.wait, 40)
    elapsed = time.monotonic() - stopped
    assert code == 0
    assert 5 <= elapsed < 40, elapsed
