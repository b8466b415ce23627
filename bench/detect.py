#!/usr/bin/env python3
"""The suspect-shape detector by numbers (issue 20): what `suspect.detect` costs on one parsed
document, and what one `decide()` costs with discovery on and off, with the embedded
default's rules (proxy/default.yaml).

    python3 bench/detect.py [--repeat 7]

Bodies: (b)'s 16 KiB clean body (bench/run.py; read through a simdjson view, as the proxy
reads it), a 200 B tunnelled error no preset matches (WeChat's `errcode`, padded as (a) is),
and a 200 B clean body.  The detector only runs when no rule matched, so the tunnelled body
here is one the rules pass as clean.  Times are the median of `--repeat` runs of a loop, on
one core; the machine is noisy, so compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from run import _padded_json, clean_json_body  # noqa: E402

from proxy.config.load import load_default  # noqa: E402
from proxy.rules.decide import decide  # noqa: E402
from proxy.rules.inspection import parse_for_rules  # noqa: E402
from proxy.rules.snapshot import build  # noqa: E402
from proxy.rules.suspect import detect  # noqa: E402

RUNTIME = build(load_default("http://127.0.0.1:3000"))
RULES = RUNTIME.routes[0].rules
HEADERS = [("Content-Type", "application/json")]

BODIES = {
    "(b) 16 KiB clean JSON": clean_json_body(),
    "200 B tunnelled (WeChat errcode)": _padded_json(
        {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"}, 200
    ),
    "200 B clean JSON": _padded_json(
        {"id": 7, "name": "item-00007", "status": "active", "tags": ["a", "b"]}, 200
    ),
}


def per_call(call: Callable[[], object], repeat: int) -> float:
    """Median microseconds per call."""
    call()  # warm
    number = max(5, int(0.02 / (timeit.timeit(call, number=5) / 5)))  # ~20 ms per run
    return statistics.median(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print("| body | suspect? | detect() | decide(), discovery off | decide(), on | on - off |")
    print("|---|---|--:|--:|--:|--:|")
    for label, raw in BODIES.items():
        doc = parse_for_rules(raw)
        found = detect(doc)

        def judged(discover: bool, raw: bytes = raw) -> object:
            return decide(
                RULES, RUNTIME.inspect, 200, HEADERS, raw, "application/json", (),
                fallback_retry_after=5, trace_id="0" * 32, discover=discover,
            )  # fmt: skip

        assert judged(False).verdict is None, label  # type: ignore[attr-defined]
        alone = per_call(lambda doc=doc: detect(doc), args.repeat)  # type: ignore[misc]
        off = per_call(lambda: judged(False), args.repeat)
        on = per_call(lambda: judged(True), args.repeat)
        shape = found.shape if found is not None else "no"
        print(
            f"| {label} ({len(raw):,} B) | {shape} | {alone:.2f} µs | {off:.2f} µs "
            f"| {on:.2f} µs | {on - off:+.2f} µs |",
            flush=True,
        )


if __name__ == "__main__":
    main()
