#!/usr/bin/env python3
"""Benchmark harness: tunnelguard against its peers, per core, in one run.

One fast upstream (nginx serving fixed files) is loaded with wrk, in the same run:

  direct    wrk -> upstream
  nginx     wrk -> nginx `proxy_pass` -> upstream      (plain proxying, the baseline)
  haproxy   wrk -> HAProxy `wait-for-body` + a `res.body` rule -> upstream   (the peer)
  tg        wrk -> tunnelguard -> upstream
  naive     wrk -> bench/naive.py, a ~60-line aiohttp + orjson proxy -> upstream   (the floor)

for three bodies: (a) a 200 B Slack-style tunnelled error (rewritten to 401 by HAProxy,
tunnelguard and the naive proxy), (b) a 16 KiB clean JSON body (inspected, passed), (c) a
1 MiB octet-stream (streamed by all but the naive proxy, which buffers every body); then (a)
at one connection for latency; then tunnelguard `--workers 2` vs 1 worker.  Each proxy is
pinned to one CPU, wrk (and the upstream, and this script) to another.  The report is markdown
tables with medians of `--repeat` runs and a PASS/FAIL table of the targets of issue 9, next to
what the naive proxy reaches in the same run.  Everything listens on and talks to 127.0.0.1
only.

    python3 bench/run.py [--duration S] [--repeat N]

See bench/README.md for the layout and how to read the output.
"""

from __future__ import annotations

import argparse
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # bench/ is not a package: peers.py sits beside this file
    HAPROXY_BUFSIZE,
    HOST,
    ROOT,
    Layout,
    Processes,
    RssSampler,
    Server,
    affinity,
    busy_percent,
    cpu_ticks,
    ensure_tool,
    say,
    start_haproxy,
    start_naive,
    start_nginx_proxy,
    start_tunnelguard,
    start_upstream,
    sum_cpu_seconds,
    sum_kib,
    tool_version,
)

RESULTS_DIR = ROOT / "bench" / "results"
HTTP_TIMEOUT_S = 10.0
WRK_TIMEOUT_S = 10  # wrk's own --timeout: a request slower than this counts as an error

# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    content_type: str
    body: bytes
    inspected_status: int  # what HAProxy's rule and tunnelguard answer


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
        ),
        Scenario(
            "b",
            "(b) 16 KiB clean JSON",
            "/b-clean.json",
            "application/json",
            clean_json_body(),
            200,
        ),
        Scenario(
            "c",
            "(c) 1 MiB octet-stream, streamed",
            "/c-blob.bin",
            "application/octet-stream",
            binary_body(),
            200,
        ),
    ]


def write_site(tmp: Path, cases: Sequence[Scenario]) -> Path:
    www = tmp / "www"
    www.mkdir()
    for case in cases:
        target = www / case.path.lstrip("/")
        target.write_bytes(case.body)
        target.chmod(0o644)
    # nginx workers run as an unprivileged user: let them read the site.
    tmp.chmod(0o755)
    www.chmod(0o755)
    return www


# sides: what wrk is pointed at
DIRECT, NGINX, HAPROXY, TG, TG1W, TG2W = "direct", "nginx", "haproxy", "tg", "tg1w", "tg2w"
NAIVE = "naive"
LABELS = {
    DIRECT: "direct (upstream)",
    NGINX: "nginx proxy_pass",
    HAPROXY: "HAProxy inspect",
    TG: "tunnelguard",
    NAIVE: "naive aiohttp proxy (floor)",
    TG1W: "tunnelguard 1 worker",
    TG2W: "tunnelguard --workers 2",
}
SINGLE_CORE = (DIRECT, NGINX, HAPROXY, TG, NAIVE)  # the sides of the load and latency sections
INSPECTING = {HAPROXY, TG, TG1W, TG2W, NAIVE}  # (a) answers 401 through these


def expected_status(case: Scenario, side: str) -> int:
    return case.inspected_status if side in INSPECTING else 200


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


def verify(cases: Sequence[Scenario], servers: dict[str, Server]) -> list[str]:
    """One request per scenario and side; a list of failures (empty when all answer right).

    Every side must answer the expected status ((a) is 401 through HAProxy, tunnelguard and the
    naive proxy, 200 elsewhere), and every 200 must be the file, byte for byte, with its
    content type."""
    failures: list[str] = []
    for case in cases:
        seen: list[str] = []
        for side, server in servers.items():
            status, headers, body = http_get(server.url, case.path)
            want = expected_status(case, side)
            ok = status == want
            if want == 200:
                ctype = headers.get("content-type", "")
                ok = ok and body == case.body and ctype.startswith(case.content_type)
            seen.append(
                f"{side} {status}{'' if body == case.body else ' (body differs)'}"
                f"{'' if ok else ' FAILED'}"
            )
            if not ok:
                failures.append(f"{case.key} via {side}: status {status} (want {want})")
        say(f"# verify {case.key} ({len(case.body)} B): " + ", ".join(seen))
    return failures


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape_counts(admin_url: str) -> Counter[str]:
    """tunnelguard's requests_total by code and inspections_total by result, from /metrics."""
    _status, _headers, body = http_get(admin_url, "/metrics")
    counts: Counter[str] = Counter()
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("tunnelguard_requests_total{"):
            label, prefix = "code", "code="
        elif line.startswith("tunnelguard_inspections_total{"):
            label, prefix = "result", "inspection="
        else:
            continue
        labels_text, _, value = line.rpartition("}")
        labels = dict(_LABEL.findall(labels_text))
        with contextlib.suppress(ValueError):
            counts[prefix + labels.get(label, "?")] += int(float(value.split()[0]))
    return counts


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
    unexpected_status: int = 0
    proxy_cpu_s: float | None = None  # the measured proxy (all its processes); None for direct
    upstream_cpu_s: float | None = None
    cpu_busy_pct: dict[int, float] = field(default_factory=dict)  # per CPU, all processes
    rss_peak_kib: int | None = None  # the measured proxy, summed over its processes
    proxy_codes: dict[str, int] = field(default_factory=dict)  # tunnelguard's /metrics delta

    @property
    def proxy_cpu_pct(self) -> float:
        if self.proxy_cpu_s is None or not self.seconds:
            return math.nan
        return 100.0 * self.proxy_cpu_s / self.seconds

    @property
    def upstream_cpu_pct(self) -> float:
        if self.upstream_cpu_s is None or not self.seconds:
            return math.nan
        return 100.0 * self.upstream_cpu_s / self.seconds

    @property
    def proxy_us_per_request(self) -> float:
        if self.proxy_cpu_s is None or not self.requests:
            return math.nan
        return 1e6 * self.proxy_cpu_s / self.requests


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
class Wrk:
    path: str
    version: str
    layout: Layout
    headers: tuple[str, ...] = ()  # extra request headers, `Name: value` (wrk -H)

    def run(self, url: str, connections: int, duration: int, procs: Processes) -> Measurement:
        if urlsplit(url).hostname != HOST:
            raise ValueError(f"refusing non-loopback target {url}")
        argv = [self.path, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
        for header in self.headers:
            argv += ["-H", header]
        argv += ["--timeout", f"{WRK_TIMEOUT_S}s", url]
        argv = self.layout.pinned(argv, self.layout.load_cpus)
        proc = procs.start("wrk", argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=duration + WRK_TIMEOUT_S + 30)
        finally:
            procs.stop(proc)
        return parse_wrk(out.decode(errors="replace"))


@dataclass(frozen=True)
class Cell:
    """One thing measured `--repeat` times: a section, a body, a side, a connection count."""

    section: str  # "load", "latency", "workers"
    scenario: Scenario
    side: str
    connections: int

    @property
    def key(self) -> str:
        return f"{self.section}/{self.scenario.key}/{self.side}"


def measure(
    cell: Cell,
    servers: dict[str, Server],
    upstream: Server,
    wrk: Wrk,
    duration: int,
    procs: Processes,
) -> Measurement:
    server = servers[cell.side]
    proxied = cell.side != DIRECT
    proxy_pids = server.pids if proxied else []
    upstream_pids = upstream.pids
    admin = server.admin_url if proxied else None
    codes0 = scrape_counts(admin) if admin else None
    ticks0 = cpu_ticks()
    cpu0 = sum_cpu_seconds(proxy_pids) if proxied else None
    up0 = sum_cpu_seconds(upstream_pids)
    with RssSampler(proxy_pids).running() as sampler:
        m = wrk.run(server.url + cell.scenario.path, cell.connections, duration, procs)
    up1 = sum_cpu_seconds(upstream_pids)
    cpu1 = sum_cpu_seconds(proxy_pids) if proxied else None
    m.cpu_busy_pct = busy_percent(ticks0, cpu_ticks())
    for checked in (server, upstream):
        if not checked.alive():
            raise RuntimeError(f"{checked.label} exited with {checked.proc.returncode} under load")
    if cpu0 is not None and cpu1 is not None:
        m.proxy_cpu_s = cpu1 - cpu0
    if up0 is not None and up1 is not None:
        m.upstream_cpu_s = up1 - up0
    m.rss_peak_kib = sampler.peak_kib or None
    if admin and codes0 is not None:
        m.proxy_codes = {k: v for k, v in (scrape_counts(admin) - codes0).items() if v > 0}
    if expected_status(cell.scenario, cell.side) == 200:
        m.unexpected_status = m.non_2xx_3xx
    else:  # every answer should be non-2xx (401)
        m.unexpected_status = m.requests - m.non_2xx_3xx
    return m


# --------------------------------------------------------------------------- results


class Results:
    def __init__(self) -> None:
        self.runs: dict[str, list[Measurement]] = {}

    def add(self, cell: Cell, m: Measurement) -> None:
        self.runs.setdefault(cell.key, []).append(m)

    def get(self, section: str, scenario: str, side: str) -> list[Measurement]:
        return self.runs.get(f"{section}/{scenario}/{side}", [])

    def median(
        self, section: str, scenario: str, side: str, value: Callable[[Measurement], float]
    ) -> float:
        values = [v for v in map(value, self.get(section, scenario, side)) if not math.isnan(v)]
        return float(statistics.median(values)) if values else math.nan

    def ratio(self, section: str, scenario: str, num: str, den: str, attr: str) -> float:
        top = self.median(section, scenario, num, lambda m: float(getattr(m, attr)))
        bottom = self.median(section, scenario, den, lambda m: float(getattr(m, attr)))
        return top / bottom if bottom and not math.isnan(bottom) else math.nan


def _rps(m: Measurement) -> float:
    return m.rps


def _p50(m: Measurement) -> float:
    return m.p50_ms


def _p99(m: Measurement) -> float:
    return m.p99_ms


def _lat(ms: float) -> str:
    if math.isnan(ms):
        return "n/a"
    if ms < 1:
        return f"{ms * 1000:.0f} us"
    return f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def _num(value: float, spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if math.isnan(value) else f"{value:{spec}}{suffix}"


def _mib(kib: float | None) -> str:
    return "n/a" if kib is None or math.isnan(kib) or not kib else f"{kib / 1024:.1f} MiB"


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of issue 9.  `measured(results, side)` computes it for a single-core side:
    TG for the verdict, NAIVE for the floor column (when `naive` is True)."""

    name: str
    measured: Callable[[Results, str], float]
    limit: float
    at_least: bool  # True: measured >= limit; False: measured <= limit
    unit: str  # "x" or "us"
    reference: str  # issue 9's figure for the naive proxy, measured once on this machine
    naive: bool = True  # False: the row has no naive counterpart (the --workers rows)


def _added_p50_us(results: Results, side: str) -> float:
    side_p50 = results.median("latency", "a", side, _p50)
    direct_p50 = results.median("latency", "a", DIRECT, _p50)
    return (side_p50 - direct_p50) * 1000


TARGETS = [
    Target(
        "(a) 200 B tunnelled, inspected + rewritten: req/s / HAProxy",
        lambda r, side: r.ratio("load", "a", side, HAPROXY, "rps"),
        0.35,
        True,
        "x",
        "0.18x",
    ),
    Target(
        "(a) 200 B tunnelled: p99 / HAProxy's p99",
        lambda r, side: r.ratio("load", "a", side, HAPROXY, "p99_ms"),
        4.0,
        False,
        "x",
        "10x",
    ),
    Target(
        "(b) 16 KiB clean JSON: req/s / HAProxy",
        lambda r, side: r.ratio("load", "b", side, HAPROXY, "rps"),
        0.30,
        True,
        "x",
        "0.20x",
    ),
    Target(
        "(c) 1 MiB streamed: req/s / nginx proxy_pass",
        lambda r, side: r.ratio("load", "c", side, NGINX, "rps"),
        1.0,
        True,
        "x",
        "0.93x",
    ),
    Target(
        "(c) 1 MiB streamed: req/s / HAProxy",
        lambda r, side: r.ratio("load", "c", side, HAPROXY, "rps"),
        0.6,
        True,
        "x",
        "-",
    ),
    Target(
        "one connection, (a): p50 added over direct",
        lambda r, side: _added_p50_us(r, side),
        200.0,
        False,
        "us",
        "250 us (HAProxy: 60 us)",
    ),
    Target(
        "--workers 2 on both cores / 1 worker, (a) req/s",
        lambda r, _side: r.ratio("workers", "a", TG2W, TG1W, "rps"),
        1.6,
        True,
        "x",
        "-",
        naive=False,
    ),
    Target(
        "--workers 2 on both cores / 1 worker, (b) req/s",
        lambda r, _side: r.ratio("workers", "b", TG2W, TG1W, "rps"),
        1.6,
        True,
        "x",
        "-",
        naive=False,
    ),
]


def _fmt_target(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.0f} us" if unit == "us" else f"{value:.2f}x"


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    rows = []
    for t in TARGETS:
        value = t.measured(results, TG)
        naive = t.measured(results, NAIVE) if t.naive else None
        if math.isnan(value):
            verdict = "n/a"
        else:
            verdict = "PASS" if (value >= t.limit if t.at_least else value <= t.limit) else "FAIL"
        rows.append(
            {
                "target": t.name,
                "measured": value,
                "limit": t.limit,
                "at_least": t.at_least,
                "unit": t.unit,
                "verdict": verdict,
                "naive_measured": naive,  # the naive proxy in this run; None: no such row
                "reference_naive_proxy": t.reference,  # issue 9's figure (static)
            }
        )
    return rows


# --------------------------------------------------------------------------- report


def _busy(runs: Sequence[Measurement], cpus: Sequence[int]) -> str:
    parts = []
    for cpu in cpus:
        values = [m.cpu_busy_pct[cpu] for m in runs if cpu in m.cpu_busy_pct]
        parts.append(f"{statistics.median(values):.0f}%" if values else "n/a")
    return " / ".join(parts)


def _side_rows(
    results: Results, section: str, scenario: str, sides: Sequence[str], cpus: Sequence[int]
) -> list[str]:
    rows = []
    for side in sides:
        runs = results.get(section, scenario, side)
        if not runs:
            continue
        rss = max((m.rss_peak_kib or 0) for m in runs)
        errors = sum(m.socket_errors for m in runs)
        unexpected = sum(m.unexpected_status for m in runs)
        proxied = side != DIRECT

        def med(value: Callable[[Measurement], float], side: str = side) -> float:
            return results.median(section, scenario, side, value)

        cpu = _num(med(lambda m: m.proxy_cpu_pct), ".0f", "%") if proxied else "-"
        per_req = _num(med(lambda m: m.proxy_us_per_request), ".1f") if proxied else "-"
        upstream = _num(med(lambda m: m.upstream_cpu_pct), ".0f", "%")
        rows.append(
            f"| {LABELS[side]} | {_num(med(_rps))} | {_lat(med(_p50))} | {_lat(med(_p99))} "
            f"| {cpu} | {per_req} | {upstream} | {_busy(runs, cpus)} "
            f"| {_mib(rss) if proxied else '-'} | {errors} / {unexpected} |"
        )
    return rows


def _ratio_row(results: Results, section: str, scenario: str, num: str, den: str) -> str:
    def r(attr: str) -> str:
        return _num(results.ratio(section, scenario, num, den, attr), ".2f", "x")

    name = f"**{LABELS[num]} / {LABELS[den]}**"
    per_req = r("proxy_us_per_request")  # CPU per request: the ratio least hurt by noise
    return f"| {name} | **{r('rps')}** | {r('p50_ms')} | {r('p99_ms')} | | {per_req} | | | | |"


def _table_head(cpus: Sequence[int]) -> list[str]:
    cpu_names = " / ".join(f"CPU{c}" for c in cpus) if cpus else "CPUs"
    return [
        f"| side | req/s | p50 | p99 | proxy CPU | proxy CPU us/req | upstream CPU "
        f"| {cpu_names} busy | proxy RSS peak | errors / wrong status |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]


def _codes(runs: Sequence[Measurement]) -> str:
    total: Counter[str] = Counter()
    for m in runs:
        total.update(m.proxy_codes)
    codes = ", ".join(
        f"{k.split('=', 1)[1]}: {v:,}" for k, v in sorted(total.items()) if k.startswith("code=")
    )
    inspections = ", ".join(
        f"{k.split('=', 1)[1]}: {v:,}"
        for k, v in sorted(total.items())
        if k.startswith("inspection=")
    )
    return f"codes {codes or 'n/a'}; inspections {inspections or 'none'}"


def render(
    results: Results,
    cases: Sequence[Scenario],
    setup: dict[str, Any],
    memory: dict[str, dict[str, Any]],
    targets: Sequence[dict[str, Any]],
) -> str:
    cpus: list[int] = setup["cpus_shown"]
    lines = [
        "## tunnelguard vs nginx vs HAProxy (and a naive aiohttp proxy as the floor)",
        "",
        f"- layout: {setup['layout']}",
        f"- load: {setup['load']}",
        f"- {setup['duration_s']} s per measurement, {setup['repeat']} repeat(s), medians "
        f"shown; host: {setup['cpus']} CPUs, Python {setup['python']}",
        "- tunnelguard and the naive proxy: "
        + ("a fresh process for every repeat" if setup.get("fresh") else "one process throughout"),
        f"- {'; '.join(setup['versions'])}",
    ]
    lines += [f"- **{note}**" for note in setup["notes"]]
    lines += [
        "",
        "proxy CPU = CPU time of the proxy's processes / wall time (100% = one core); "
        "upstream CPU likewise for the upstream nginx; CPU busy = all processes on that CPU, "
        "from /proc/stat (other jobs on the machine included); errors = wrk socket errors, "
        "wrong status = answers other than the expected status (401 for (a) through HAProxy, "
        "tunnelguard and the naive proxy, 200 elsewhere), summed over the repeats.",
    ]
    for case in cases:
        lines += ["", f"### {case.title}, {setup['connections']} connections", ""]
        lines += _table_head(cpus)
        lines += _side_rows(results, "load", case.key, SINGLE_CORE, cpus)
        lines.append(_ratio_row(results, "load", case.key, TG, HAPROXY))
        lines.append(_ratio_row(results, "load", case.key, TG, NGINX))
        lines.append(_ratio_row(results, "load", case.key, NAIVE, HAPROXY))
        lines += ["", f"tunnelguard /metrics: {_codes(results.get('load', case.key, TG))}"]

    lines += [
        "",
        "### one connection, (a) 200 B (`wrk -t1 -c1`): latency",
        "",
        "| side | req/s | p50 | p99 | p50 added over direct | req/s / HAProxy |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for side in SINGLE_CORE:
        if not results.get("latency", "a", side):
            continue
        added = "-" if side == DIRECT else _num(_added_p50_us(results, side), ".0f", " us")
        vs_haproxy = _num(results.ratio("latency", "a", side, HAPROXY, "rps"), ".2f", "x")
        lines.append(
            f"| {LABELS[side]} | {_num(results.median('latency', 'a', side, _rps))} "
            f"| {_lat(results.median('latency', 'a', side, _p50))} "
            f"| {_lat(results.median('latency', 'a', side, _p99))} | {added} "
            f"| {vs_haproxy if side != DIRECT else '-'} |"
        )

    if any(results.get("workers", c.key, TG2W) for c in cases):
        lines += [
            "",
            f"### `--workers 2` vs 1 worker, both pinned to {setup['wide_cpus']} "
            f"(wrk and the upstream share {setup['load_cpus']}), {setup['connections']} "
            "connections",
            "",
        ]
        lines += _table_head(cpus)
        for case in cases:
            if not results.get("workers", case.key, TG2W):
                continue
            lines += [f"| *{case.title}* | | | | | | | | | |"]
            lines += _side_rows(results, "workers", case.key, (TG1W, TG2W), cpus)
            lines.append(_ratio_row(results, "workers", case.key, TG2W, TG1W))

    lines += [
        "",
        "### memory (each proxy: VmRSS summed over its processes)",
        "",
        "| proxy | processes | RSS idle (after start) | RSS peak (sampled under load) "
        "| VmHWM (at the end) |",
        "|---|--:|--:|--:|--:|",
    ]
    for side, mem in memory.items():
        lines.append(
            f"| {LABELS.get(side, side)} | {mem['processes']} | {_mib(mem['idle_kib'])} "
            f"| {_mib(mem['peak_kib'])} | {_mib(mem['hwm_kib'])} |"
        )

    lines += [
        "",
        f"### targets (issue 9; from the medians of this run's {setup['repeat']} repeat(s))",
        "",
        "| target | tunnelguard | target | naive aiohttp proxy (this run) | verdict |",
        "|---|--:|--:|--:|---|",
    ]
    for row in targets:
        limit = _fmt_target(row["limit"], row["unit"])
        naive = row["naive_measured"]
        lines.append(
            f"| {row['target']} | {_fmt_target(row['measured'], row['unit'])} "
            f"| {'>=' if row['at_least'] else '<='} {limit} "
            f"| {'-' if naive is None else _fmt_target(naive, row['unit'])} "
            f"| **{row['verdict']}** |"
        )
    references = "; ".join(
        f"{row['target']} {row['reference_naive_proxy']}"
        for row in targets
        if row["reference_naive_proxy"] != "-"
    )
    lines += [
        "",
        "Verdicts are tunnelguard's; the naive column is `bench/naive.py` measured the same way "
        "in this run.  Issue 9's reference figures for its 60-line naive proxy (measured once, "
        f"on a 2-CPU machine, not in this run): {references}.",
    ]
    if setup["repeat"] < 3:
        lines += ["", "(targets are defined on medians of 3 repeats: this run is a quick look)"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark tunnelguard against nginx and HAProxy (see bench/README.md)."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (10)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per cell (3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per cell (1; 0=off)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--proxy-cpu", type=int, help="CPU for the proxies (first allowed CPU)")
    parser.add_argument("--load-cpu", type=int, help="CPU for wrk + upstream (last allowed CPU)")
    parser.add_argument(
        "--haproxy-bufsize",
        type=int,
        default=HAPROXY_BUFSIZE,
        help=f"HAProxy tune.bufsize ({HAPROXY_BUFSIZE}: res.body sees the whole 16 KiB body; "
        "16384, HAProxy's default, sees about 16000 B of it)",
    )
    parser.add_argument("--no-workers", action="store_true", help="skip the --workers 2 section")
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="keep one process per Python proxy for every repeat (default: a fresh one each)",
    )
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temp dir (configs, logs) to debug"
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    out.add_argument("--no-json", action="store_true", help="do not write a JSON file")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be 1..3600 seconds")
    if not 1 <= args.repeat <= 100:
        parser.error("--repeat must be 1..100")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be 0..60 seconds")
    if not 1 <= args.connections <= 4096:
        parser.error("--connections must be 1..4096")
    if not 1024 <= args.haproxy_bufsize <= 1 << 20:
        parser.error("--haproxy-bufsize must be 1024..1048576")
    return args


def require(binary: str, packages: Sequence[str], allow_install: bool) -> str:
    found = ensure_tool(binary, packages, allow_install)
    if found is None:
        hint = "" if allow_install else " (and --no-install was given)"
        raise RuntimeError(
            f"{binary} is missing and could not be installed{hint}: "
            f"apt-get install {' '.join(packages[:1])}"
        )
    return found


def choose_layout(args: argparse.Namespace) -> tuple[Layout, list[str]]:
    notes: list[str] = []
    allowed = sorted(os.sched_getaffinity(0))
    taskset = ensure_tool("taskset", ("util-linux",), not args.no_install)
    proxy_cpu = args.proxy_cpu if args.proxy_cpu is not None else allowed[0]
    load_cpu = args.load_cpu if args.load_cpu is not None else allowed[-1]
    if taskset is None or len(allowed) < 2 or proxy_cpu == load_cpu:
        reason = "taskset is missing" if taskset is None else "fewer than 2 CPUs available"
        notes.append(f"NOT PINNED ({reason}): every process shares every CPU")
        return Layout(None, (), (), ()), notes
    for cpu in (proxy_cpu, load_cpu):
        if cpu not in allowed:
            raise RuntimeError(f"CPU {cpu} is not allowed here (allowed: {allowed})")
    wide = (proxy_cpu, load_cpu)
    if len(allowed) > 2:
        notes.append(f"{len(allowed)} CPUs allowed; only CPUs {proxy_cpu} and {load_cpu} used")
    return Layout(taskset, (proxy_cpu,), (load_cpu,), wide), notes


def plan(cases: Sequence[Scenario], connections: int, workers: bool) -> list[Cell]:
    cells = [Cell("load", case, side, connections) for case in cases for side in SINGLE_CORE]
    cells += [Cell("latency", cases[0], side, 1) for side in SINGLE_CORE]
    if workers:
        cells += [
            Cell("workers", case, side, connections)
            for case in cases
            if case.key in ("a", "b")
            for side in (TG1W, TG2W)
        ]
    return cells


def _rotated(cells: Sequence[Cell], rep: int) -> list[Cell]:
    """Cells of a repeat: groups (same section and body) kept together, the order of the sides
    within each group rotated by the repeat, so no side always runs first or last."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.section, cell.scenario.key), []).append(cell)
    out: list[Cell] = []
    for group in groups.values():
        shift = rep % len(group)
        out += group[shift:] + group[:shift]
    return out


def fresh(
    servers: dict[str, Server],
    starters: dict[str, Callable[[], Server]],
    hwm_kib: dict[str, int],
    procs: Processes,
) -> None:
    """Stop each of `starters`' servers (by PID, after noting its peak memory) and start
    a new one in its place."""
    for side, start in starters.items():
        old = servers[side]
        hwm_kib[side] = max(hwm_kib.get(side, 0), sum_kib(old.pids, "VmHWM") or 0)
        procs.stop(old.proc)
        servers[side] = start()
        servers[side].idle_rss_kib = old.idle_rss_kib  # the table shows the first process's
        say(f"# {servers[side].label}: restarted for this repeat, pids {servers[side].pids}")


def benchmark(args: argparse.Namespace, procs: Processes, tmp: Path) -> dict[str, Any]:
    allow = not args.no_install
    nginx = require("nginx", ("nginx-light", "nginx"), allow)
    haproxy = require("haproxy", ("haproxy",), allow)
    wrk_path = require("wrk", ("wrk",), allow)
    layout, notes = choose_layout(args)
    if layout.taskset is not None:
        # this script (RSS sampling, /metrics scrapes) stays off the proxies' CPU
        os.sched_setaffinity(0, set(layout.load_cpus))
    wrk = Wrk(wrk_path, tool_version([wrk_path, "--version"]).split("[")[0].strip(), layout)

    cases = scenarios()
    www = write_site(tmp, cases)
    upstream = start_upstream(nginx, tmp, www, procs, layout, layout.load_cpus)
    servers: dict[str, Server] = {DIRECT: upstream}
    servers[NGINX] = start_nginx_proxy(nginx, tmp, upstream, procs, layout, layout.proxy_cpus)
    servers[HAPROXY] = start_haproxy(
        haproxy, tmp, upstream, procs, layout, layout.proxy_cpus, args.haproxy_bufsize
    )
    pinned, wide = layout.proxy_cpus, layout.wide_cpus
    # The Python proxies are started afresh for every repeat (`fresh`): one process's
    # speed depends on its hash seed and memory layout (two processes of the same code
    # differed by up to 17 us of CPU per request here), so a median over three processes
    # says more than three runs of one.
    starters: dict[str, Callable[[], Server]] = {
        TG: lambda: start_tunnelguard(TG, LABELS[TG], tmp, upstream, procs, layout, pinned),
        NAIVE: lambda: start_naive(tmp, upstream, procs, layout, pinned),
    }
    if not args.no_workers:
        starters[TG1W] = lambda: start_tunnelguard(
            TG1W, LABELS[TG1W], tmp, upstream, procs, layout, wide
        )
        starters[TG2W] = lambda: start_tunnelguard(
            TG2W, LABELS[TG2W], tmp, upstream, procs, layout, wide, workers=2
        )
    for side, start in starters.items():
        servers[side] = start()
    for side, server in servers.items():
        pids = server.pids
        server.idle_rss_kib = sum_kib(pids, "VmRSS") if side != DIRECT else None
        say(
            f"# {server.label}: {server.url}, pids {pids}, "
            f"affinity {'; '.join(affinity(p) for p in pids)}"
        )

    failures = verify(cases, servers)
    if failures:
        raise RuntimeError("verification failed: " + "; ".join(failures))
    say("# verified: every side answers the expected status; every 200 is the file, byte-exact")

    cells = plan(cases, args.connections, not args.no_workers)
    estimate = len(cells) * (args.warmup + args.repeat * args.duration) * 1.05 + 5
    say(
        f"# {len(cells)} cells x {args.repeat} repeat(s) x {args.duration} s "
        f"(+ {args.warmup} s warm-up each): about {estimate / 60:.1f} min"
    )
    if args.warmup:
        for cell in cells:
            wrk.run(
                servers[cell.side].url + cell.scenario.path, cell.connections, args.warmup, procs
            )

    results = Results()
    total = len(cells) * args.repeat
    done = 0
    hwm_kib: dict[str, int] = {}  # the highest VmHWM of each side's processes so far
    for rep in range(args.repeat):
        if rep and not args.same_process:
            fresh(servers, starters, hwm_kib, procs)
            failures = verify(cases, {side: servers[side] for side in starters})
            if failures:
                raise RuntimeError("verification failed: " + "; ".join(failures))
            if args.warmup:
                for cell in cells:
                    if cell.side in starters:
                        url = servers[cell.side].url + cell.scenario.path
                        wrk.run(url, cell.connections, args.warmup, procs)
        for cell in _rotated(cells, rep):
            m = measure(cell, servers, upstream, wrk, args.duration, procs)
            results.add(cell, m)
            done += 1
            proxy = f", proxy CPU {m.proxy_cpu_pct:.0f}%" if m.proxy_cpu_s is not None else ""
            say(
                f"# [{done}/{total}] {cell.section} {cell.scenario.key} {cell.side:7} "
                f"c{cell.connections} #{rep + 1}: {m.rps:,.0f} req/s, p50 {_lat(m.p50_ms)}, "
                f"p99 {_lat(m.p99_ms)}{proxy}"
            )

    memory: dict[str, dict[str, Any]] = {}
    for side, server in servers.items():
        if side == DIRECT:
            continue
        pids = server.pids
        peak = [
            m.rss_peak_kib or 0
            for key, runs in results.runs.items()
            if key.endswith("/" + side)
            for m in runs
        ]
        memory[side] = {
            "processes": len(pids),
            "idle_kib": server.idle_rss_kib,
            "peak_kib": max(peak, default=0) or None,
            # read before the proxies are stopped; the highest of the side's processes
            "hwm_kib": max(sum_kib(pids, "VmHWM") or 0, hwm_kib.get(side, 0)) or None,
        }

    targets = evaluate_targets(results)
    versions = [f"{upstream.version} (upstream and proxy_pass)"]
    versions += [
        f"{servers[HAPROXY].version} (tune.bufsize {args.haproxy_bufsize})",
        wrk.version,
        servers[TG].version,
        servers[NAIVE].version,
    ]
    if layout.taskset is not None:
        layout_text = (
            f"proxies (nginx proxy_pass: 1 worker; HAProxy: nbthread 1; tunnelguard: 1 worker; "
            f"the naive aiohttp proxy: 1 process) "
            f"pinned to CPU {layout.proxy_cpus[0]}; wrk -t1, the upstream nginx (1 worker) and "
            f"this script pinned to CPU {layout.load_cpus[0]}; the --workers section pins "
            f"tunnelguard to CPUs {','.join(map(str, layout.wide_cpus))}"
        )
    else:
        layout_text = "unpinned"
    setup = {
        "layout": layout_text,
        "proxy_cpus": list(layout.proxy_cpus),
        "load_cpus": "CPU " + ",".join(map(str, layout.load_cpus)),
        "wide_cpus": "CPUs " + ",".join(map(str, layout.wide_cpus)),
        "cpus_shown": sorted(set(layout.proxy_cpus) | set(layout.load_cpus)),
        "load": f"{wrk.version}, -t1, -c{args.connections} (and -c1 for latency), --latency"
        + (f", {args.warmup} s warm-up per cell" if args.warmup else ""),
        "connections": args.connections,
        "duration_s": args.duration,
        "repeat": args.repeat,
        "fresh": not args.same_process and args.repeat > 1,
        "warmup_s": args.warmup,
        "haproxy_bufsize": args.haproxy_bufsize,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "notes": notes,
        "configs": {
            server.key: server.config.read_text()
            for server in servers.values()
            if server.config is not None
        },
    }
    return {
        "table": render(results, cases, setup, memory, targets),
        "setup": setup,
        "memory": memory,
        "targets": targets,
        "cells": [
            {
                "section": cell.section,
                "scenario": cell.scenario.key,
                "title": cell.scenario.title,
                "side": cell.side,
                "connections": cell.connections,
                "median": {
                    name: results.median(cell.section, cell.scenario.key, cell.side, fn)
                    for name, fn in (("rps", _rps), ("p50_ms", _p50), ("p99_ms", _p99))
                },
                "runs": [
                    dict(
                        asdict(m),
                        proxy_cpu_pct=m.proxy_cpu_pct,
                        proxy_us_per_request=m.proxy_us_per_request,
                        upstream_cpu_pct=m.upstream_cpu_pct,
                    )
                    for m in results.get(cell.section, cell.scenario.key, cell.side)
                ],
            }
            for cell in cells
        ],
    }


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
