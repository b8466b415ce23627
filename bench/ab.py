#!/usr/bin/env python3
"""Compare two checkouts of tunnelguard under the same load: is a change faster?

Starts the bench's upstream nginx and one tunnelguard from each checkout (embedded default
config), pinned like bench/run.py (the proxies on one CPU, wrk and the upstream on the other),
then loads them alternately, A then B, `--repeat` times, and prints each run and the medians:
req/s, the proxy's CPU per request (user + system, from /proc), p50 and p99, and B / A.

    git worktree add /tmp/before HEAD~1
    python3 bench/ab.py /tmp/before . [--scenario a] [--repeat 5] [--duration 4]

Both processes get the same `PYTHONHASHSEED` (`--seed`, default 0): with random seeds, two
processes of the *same* code differed by up to 17 us of CPU per request on this machine,
more than most changes are worth.  Run it with two or three seeds before you trust a
difference of a few percent.  Everything is on 127.0.0.1; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import Processes, ensure_tool, say, start_tunnelguard, start_upstream, sum_cpu_seconds
from run import Measurement, Wrk, choose_layout, parse_args, scenarios, write_site

# What a browser's fetch() to a JSON API sends besides Host (wrk adds Host): what a proxy
# in front of a web app's API sees, where wrk alone sends one header.
BROWSER_HEADERS = (
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36",
    "Accept: application/json, text/plain, */*",
    "Accept-Language: en-US,en;q=0.9",
    "Accept-Encoding: gzip, deflate, br",
    "Referer: https://app.example/dashboard",
    "Origin: https://app.example",
    "Cookie: session=abc123; theme=dark; _ga=GA1.2.3",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2ln",
    "X-Request-Id: 6f1c2a9e-1d2b-4c3d-9e8f-0a1b2c3d4e5f",
    "Connection: keep-alive",
    "Sec-Fetch-Mode: cors",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (the baseline)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("--scenario", choices=("a", "b", "c"), default="a")
    parser.add_argument("--repeat", type=int, default=5, help="runs per side (5)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per run (4)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--seed", default="0", help="PYTHONHASHSEED for both sides (0)")
    parser.add_argument("--workers", type=int, default=1, help="tunnelguard --workers (1)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra request header for every request (repeat it; wrk -H)",
    )
    parser.add_argument(
        "--browser-headers",
        action="store_true",
        help="send the 11 headers a browser's API call carries (see BROWSER_HEADERS)",
    )
    args = parser.parse_args()
    if not (1 <= args.repeat <= 50 and 1 <= args.duration <= 60):
        parser.error("--repeat must be 1..50 and --duration 1..60")
    for root in (args.a, args.b):
        if not (root / "proxy" / "__main__.py").is_file():
            parser.error(f"{root} is not a tunnelguard checkout")

    layout, notes = choose_layout(parse_args([]))
    for note in notes:
        say(note)
    nginx = ensure_tool("nginx", ["nginx-light", "nginx"], True)
    wrk_path = ensure_tool("wrk", ["wrk"], True)
    if nginx is None or wrk_path is None:
        say("nginx and wrk are needed")
        return 1
    case = next(c for c in scenarios() if c.key == args.scenario)
    cpus = layout.wide_cpus if args.workers > 1 else layout.proxy_cpus
    env = {**os.environ, "PYTHONHASHSEED": args.seed}
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="tunnelguard-ab-"))
    try:
        upstream = start_upstream(
            nginx, tmp, write_site(tmp, scenarios()), procs, layout, layout.load_cpus
        )
        sides = {
            name: start_tunnelguard(
                name,
                name,
                tmp,
                upstream,
                procs,
                layout,
                cpus,
                args.workers,
                root=root.resolve(),
                env=env,
            )
            for name, root in (("A", args.a), ("B", args.b))
        }
        headers = [*args.header, *(BROWSER_HEADERS if args.browser_headers else ())]
        wrk = Wrk(wrk_path, "", layout, tuple(headers))
        runs: dict[str, list[tuple[Measurement, float]]] = {name: [] for name in sides}
        for server in sides.values():
            wrk.run(server.url + case.path, args.connections, 1, procs)  # warm-up
        for rep in range(args.repeat):
            for name, server in sides.items():
                pids = server.pids
                before = sum_cpu_seconds(pids) or 0.0
                m = wrk.run(server.url + case.path, args.connections, args.duration, procs)
                cpu_us = ((sum_cpu_seconds(pids) or 0.0) - before) * 1e6 / max(m.requests, 1)
                runs[name].append((m, cpu_us))
                say(
                    f"# {name} #{rep + 1}: {m.rps:,.0f} req/s, {cpu_us:.0f} us CPU/request, "
                    f"p50 {m.p50_ms * 1000:.0f} us, p99 {m.p99_ms * 1000:.0f} us"
                )
        med = {
            name: (
                statistics.median(m.rps for m, _ in rs),
                statistics.median(cpu for _, cpu in rs),
                statistics.median(m.p50_ms for m, _ in rs),
                statistics.median(m.p99_ms for m, _ in rs),
            )
            for name, rs in runs.items()
        }
        print(
            f"\n{case.title}, -c{args.connections}, PYTHONHASHSEED={args.seed}, "
            f"medians of {args.repeat} x {args.duration} s"
            + (f", {len(headers)} extra request headers" if headers else "")
        )
        print("| side | req/s | CPU us/request | p50 | p99 |")
        print("|---|--:|--:|--:|--:|")
        for name, root in (("A", args.a), ("B", args.b)):
            rps, cpu, p50, p99 = med[name]
            print(
                f"| {name} ({root}) | {rps:,.0f} | {cpu:.0f} | {p50 * 1000:.0f} us "
                f"| {p99 * 1000:.0f} us |"
            )
        ratios = [med["B"][i] / med["A"][i] if med["A"][i] else float("nan") for i in range(4)]
        print("| **B / A** | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
        return 0
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
