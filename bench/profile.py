#!/usr/bin/env python3
"""Profile tunnelguard under load: where does the CPU go, per request?

Starts the upstream nginx (the bench's files) and one tunnelguard (embedded default), pinned
like bench/run.py (proxy on one CPU, wrk and the upstream on the other), loads one scenario
with wrk, and samples the proxy with py-spy (`--native` off, 500 Hz) while it runs.  Prints
req/s, the proxy's CPU per request, and the functions with the most samples: self time (the
code running) and inclusive time (the code plus what it called), as a share of all samples.

    python3 bench/profile.py [--scenario a|b|c] [--duration S] [--top N] [--no-spy]

The numbers with py-spy attached are a little lower than without it; `--no-spy` measures the
same cell unprofiled.  Everything is on 127.0.0.1; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import (  # bench/ is not a package
    Processes,
    ensure_tool,
    say,
    start_tunnelguard,
    start_upstream,
    sum_cpu_seconds,
)
from run import Wrk, choose_layout, parse_args, scenarios, write_site


def _aggregate(raw: Path, top: int) -> str:
    """py-spy's raw (collapsed) output -> the top functions by self and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "self %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices="abc", default="a")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-spy", action="store_true")
    args = parser.parse_args()
    layout, notes = choose_layout(parse_args([]))
    for note in notes:
        say(note)
    nginx = ensure_tool("nginx", ["nginx-light", "nginx"], True)
    wrk_path = ensure_tool("wrk", ["wrk"], True)
    beside = Path(sys.executable).parent / "py-spy"  # installed into this Python's (.venv/)
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if nginx is None or wrk_path is None:
        say("nginx and wrk are needed")
        return 1
    if spy is None and not args.no_spy:
        say(f"py-spy is needed ({sys.executable} -m pip install py-spy), or pass --no-spy")
        return 1
    case = {c.key: c for c in scenarios()}[args.scenario]
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tunnelguard-profile-"))
    try:
        www = write_site(tmp, scenarios())
        upstream = start_upstream(nginx, tmp, www, procs, layout, layout.load_cpus)
        tg = start_tunnelguard("tg", "tunnelguard", tmp, upstream, procs, layout, layout.proxy_cpus)
        wrk = Wrk(wrk_path, "", layout)
        url = tg.url + case.path
        wrk.run(url, args.connections, 1, procs)  # warm-up
        sampler = None
        raw = tmp / "profile.txt"
        if not args.no_spy:
            argv = [spy, "record", "--pid", str(tg.proc.pid), "--rate", "500", "--format", "raw"]
            if os.environ.get("PROFILE_NATIVE"):
                argv.append("--native")
            argv += ["--output", str(raw), "--duration", str(args.duration), "--nonblocking"]
            sampler = procs.start(
                "py-spy", argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(0.5)
        cpu0 = sum_cpu_seconds(tg.pids) or 0.0
        m = wrk.run(url, args.connections, args.duration, procs)
        cpu = (sum_cpu_seconds(tg.pids) or 0.0) - cpu0
        if sampler is not None:
            sampler.wait(timeout=args.duration + 30)
        say(
            f"{case.title}: {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
            f"proxy CPU {1e6 * cpu / max(m.requests, 1):.0f} us/request"
            + (" (py-spy attached)" if sampler else "")
        )
        if sampler is not None and raw.exists():
            print(_aggregate(raw, args.top))
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
