"""The processes `bench/run.py` measures: the upstream and the four proxies, pinned to CPUs.

- the **upstream**: nginx serving fixed files (1 worker, keep-alive, no access log, sendfile);
- **nginx `proxy_pass`**: a second nginx instance, the baseline for plain proxying;
- **HAProxy** with `http-response wait-for-body` and a `res.body` rule that sets 401 on a
  Slack-style `"ok":false` + `invalid_auth` body: the peer that can do tunnelguard's job;
- **tunnelguard** from this checkout (`python3 -m proxy run`, 1 worker or `--workers N`);
- the **naive proxy** (`bench/naive.py`, aiohttp + orjson, every body buffered): the floor.

Also: installing missing Debian packages, stopping every started process by PID, and reading
CPU time and memory from /proc.  Not a module of the project: only the bench scripts import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL bound for every process we start
STARTUP_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 600.0
RSS_SAMPLE_INTERVAL_S = 0.1


def say(message: str) -> None:
    print(message, flush=True)


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
        """Remember `proc`'s children, to SIGKILL them should `proc` die without them."""
        for pid in descendants(proc.pid):
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


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (children of all its threads, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                text = Path(f"/proc/{current}/task/{tid}/children").read_text()
            except OSError:
                continue
            for child in (int(p) for p in text.split()):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


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


def tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- tools


def find_binary(name: str) -> str | None:
    """Like `command -v`, also looking in the sbin directories a non-login PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tool(binary: str, packages: Sequence[str], allow_install: bool) -> str | None:
    """The tool's path; only if it is missing, `apt-get install -y PACKAGE` (root only)."""
    found = find_binary(binary)
    if found or not allow_install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def apt_get(*args: str) -> bool:
        try:
            done = subprocess.run(
                [apt, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    for refreshed in (False, True):  # try the package lists as they are, then `apt-get update`
        if refreshed:
            say("# apt-get update ...")
            apt_get("update", "-q")
        for package in packages:
            say(f"# installing {package} with apt-get (no {binary} found) ...")
            if apt_get("install", "-y", "-q", "--no-install-recommends", package):
                found = find_binary(binary)
                if found:
                    return found
    return None


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


# --------------------------------------------------------------------------- CPU pinning


@dataclass(frozen=True)
class Layout:
    """Which CPUs each process may use; `taskset` None means nothing is pinned."""

    taskset: str | None
    proxy_cpus: tuple[int, ...]  # the proxy under test
    load_cpus: tuple[int, ...]  # wrk, the upstream nginx and this harness
    wide_cpus: tuple[int, ...]  # tunnelguard in the `--workers` comparison

    def pinned(self, argv: Sequence[str], cpus: Sequence[int]) -> list[str]:
        if self.taskset is None or not cpus:
            return list(argv)
        return [self.taskset, "-c", ",".join(str(c) for c in cpus), *argv]

    def describe(self, cpus: Sequence[int]) -> str:
        if self.taskset is None:
            return "unpinned"
        return "CPU " + ",".join(str(c) for c in cpus)


def affinity(pid: int) -> str:
    """The CPUs `pid` may run on, as the kernel sees it (to prove the pinning took)."""
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return "?"


# --------------------------------------------------------------------------- /proc readers


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


def sum_kib(pids: Sequence[int], key: str) -> int | None:
    values = [v for v in (proc_status_kib(p, key) for p in pids) if v is not None]
    return sum(values) if values else None


def sum_cpu_seconds(pids: Sequence[int]) -> float | None:
    values = [v for v in (proc_cpu_seconds(p) for p in pids) if v is not None]
    return sum(values) if values else None


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat; busy excludes idle and iowait."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values[:8]]
        total = sum(numbers)
        out[int(name[3:])] = (total - numbers[3] - numbers[4], total)
    return out


def busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[int, float]:
    out: dict[int, float] = {}
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (busy1, total1))
        if total1 > total0:
            out[cpu] = 100.0 * (busy1 - busy0) / (total1 - total0)
    return out


class RssSampler:
    """Samples the summed VmRSS of some PIDs every `interval` seconds in a thread."""

    def __init__(self, pids: Sequence[int], interval: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        value = sum_kib(self.pids, "VmRSS")
        if value is not None:
            self.peak_kib = max(self.peak_kib, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._sample()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sample()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One started server: the upstream or a proxy."""

    key: str  # "upstream", "nginx", "haproxy", "tg", "tg1w", "tg2w", "naive"
    label: str
    url: str
    proc: subprocess.Popen[bytes]
    version: str
    cpus: str  # the pinning, as described in the output
    config: Path | None = None  # its config file (for the naive proxy: its source)
    admin_url: str | None = None  # tunnelguard only
    idle_rss_kib: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        """The server's process and its descendants (nginx workers, tunnelguard workers)."""
        return [self.proc.pid, *descendants(self.proc.pid)]

    def alive(self) -> bool:
        return self.proc.poll() is None


def _log_files(tmp: Path, name: str) -> tuple[Path, Path]:
    return tmp / f"{name}.out", tmp / f"{name}.err"


NGINX_HEAD = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {dir}/temp/body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;
"""

UPSTREAM_NGINX_CONF = (
    NGINX_HEAD
    + """\
    sendfile on;
    tcp_nopush on;
    types {{
        application/json json;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port} backlog=4096;
        root {www};
        location / {{ }}
    }}
}}
"""
)

# Plain proxying: upstream keep-alive, HTTP/1.1 to the upstream, proxy_buffering left at its
# default (on), so nginx buffers (and for large bodies may spill to its temp dir) as it does
# out of the box.
PROXY_NGINX_CONF = (
    NGINX_HEAD
    + """\
    upstream backend {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
)

# The same job as tunnelguard's `slack` preset, in HAProxy 2.6 syntax: for JSON responses wait
# for the body (up to 1 s, until 16 KiB or the whole body or a full buffer has arrived), then set
# 401 when it contains `"ok":false` and `invalid_auth`.  Other content types (the 1 MiB
# octet-stream) are streamed without waiting, as tunnelguard skips them.  No `log` line: no
# logging, like nginx's `access_log off`.  `res.body` only sees what fits in one buffer: with
# the default tune.bufsize (16384) that is about 16000 B of body (the headers share the buffer),
# so the 16 KiB body would be inspected only in part; HAPROXY_BUFSIZE (32768) lets HAProxy see
# all of it, like tunnelguard.
HAPROXY_BUFSIZE = 32768
HAPROXY_CONF = """\
global
    nbthread 1
    tune.bufsize {bufsize}
    maxconn 4096
    pidfile {dir}/haproxy.pid
defaults
    mode http
    maxconn 4096
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s
    option http-keep-alive
    http-reuse always
frontend fe
    bind {host}:{port}
    default_backend be
backend be
    acl json res.hdr(content-type) -m beg application/json
    http-response wait-for-body time 1s at-least 16k if json
    http-response set-status 401 if json {{ res.body -m sub "\\"ok\\":false" }} \
{{ res.body -m sub invalid_auth }}
    server upstream {upstream} maxconn 4096
"""


def _start_nginx(
    key: str,
    label: str,
    nginx: str,
    conf_text: str,
    tmp: Path,
    port: int,
    procs: Processes,
    layout: Layout,
    cpus: Sequence[int],
) -> Server:
    directory = tmp / key
    (directory / "temp").mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    conf = directory / "nginx.conf"
    conf.write_text(conf_text)
    out, _err = _log_files(tmp, key)
    argv = layout.pinned([nginx, "-p", str(directory), "-c", str(conf)], cpus)
    argv += ["-e", str(directory / "error.log")]
    with open(out, "wb") as stdout:
        proc = procs.start(key, argv, stdout=stdout, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc, STARTUP_TIMEOUT_S):
        procs.stop(proc)
        raise RuntimeError(f"{label} did not start: {tail(directory / 'error.log') or tail(out)}")
    time.sleep(0.2)  # let the master fork its worker before we record its PID
    procs.adopt_children(proc, "nginx")
    return Server(
        key,
        label,
        f"http://{HOST}:{port}",
        proc,
        tool_version([nginx, "-v"]),
        layout.describe(cpus),
        config=conf,
    )


def start_upstream(
    nginx: str, tmp: Path, www: Path, procs: Processes, layout: Layout, cpus: Sequence[int]
) -> Server:
    port = free_port()
    directory = tmp / "upstream"
    text = UPSTREAM_NGINX_CONF.format(dir=directory, host=HOST, port=port, www=www)
    return _start_nginx("upstream", "upstream nginx", nginx, text, tmp, port, procs, layout, cpus)


def start_nginx_proxy(
    nginx: str,
    tmp: Path,
    upstream: Server,
    procs: Processes,
    layout: Layout,
    cpus: Sequence[int],
) -> Server:
    port = free_port()
    directory = tmp / "nginx"
    address = upstream.url.removeprefix("http://")
    text = PROXY_NGINX_CONF.format(dir=directory, host=HOST, port=port, upstream=address)
    return _start_nginx("nginx", "nginx proxy_pass", nginx, text, tmp, port, procs, layout, cpus)


def start_haproxy(
    haproxy: str,
    tmp: Path,
    upstream: Server,
    procs: Processes,
    layout: Layout,
    cpus: Sequence[int],
    bufsize: int = HAPROXY_BUFSIZE,
) -> Server:
    port = free_port()
    directory = tmp / "haproxy"
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "haproxy.cfg"
    address = upstream.url.removeprefix("http://")
    conf.write_text(
        HAPROXY_CONF.format(dir=directory, host=HOST, port=port, upstream=address, bufsize=bufsize)
    )
    check = subprocess.run(
        [haproxy, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(
            f"HAProxy rejects the config (needs >= 2.4 for wait-for-body):\n"
            f"{(check.stdout + check.stderr).strip()}"
        )
    out, _err = _log_files(tmp, "haproxy")
    argv = layout.pinned([haproxy, "-db", "-f", str(conf)], cpus)
    with open(out, "wb") as stdout:
        proc = procs.start("haproxy", argv, stdout=stdout, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc, STARTUP_TIMEOUT_S):
        procs.stop(proc)
        raise RuntimeError(f"HAProxy did not start: {tail(out)}")
    return Server(
        "haproxy",
        "HAProxy wait-for-body + rule",
        f"http://{HOST}:{port}",
        proc,
        tool_version([haproxy, "-v"]).split(" - ")[0],
        layout.describe(cpus),
        config=conf,
    )


def start_tunnelguard(
    key: str,
    label: str,
    tmp: Path,
    upstream: Server,
    procs: Processes,
    layout: Layout,
    cpus: Sequence[int],
    workers: int = 1,
    *,
    root: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Server:
    """tunnelguard from the checkout `root` (this one by default), with `env` if given."""
    argv = [sys.executable, "-m", "proxy", "run", "--upstream", upstream.url]
    argv += ["--listen", f"{HOST}:0", "--admin-listen", f"{HOST}:0"]
    if workers != 1:
        argv += ["--workers", str(workers)]
    log, err = _log_files(tmp, key)
    # stdout (one JSON line per request) goes to a file: it never blocks the proxy.
    with open(log, "wb") as out, open(err, "wb") as errf:
        proc = procs.start(
            key, layout.pinned(argv, cpus), stdout=out, stderr=errf, cwd=root, env=env
        )
    record = wait_for_startup(proc, log, err, label)
    if workers > 1:
        procs.adopt_children(proc, sys.executable)
    return Server(
        key,
        label,
        str(record["listen"]),
        proc,
        tunnelguard_version(),
        layout.describe(cpus),
        admin_url=str(record["admin"]),
        extra={"workers": workers},
    )


def wait_for_startup(
    proc: subprocess.Popen[bytes], log: Path, err: Path, label: str
) -> dict[str, Any]:
    """tunnelguard's `startup` event (with its `listen` and `admin` URLs), read from `log`,
    the file its stdout goes to; RuntimeError if it exits or says nothing in time."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(log, "rb") as f:
            for raw in f:
                if b'"startup"' not in raw:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(raw)
                    if isinstance(record, dict) and record.get("event") == "startup":
                        return record
        if proc.poll() is not None:
            raise RuntimeError(
                f"{label} exited with {proc.returncode} before its startup line:\n"
                f"{tail(err)}\n{tail(log)}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"no startup line from {label} within {STARTUP_TIMEOUT_S:.0f}s")


NAIVE_SCRIPT = Path(__file__).resolve().with_name("naive.py")


def start_naive(
    tmp: Path,
    upstream: Server,
    procs: Processes,
    layout: Layout,
    cpus: Sequence[int],
) -> Server:
    """`bench/naive.py` (one process, uvloop when importable) in front of `upstream`."""
    port = free_port()
    argv = [sys.executable, str(NAIVE_SCRIPT), "--upstream", upstream.url]
    argv += ["--listen", f"{HOST}:{port}"]
    out, _err = _log_files(tmp, "naive")
    with open(out, "wb") as stdout:
        proc = procs.start(
            "naive", layout.pinned(argv, cpus), stdout=stdout, stderr=subprocess.STDOUT
        )
    if not wait_for_port(port, proc, STARTUP_TIMEOUT_S):
        procs.stop(proc)
        raise RuntimeError(f"the naive proxy did not start: {tail(out)}")
    return Server(
        "naive",
        "naive aiohttp proxy (floor)",
        f"http://{HOST}:{port}",
        proc,
        _naive_version(),
        layout.describe(cpus),
        config=NAIVE_SCRIPT,
    )


def _naive_version() -> str:
    from importlib import metadata

    parts = []
    for name in ("aiohttp", "orjson", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            parts.append(f"{name} {metadata.version(name)}")
    return "naive proxy: " + ", ".join(parts)


def tunnelguard_version() -> str:
    import re

    try:
        text = (ROOT / "proxy" / "__init__.py").read_text()
    except OSError:
        return "tunnelguard ?"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return f"tunnelguard {match.group(1) if match else '?'}"
