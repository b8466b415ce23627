"""A real Prometheus server, and a real tunnelguard process for it to scrape, for tests.

Both run as child processes on 127.0.0.1 with their output in files under the test's tmp dir
(a pipe nobody reads would fill and block them), and are stopped by PID at teardown: SIGTERM,
then SIGKILL after a bound.  Every wait is a bounded poll, never a fixed sleep.

Use the fixtures from another test module by binding them to module names (pytest collects
fixtures among a module's names; a plain import would trip ruff's F401/F811):

    from . import promstack
    prometheus_server = promstack.prometheus_server

The binaries come from Debian's `prometheus` package, which `scripts/test` installs when it
is missing; a missing binary fails the test instead of skipping it.  The helpers block (HTTP
polls with urllib): from an async test whose event loop serves an upstream, call them through
`asyncio.to_thread`.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_tunnelguard

RULE_FILES = (ROOT / "deploy/prometheus/rules.yml", ROOT / "deploy/prometheus/alerts.yml")
JOB = "tunnelguard"  # the scrape job name, kept by every recording rule
START_TIMEOUT = 20.0  # process start until ready; Prometheus replays an empty TSDB in <1 s
STOP_TIMEOUT = 10.0  # SIGTERM until SIGKILL
POLL_INTERVAL = 0.1

Result = list[dict[str, Any]]  # `data.result` of an instant query


def binary(name: str) -> str:
    """The path of a Prometheus binary; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found: install Debian's `prometheus` package "
            "(bash scripts/test does it when missing)"
        )
    return path


def free_port() -> int:
    """A port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def host_port(target: str) -> str:
    """`http://127.0.0.1:9090` or `127.0.0.1:9090` -> `127.0.0.1:9090`."""
    return urllib.parse.urlsplit(target).netloc if "://" in target else target


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM by PID, SIGKILL after STOP_TIMEOUT; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def sample_value(sample: dict[str, Any]) -> float:
    """The float of one vector sample (`"NaN"`, `"+Inf"` included)."""
    return float(sample["value"][1])


def by_label(result: Result, label: str) -> dict[str, float]:
    """Vector samples keyed by one label's value (absent label -> '')."""
    return {s["metric"].get(label, ""): sample_value(s) for s in result}


def matches(label: str, expected: dict[str, float], rel: float = 1e-9) -> Callable[[Result], bool]:
    """A `wait_for` predicate: keyed by `label`, the samples are exactly `expected` (within
    `rel`; NaN never matches)."""

    def check(result: Result) -> bool:
        got = by_label(result, label)
        return got.keys() == expected.keys() and all(
            math.isclose(got[k], v, rel_tol=rel, abs_tol=rel) for k, v in expected.items()
        )

    return check


@dataclass
class PromServer:
    """A running Prometheus; `url` is its HTTP API base."""

    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET an API path; returns `data` (fails with Prometheus's error message)."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:  # 400/422 carry {"status": "error", "error": ...}
            body = json.load(e)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Result:
        """An instant query through `/api/v1/query`: the `result` list (vector samples
        `{"metric": {...}, "value": [ts, "1.5"]}`; a scalar is wrapped as one sample)."""
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        data = self.api("/api/v1/query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: Result = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The value of a query that returns exactly one sample."""
        result = self.query(expr)
        if len(result) != 1:
            raise AssertionError(f"{expr}: expected one sample, got {result}")
        return sample_value(result[0])

    def wait_for(
        self, expr: str, predicate: Callable[[Result], bool], timeout: float = 20.0
    ) -> Result:
        """Poll `expr` until `predicate(result)` holds; returns that result.  Fails after
        `timeout` seconds (or at once if Prometheus died) with the last result and the log."""
        deadline = time.monotonic() + timeout
        result: Result = []
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"after {timeout}s, {expr} = {result}\n"
                    f"targets: {self.targets()}\nprometheus log:\n{_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health and last error."""
        data = self.api("/api/v1/targets", state="active")
        return [
            {k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")}
            for t in data["activeTargets"]
        ]

    def rules(self) -> list[dict[str, Any]]:
        """Loaded rule groups, as `/api/v1/rules` reports them."""
        groups: list[dict[str, Any]] = self.api("/api/v1/rules")["groups"]
        return groups

    def stop(self) -> int:
        return stop_process(self.proc)


def write_config(
    path: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path] = RULE_FILES,
    interval: str = "1s",
) -> None:
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [host_port(t) for t in targets]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def start_prometheus(
    workdir: Path,
    targets: Sequence[str],
    rule_files: Sequence[Path] = RULE_FILES,
    interval: str = "1s",
) -> PromServer:
    """Start Prometheus scraping `targets` (URLs or host:port) every `interval`, evaluating
    `rule_files` as often; returns once `/-/ready` answers 200.  The caller stops it."""
    exe = binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(config, targets, rule_files, interval)
    for attempt in range(3):  # the free port can be taken before Prometheus binds it
        port = free_port()
        log_path = workdir / f"prometheus-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    exe,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = PromServer(f"http://127.0.0.1:{port}", proc, workdir, log_path)
        if _wait_ready(server):
            return server
        stop_process(proc)
        if "address already in use" not in _tail(log_path, 200):
            break
    raise AssertionError(f"prometheus did not become ready:\n{_tail(server.log_path)}")


def _wait_ready(server: PromServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or 503 while the TSDB opens
        time.sleep(POLL_INTERVAL)
    return False


@dataclass
class TunnelguardProcess:
    """`python -m proxy run` as a child process; its stdout (one JSON line per request) goes
    to `stdout_path`."""

    proc: subprocess.Popen[bytes]
    url: str  # the proxy listener
    admin: str  # the admin listener (scrape target)
    stdout_path: Path
    stderr_path: Path

    def records(self, event: str = "request") -> list[dict[str, Any]]:
        lines = self.stdout_path.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("event") == event]

    def stop(self) -> int:
        return stop_process(self.proc)


def spawn_tunnelguard(workdir: Path, *args: str) -> TunnelguardProcess:
    """Start `python -m proxy run ARGS` and wait for its JSON startup line (bounded); use
    `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`: the line says which ports it got."""
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("tunnelguard-*.out")))
    out, err = workdir / f"tunnelguard-{n}.out", workdir / f"tunnelguard-{n}.err"
    proc = run_tunnelguard(args, out, err)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        exited = proc.poll() is not None  # read after this: a line written before exit counts
        for line in out.read_text().split("\n")[:-1]:  # complete lines only
            record = json.loads(line)
            if record.get("event") == "startup":
                return TunnelguardProcess(proc, record["listen"], record["admin"], out, err)
        if exited:
            raise AssertionError(f"tunnelguard exited {proc.returncode}: {err.read_text()}")
        time.sleep(POLL_INTERVAL)
    stop_process(proc)
    raise AssertionError(f"tunnelguard wrote no startup line: {err.read_text()}")


PrometheusFactory = Callable[..., PromServer]
TunnelguardFactory = Callable[..., TunnelguardProcess]


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """`start(targets, rule_files=RULE_FILES, interval="1s") -> PromServer`; every server
    started is stopped at teardown."""
    servers: list[PromServer] = []

    def start(targets: Sequence[str], **options: Any) -> PromServer:
        server = start_prometheus(tmp_path / f"prometheus-{len(servers)}", targets, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def tunnelguard_process(tmp_path: Path) -> Iterator[TunnelguardFactory]:
    """`start(*run_args) -> TunnelguardProcess`; every process started is stopped at teardown."""
    started: list[TunnelguardProcess] = []

    def start(*args: str) -> TunnelguardProcess:
        tg = spawn_tunnelguard(tmp_path / "tunnelguard", *args)
        started.append(tg)
        return tg

    yield start
    for tg in started:
        tg.stop()
