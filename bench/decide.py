#!/usr/bin/env python3
"""Inspection parsing by numbers, the whole path (issue 18 point 3): what one `decide()`
costs with the embedded default's rules (proxy/default.yaml), per body, with each way of
parsing it.

    python3 bench/decide.py [--repeat 7] [--sizes 400,2048,16384,...] [--quick]

(run it with the project's interpreter; it needs pysimdjson, a dependency).  Three columns:

- `orjson`: every body parsed by orjson, every object built (the product before);
- `view`: every body read through a simdjson view (proxy/wire/jsondoc.py), whatever its size
  or shape, orjson only where simdjson refuses the text;
- `as shipped`: `inspection.parse_for_rules` as it routes bodies: small ones (under
  `LAZY_FROM_BYTES`) and top-level arrays (batches) to orjson, the rest to a view.

Rows: the bench's bodies (a) and (b) (bench/run.py), the presets' corpus (tests/rules/corpus,
mean per body), and four shapes at growing sizes: the clean body of (b), the Slack error of (a)
padded with one long string, a JSON-RPC batch, a GraphQL partial result (errors beside a large
`data`).  Times are the median of `--repeat` runs of a loop, per `decide()`, on one core;
the machine is noisy, so compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from parsers import corpus_bodies  # noqa: E402
from run import clean_json_body, tunnelled_error_body  # noqa: E402

from proxy.config.load import load_default  # noqa: E402
from proxy.rules import inspection as ins  # noqa: E402
from proxy.rules.decide import decide  # noqa: E402
from proxy.rules.snapshot import build  # noqa: E402

RUNTIME = build(load_default("http://127.0.0.1:3000"))
RULES = RUNTIME.routes[0].rules
HEADERS = [("Content-Type", "application/json")]
NEVER = re.compile(rb"(?!)")


@contextmanager
def parsing(mode: str) -> Iterator[None]:
    """`decide()` with bodies parsed the `mode` way (see the module's docstring)."""
    saved = ins.parse_for_rules, ins.LAZY_FROM_BYTES, ins._BATCH
    if mode == "orjson":
        ins.parse_for_rules = ins.parse_json
    elif mode == "view":
        ins.LAZY_FROM_BYTES, ins._BATCH = 0, NEVER
    try:
        yield
    finally:
        ins.parse_for_rules, ins.LAZY_FROM_BYTES, ins._BATCH = saved


MODES = ("orjson", "view", "as shipped")


def per_decide(raw: bytes, repeat: int) -> float:
    """Median microseconds per `decide()` of `raw`."""

    def once() -> None:
        decide(
            RULES, RUNTIME.inspect, 200, HEADERS, raw, "application/json", (),
            fallback_retry_after=5, trace_id="0" * 32,
        )  # fmt: skip

    once()  # warm: the first decide() of a body builds caches (a parser's buffers, ...)
    number = max(5, int(0.02 / (timeit.timeit(once, number=5) / 5)))  # ~20 ms per run
    return statistics.median(timeit.repeat(once, number=number, repeat=repeat)) / number * 1e6


def jsonrpc_batch(size: int) -> bytes:
    items: list[object] = []
    while len(json.dumps(items)) < size:
        i = len(items)
        items.append({"jsonrpc": "2.0", "id": i, "result": {"value": i * 3, "name": f"n{i}"}})
    return json.dumps(items, separators=(",", ":")).encode()


def graphql_partial(size: int) -> bytes:
    data = json.loads(clean_json_body(size))["items"]
    error = {"message": "x", "path": ["items", 3], "extensions": {"code": "NOT_FOUND"}}
    return json.dumps({"data": {"items": data}, "errors": [error]}).encode()


SHAPES: dict[str, Callable[[int], bytes]] = {
    "clean JSON, as (b)": clean_json_body,
    "Slack error, as (a), padded": tunnelled_error_body,
    "JSON-RPC batch": jsonrpc_batch,
    "GraphQL partial result": graphql_partial,
}


def row(label: str, bodies: list[bytes], repeat: int) -> str:
    cells = []
    for mode in MODES:
        with parsing(mode):
            cells.append(sum(per_decide(b, repeat) for b in bodies) / len(bodies))
    ratio = cells[2] / cells[0]
    return f"| {label} | " + " | ".join(f"{c:.2f} µs" for c in cells) + f" | {ratio:.2f}x |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--sizes", default="400,1024,2048,4096,16384,65536,1048576")
    ap.add_argument("--quick", action="store_true", help="the bench's bodies and corpus only")
    args = ap.parse_args()
    corpus = corpus_bodies()
    print(f"decide(), embedded default rules; LAZY_FROM_BYTES = {ins.LAZY_FROM_BYTES}")
    print()
    print("| body | " + " | ".join(MODES) + " | as shipped / orjson |")
    print("|---|--:|--:|--:|--:|")
    print(row("(a) 200 B tunnelled error", [tunnelled_error_body()], args.repeat), flush=True)
    print(row("(b) 16 KiB clean JSON", [clean_json_body()], args.repeat), flush=True)
    label = f"the presets' corpus ({len(corpus)} bodies, mean per body)"
    print(row(label, corpus, max(3, args.repeat // 2)), flush=True)
    if args.quick:
        return
    for name, make in SHAPES.items():
        for size in (int(s) for s in args.sizes.split(",")):
            raw = make(size)
            print(row(f"{name}, {len(raw):,} B", [raw], args.repeat), flush=True)


if __name__ == "__main__":
    main()
