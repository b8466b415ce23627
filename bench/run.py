#!/usr/bin/env python3
"""Benchmark harness: a fast upstream served directly vs through tunnelguard.

Three scenarios, each measured direct then proxied, `--repeat` times, medians reported:

  (a) a 200 B tunnelled-error JSON body (Slack-style `ok: false`, rewritten to 401),
  (b) a 16 KiB clean JSON body (buffered and inspected, no match),
  (c) a 1 MiB `application/octet-stream` body (streamed through uninspected).

Upstream: nginx (temp config, 1 worker, keep-alive, no access log); falls back to a minimal
aiohttp upstream.  Load: wrk (fixed threads/connections, `--latency`); falls back to a bounded
aiohttp client loop.  Everything listens on and talks to 127.0.0.1 only.

    python3 bench/run.py [--duration S] [--repeat N]

See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"

STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL bound for every process we start
STARTUP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 600.0
RSS_SAMPLE_INTERVAL_S = 0.1
MAX_RSS_SAMPLES = 100_000
FALLBACK_MAX_REQUESTS = 2_000_000  # bound on the aiohttp load loop, on top of the duration


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    content_type: str
    body: bytes
    proxied_status: int
    inspected: bool

    def unexpected(self, proxied: Measurement) -> int:
        """Proxied responses the load generator saw with a status other than the expected one."""
        if 200 <= self.proxied_status < 400:
            return proxied.non_2xx_3xx
        return proxied.requests - proxied.non_2xx_3xx  # every response should be non-2xx


def _padded_json(doc: dict[str, Any], size: int) -> bytes:
    """`doc` serialized compactly, its "pad" string grown so the result is exactly `size` bytes."""
    doc = dict(doc, pad="")
    base = len(json.dumps(doc, separators=(",", ":")).encode())
    if base > size:
        raise ValueError(f"document is {base} B, larger than {size} B")
    doc["pad"] = "x" * (size - base)
    out = json.dumps(doc, separators=(",", ":")).encode()
    assert len(out) == size, (len(out), size)
    return out


def tunnelled_error_body(size: int = 200) -> bytes:
    doc: dict[str, Any] = {
        "ok": False,
        "error": "invalid_auth",
        "warning": "superfluous_charset",
        "response_metadata": {"warnings": ["superfluous_charset"]},
    }
    return _padded_json(doc, size)


def clean_json_body(size: int = 16 * 1024) -> bytes:
    items: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"ok": True, "error": None, "errors": [], "status": "ok", "items": items}
    i = 0
    while len(json.dumps(doc, separators=(",", ":"))) < size - 300:
        items.append(
            {
                "id": i,
                "name": f"item-{i:05d}",
                "price": round(i * 1.25, 2),
                "active": i % 3 != 0,
                "tags": ["alpha", "beta"] if i % 2 else ["gamma"],
            }
        )
        i += 1
    return _padded_json(doc, size)


def binary_body(size: int = 1024 * 1024) -> bytes:
    return random.Random(20240601).randbytes(size)


def scenarios() -> list[Scenario]:
    return [
        Scenario(
            "a",
            "(a) 200 B tunnelled error -> 401",
            "/a-error.json",
            "application/json",
            tunnelled_error_body(),
            401,
            True,
        ),
        Scenario(
            "b",
            "(b) 16 KiB clean JSON",
            "/b-clean.json",
            "application/json",
            clean_json_body(),
            200,
            True,
        ),
        Scenario(
            "c",
            "(c) 1 MiB octet-stream",
            "/c-blob.bin",
            "application/octet-stream",
            binary_body(),
            200,
            False,
        ),
    ]


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process this harness starts, so `stop_all()` can end each one by PID."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._extra_pids: list[tuple[int, str]] = []  # (pid, cmdline prefix), e.g. nginx workers

    def start(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kwargs)
        self._procs.append((name, proc))
        return proc

    def adopt_children(self, proc: subprocess.Popen[bytes], cmdline_prefix: str) -> None:
        for pid in _children(proc.pid):
            self._extra_pids.append((pid, cmdline_prefix))

    def stop(self, proc: subprocess.Popen[bytes]) -> int | None:
        _terminate(proc)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for _name, proc in reversed(self._procs):
            _terminate(proc)
        self._procs.clear()
        for pid, prefix in self._extra_pids:
            if _cmdline(pid).startswith(prefix):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self._extra_pids.clear()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_GRACE_S)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- tools


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tool(binary: str, packages: Sequence[str], allow_install: bool) -> str | None:
    """The tool's path; if missing, try `apt-get install -y PACKAGE` (root only)."""
    found = find_binary(binary)
    if found or not allow_install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def install(package: str) -> bool:
        say(f"# installing {package} with apt-get ...")
        try:
            done = subprocess.run(
                [apt, "install", "-y", "-q", package],
                env=env,
                capture_output=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    for refreshed in (False, True):
        if refreshed:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [apt, "update", "-q"],
                    env=env,
                    capture_output=True,
                    timeout=INSTALL_TIMEOUT_S,
                    check=False,
                )
        for package in packages:
            if install(package) and find_binary(binary):
                return find_binary(binary)
    return None


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


# --------------------------------------------------------------------------- upstreams

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {tmp}/nginx-temp/body;
    proxy_temp_path {tmp}/nginx-temp/proxy;
    fastcgi_temp_path {tmp}/nginx-temp/fastcgi;
    uwsgi_temp_path {tmp}/nginx-temp/uwsgi;
    scgi_temp_path {tmp}/nginx-temp/scgi;
    types {{
        application/json json;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {www};
        location / {{ }}
    }}
}}
"""


@dataclass
class Upstream:
    kind: str  # "nginx" or "aiohttp"
    url: str
    pid: int
    version: str
    note: str = ""


def write_site(tmp: Path, cases: Sequence[Scenario]) -> Path:
    www = tmp / "www"
    www.mkdir()
    for case in cases:
        target = www / case.path.lstrip("/")
        target.write_bytes(case.body)
        target.chmod(0o644)
    # nginx workers may run as an unprivileged user: let them read the site.
    tmp.chmod(0o755)
    www.chmod(0o755)
    return www


def start_nginx(nginx: str, tmp: Path, www: Path, procs: Processes) -> Upstream | None:
    port = free_port()
    (tmp / "nginx-temp").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, www=www, host=HOST, port=port))
    err = tmp / "nginx-error.log"
    argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(err)]
    with open(tmp / "nginx.out", "wb") as out:
        proc = procs.start("nginx", argv, stdout=out, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc, STARTUP_TIMEOUT_S):
        say(f"# nginx did not start: {_tail(err) or _tail(tmp / 'nginx.out')}")
        procs.stop(proc)
        return None
    time.sleep(0.2)  # let the master fork its worker before we record its PID
    procs.adopt_children(proc, "nginx")
    return Upstream("nginx", f"http://{HOST}:{port}", proc.pid, tool_version([nginx, "-v"]))


def start_fallback_upstream(tmp: Path, www: Path, procs: Processes, reason: str) -> Upstream:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(www)]
    argv += ["--serve-port", str(port)]
    log = tmp / "upstream.log"
    with open(log, "wb") as out:
        proc = procs.start("aiohttp-upstream", argv, stdout=out, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc, STARTUP_TIMEOUT_S):
        raise RuntimeError(f"fallback aiohttp upstream did not start: {_tail(log)}")
    import aiohttp

    return Upstream(
        "aiohttp",
        f"http://{HOST}:{port}",
        proc.pid,
        f"aiohttp {aiohttp.__version__}",
        note=f"FALLBACK upstream (aiohttp, not nginx): {reason}",
    )


def serve_upstream(root: Path, port: int) -> None:
    """The fallback upstream (runs in its own process): fixed files, right content types."""
    from aiohttp import web

    types = {".json": "application/json", ".bin": "application/octet-stream"}
    files = {
        f"/{p.name}": (p.read_bytes(), types.get(p.suffix, "application/octet-stream"))
        for p in root.iterdir()
        if p.is_file()
    }

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        found = files.get(request.path)
        if found is None:
            return web.Response(status=404, text="not found")
        body, ctype = found
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def main() -> None:
        server = web.Server(handle, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --------------------------------------------------------------------------- tunnelguard


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    url: str
    admin_url: str
    log: Path


def start_proxy(upstream_url: str, tmp: Path, procs: Processes) -> Proxy:
    argv = [sys.executable, "-m", "proxy", "run", "--upstream", upstream_url]
    argv += ["--listen", f"{HOST}:0", "--admin-listen", f"{HOST}:0"]
    log, err = tmp / "proxy.log", tmp / "proxy.err"
    # stdout (one JSON line per request) goes to a file: it never blocks the proxy.
    with open(log, "wb") as out, open(err, "wb") as errf:
        proc = procs.start("tunnelguard", argv, stdout=out, stderr=errf, cwd=ROOT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(log, "rb") as f:
            for raw in f:
                if b'"startup"' not in raw:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(raw)
                    if record.get("event") == "startup":
                        return Proxy(proc, str(record["listen"]), str(record["admin"]), log)
        if proc.poll() is not None:
            raise RuntimeError(
                f"tunnelguard exited with {proc.returncode} before its startup line:\n"
                f"{_tail(err)}\n{_tail(log)}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"no startup line from tunnelguard within {STARTUP_TIMEOUT_S:.0f}s")


def proc_status_kib(pid: int, key: str) -> int | None:
    """A `kB` field (VmRSS, VmHWM) of /proc/PID/status, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples VmRSS of one PID every RSS_SAMPLE_INTERVAL_S in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL_S):
            value = proc_status_kib(self.pid, "VmRSS")
            if value is None:
                return
            self.peak_kib = max(self.peak_kib, value)
            if len(self.samples) < MAX_RSS_SAMPLES:
                self.samples.append(value)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape_counts(admin_url: str) -> Counter[str]:
    """requests_total by delivered code and inspections_total by result, from /metrics."""
    _status, _headers, body = http_get(admin_url, "/metrics")
    counts: Counter[str] = Counter()
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("tunnelguard_requests_total{"):
            label = "code"
        elif line.startswith("tunnelguard_inspections_total{"):
            label = "result"
        else:
            continue
        labels_text, _, value = line.rpartition("}")
        labels = dict(_LABEL.findall(labels_text))
        with contextlib.suppress(ValueError):
            prefix = "code=" if label == "code" else "inspection="
            counts[prefix + labels.get(label, "?")] += int(float(value.split()[0]))
    return counts


# --------------------------------------------------------------------------- HTTP checks


def http_get(base_url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base_url)
    if parts.hostname != HOST:
        raise ValueError(f"refusing non-loopback target {base_url}")
    conn = http.client.HTTPConnection(HOST, parts.port or 80, timeout=HTTP_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def verify(cases: Sequence[Scenario], direct: str, proxied: str) -> list[str]:
    """One request per scenario, direct and proxied; a list of failures (empty when fine)."""
    failures: list[str] = []
    for case in cases:
        direct_status, headers, body = http_get(direct, case.path)
        ctype = headers.get("content-type", "")
        if direct_status != 200 or body != case.body or not ctype.startswith(case.content_type):
            failures.append(
                f"{case.key} direct: status {direct_status}, {len(body)} B, type {ctype!r}"
            )
        status, headers, body = http_get(proxied, case.path)
        ok = status == case.proxied_status
        if case.proxied_status == 200:
            ok = ok and body == case.body  # byte-exact through the proxy
        verdict = "ok" if ok else "FAILED"
        say(
            f"# verify {case.key}: direct {direct_status} -> proxied {status} "
            f"(want {case.proxied_status}), {len(body)} B, "
            f"{'byte-exact' if body == case.body else 'body differs'}: {verdict}"
        )
        if not ok:
            failures.append(f"{case.key} proxied: status {status}, {len(body)} B")
    return failures


# --------------------------------------------------------------------------- load


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    socket_errors: int = 0
    non_2xx_3xx: int = 0
    proxy_cpu_s: float | None = None
    proxy_rss_peak_kib: int | None = None
    proxy_codes: dict[str, int] = field(default_factory=dict)


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> Measurement:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    pct: dict[str, float] = {}
    for match in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        pct[match.group(1)] = float(match.group(2)) * _UNITS_MS[match.group(3)]
    if rps is None or total is None or "50" not in pct or "99" not in pct:
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return Measurement(
        rps=float(rps.group(1)),
        p50_ms=pct["50"],
        p99_ms=pct["99"],
        requests=int(total.group(1)),
        seconds=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1e3,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


@dataclass(frozen=True)
class LoadGen:
    kind: str  # "wrk" or "aiohttp"
    path: str | None
    connections: int
    threads: int
    version: str
    note: str = ""


def run_load(gen: LoadGen, url: str, duration: int, procs: Processes) -> Measurement:
    if urlsplit(url).hostname != HOST:
        raise ValueError(f"refusing non-loopback target {url}")
    if gen.kind == "wrk":
        assert gen.path is not None
        argv = [gen.path, f"-t{gen.threads}", f"-c{gen.connections}", f"-d{duration}s"]
        argv += ["--latency", "--timeout", f"{HTTP_TIMEOUT_S:.0f}s", url]
        proc = procs.start("wrk", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=duration + 60)
        finally:
            procs.stop(proc)
        return parse_wrk(out.decode(errors="replace"))
    return asyncio.run(
        asyncio.wait_for(aiohttp_load(url, gen.connections, duration), timeout=duration + 60)
    )


async def aiohttp_load(url: str, connections: int, duration: float) -> Measurement:
    """Fallback load: `connections` keep-alive workers, bounded by time and request count."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    non2xx = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def worker() -> None:
            nonlocal errors, non2xx
            while loop.time() < deadline and len(latencies) < FALLBACK_MAX_REQUESTS:
                started = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        async for _chunk in resp.content.iter_chunked(1 << 16):
                            pass
                        if not 200 <= resp.status < 400:
                            non2xx += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return Measurement(
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile(latencies, 50) * 1e3,
        p99_ms=_percentile(latencies, 99) * 1e3,
        requests=len(latencies),
        seconds=elapsed,
        socket_errors=errors,
        non_2xx_3xx=non2xx,
    )


def _percentile(ordered: Sequence[float], pct: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- report


@dataclass
class ScenarioResult:
    scenario: Scenario
    direct: list[Measurement] = field(default_factory=list)
    proxied: list[Measurement] = field(default_factory=list)

    def median(self, side: str, attr: str) -> float:
        runs = self.direct if side == "direct" else self.proxied
        return float(statistics.median(getattr(m, attr) for m in runs))

    def ratio(self, attr: str) -> float:
        direct = self.median("direct", attr)
        return self.median("proxied", attr) / direct if direct else math.nan

    def proxy_codes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for m in self.proxied:
            total.update(m.proxy_codes)
        return total

    def cpu_us_per_request(self) -> float:
        values = [
            m.proxy_cpu_s / m.requests * 1e6
            for m in self.proxied
            if m.proxy_cpu_s is not None and m.requests
        ]
        return float(statistics.median(values)) if values else math.nan

    def rss_peak_kib(self) -> int:
        return max((m.proxy_rss_peak_kib or 0) for m in self.proxied)


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _mib(kib: int | None) -> str:
    return "n/a" if not kib else f"{kib / 1024:.1f} MiB"


def render(
    results: Sequence[ScenarioResult], setup: dict[str, Any], rss: dict[str, int | None]
) -> str:
    lines = [
        "## tunnelguard benchmark",
        "",
        f"- upstream: {setup['upstream']}",
        f"- load: {setup['load']}",
        f"- {setup['duration_s']} s per measurement, {setup['repeat']} repeat(s), "
        f"medians shown; host: {setup['cpus']} CPUs, Python {setup['python']}, "
        f"tunnelguard {setup['tunnelguard']}",
    ]
    lines += [f"- **{note}**" for note in setup["notes"]]
    lines += [
        "",
        "| scenario | direct req/s | proxied req/s | req/s ratio | direct p50 | proxied p50 "
        "| p50 ratio | direct p99 | proxied p99 | p99 ratio |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario.title} "
            f"| {r.median('direct', 'rps'):,.0f} | {r.median('proxied', 'rps'):,.0f} "
            f"| {r.ratio('rps'):.2f} "
            f"| {_ms(r.median('direct', 'p50_ms'))} | {_ms(r.median('proxied', 'p50_ms'))} "
            f"| {r.ratio('p50_ms'):.2f} "
            f"| {_ms(r.median('direct', 'p99_ms'))} | {_ms(r.median('proxied', 'p99_ms'))} "
            f"| {r.ratio('p99_ms'):.2f} |"
        )
    lines += [
        "",
        "| scenario | proxy delivered codes (/metrics) | proxy inspections (/metrics) "
        "| proxy CPU per request | proxy peak VmRSS (sampled) "
        "| socket errors (direct / proxied) | unexpected status (direct / proxied) |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for r in results:
        counts = r.proxy_codes()
        codes = ", ".join(
            f"{k.split('=', 1)[1]}: {v:,}"
            for k, v in sorted(counts.items())
            if k.startswith("code=")
        )
        inspections = ", ".join(
            f"{k.split('=', 1)[1]}: {v:,}"
            for k, v in sorted(counts.items())
            if k.startswith("inspection=")
        )
        errs_d = sum(m.socket_errors for m in r.direct)
        errs_p = sum(m.socket_errors for m in r.proxied)
        bad_d = sum(m.non_2xx_3xx for m in r.direct)
        bad_p = sum(r.scenario.unexpected(m) for m in r.proxied)
        lines.append(
            f"| {r.scenario.title} | {codes or 'n/a'} | {inspections or 'none'} "
            f"| {r.cpu_us_per_request():.0f} us | {_mib(r.rss_peak_kib())} "
            f"| {errs_d} / {errs_p} | {bad_d} / {bad_p} |"
        )
    lines += [
        "",
        f"tunnelguard memory: VmRSS {_mib(rss['idle_kib'])} idle after start-up, "
        f"max sampled VmRSS under load {_mib(rss['sampled_peak_kib'])}, "
        f"**peak RSS (VmHWM) {_mib(rss['hwm_kib'])}**.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark a fast upstream direct vs through tunnelguard (see bench/README.md)."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per side (3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per side (1; 0=off)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--upstream-kind", choices=("auto", "nginx", "aiohttp"), default="auto")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--keep-temp",
        action="store_true",
        help="keep the temp dir (configs, proxy log) for debugging",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    out.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be 1..3600 seconds")
    if not 1 <= args.repeat <= 100:
        parser.error("--repeat must be 1..100")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be 0..60 seconds")
    if not 1 <= args.connections <= 4096 or not 1 <= args.threads <= args.connections:
        parser.error("need 1 <= --threads <= --connections <= 4096")
    return args


def choose_upstream(args: argparse.Namespace, tmp: Path, www: Path, procs: Processes) -> Upstream:
    if args.upstream_kind == "aiohttp":
        return start_fallback_upstream(tmp, www, procs, "requested with --upstream-kind aiohttp")
    nginx = ensure_tool("nginx", ("nginx-light", "nginx"), not args.no_install)
    if nginx is None:
        reason = "nginx is not installed and could not be installed"
    else:
        started = start_nginx(nginx, tmp, www, procs)
        if started is not None:
            return started
        reason = "nginx failed to start"
    if args.upstream_kind == "nginx":
        raise RuntimeError(reason)
    say(f"# {reason}: falling back to an aiohttp upstream")
    return start_fallback_upstream(tmp, www, procs, reason)


def choose_loadgen(args: argparse.Namespace) -> LoadGen:
    wrk = None
    if args.loadgen != "aiohttp":
        wrk = ensure_tool("wrk", ("wrk",), not args.no_install)
    if wrk is not None:
        version = tool_version([wrk, "--version"]).split("[")[0].strip()
        return LoadGen("wrk", wrk, args.connections, args.threads, version)
    if args.loadgen == "wrk":
        raise RuntimeError("wrk is not installed and could not be installed")
    import aiohttp

    note = (
        "FALLBACK load generator (in-process aiohttp client, not wrk): it shares the CPUs and is "
        "itself the bottleneck, so absolute numbers are much lower than with wrk"
    )
    return LoadGen("aiohttp", None, args.connections, 1, f"aiohttp {aiohttp.__version__}", note)


def benchmark(args: argparse.Namespace, procs: Processes, tmp: Path) -> dict[str, Any]:
    cases = scenarios()
    www = write_site(tmp, cases)
    upstream = choose_upstream(args, tmp, www, procs)
    gen = choose_loadgen(args)
    say(f"# upstream: {upstream.kind} at {upstream.url} ({upstream.version})")
    proxy = start_proxy(upstream.url, tmp, procs)
    pid = proxy.proc.pid
    say(f"# tunnelguard pid {pid} at {proxy.url} (admin {proxy.admin_url})")

    failures = verify(cases, upstream.url, proxy.url)
    if failures:
        raise RuntimeError("verification failed: " + "; ".join(failures))
    idle_kib = proc_status_kib(pid, "VmRSS")

    results = [ScenarioResult(case) for case in cases]
    total = len(cases) * args.repeat * 2
    done = 0
    for result in results:
        case = result.scenario
        if args.warmup:
            for base in (upstream.url, proxy.url):
                run_load(gen, base + case.path, args.warmup, procs)
        for rep in range(args.repeat):
            direct = run_load(gen, upstream.url + case.path, args.duration, procs)
            result.direct.append(direct)
            done += 1
            say(
                f"# [{done}/{total}] {case.key} direct  #{rep + 1}: {direct.rps:,.0f} req/s, "
                f"p50 {_ms(direct.p50_ms)}, p99 {_ms(direct.p99_ms)}"
            )
            before, cpu0 = scrape_counts(proxy.admin_url), proc_cpu_seconds(pid)
            with RssSampler(pid).running() as sampler:
                proxied = run_load(gen, proxy.url + case.path, args.duration, procs)
            cpu1, after = proc_cpu_seconds(pid), scrape_counts(proxy.admin_url)
            if proxy.proc.poll() is not None:
                raise RuntimeError(f"tunnelguard exited with {proxy.proc.returncode} under load")
            proxied.proxy_cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
            proxied.proxy_rss_peak_kib = sampler.peak_kib or None
            proxied.proxy_codes = {k: v for k, v in (after - before).items() if v > 0}
            result.proxied.append(proxied)
            done += 1
            say(
                f"# [{done}/{total}] {case.key} proxied #{rep + 1}: {proxied.rps:,.0f} req/s, "
                f"p50 {_ms(proxied.p50_ms)}, p99 {_ms(proxied.p99_ms)}, "
                f"RSS peak {_mib(proxied.proxy_rss_peak_kib)}"
            )

    rss = {
        "idle_kib": idle_kib,
        "sampled_peak_kib": max((r.rss_peak_kib() for r in results), default=0) or None,
        "hwm_kib": proc_status_kib(pid, "VmHWM"),  # read before the proxy is stopped
    }
    notes = [n for n in (upstream.note, gen.note) if n]
    load = (
        f"{gen.version}, {gen.threads} thread(s), {gen.connections} connections"
        + (", --latency" if gen.kind == "wrk" else "")
        + (f", {args.warmup} s warm-up per side" if args.warmup else "")
    )
    setup = {
        "upstream": f"{upstream.kind} ({upstream.version}), fixed files from a temp dir",
        "load": load,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tunnelguard": _tunnelguard_version(),
        "notes": notes,
    }
    return {
        "table": render(results, setup, rss),
        "setup": setup,
        "rss": rss,
        "scenarios": [
            {
                "key": r.scenario.key,
                "title": r.scenario.title,
                "body_bytes": len(r.scenario.body),
                "content_type": r.scenario.content_type,
                "proxied_status": r.scenario.proxied_status,
                "median": {
                    side: {a: r.median(side, a) for a in ("rps", "p50_ms", "p99_ms")}
                    for side in ("direct", "proxied")
                },
                "ratio": {a: r.ratio(a) for a in ("rps", "p50_ms", "p99_ms")},
                "proxy_cpu_us_per_request": r.cpu_us_per_request(),
                "direct": [asdict(m) for m in r.direct],
                "proxied": [asdict(m) for m in r.proxied],
            }
            for r in results
        ],
    }


def _tunnelguard_version() -> str:
    try:
        text = (ROOT / "proxy" / "__init__.py").read_text()
    except OSError:
        return "?"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return match.group(1) if match else "?"


def _finite(value: Any) -> Any:
    """`value` with NaN/inf floats replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that stop our processes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstream is not None:
        if args.serve_port is None:
            raise SystemExit("--serve-upstream needs --serve-port")
        serve_upstream(args.serve_upstream, args.serve_port)
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tunnelguard-bench-"))
    try:
        report = benchmark(args, procs, tmp)
    except RuntimeError as exc:
        say(f"bench: error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("bench: interrupted; stopped every process it started")
        return 130
    finally:
        procs.stop_all()
        if args.keep_temp:
            say(f"# temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    say("")
    say(report["table"])
    if not args.no_json:
        path = args.json or RESULTS_DIR / time.strftime("bench-%Y%m%dT%H%M%S.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in report.items() if k != "table"}
        data["command"] = [Path(sys.argv[0]).name, *sys.argv[1:]]
        path.write_text(json.dumps(_finite(data), indent=2, default=str) + "\n")
        say(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
