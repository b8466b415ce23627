#!/usr/bin/env python3
"""Inspection parsing by numbers (issue 18 point 3): what parsing an inspected body costs
with each JSON parser, on the bench's bodies and on the presets' real bodies.

    python3 -m venv /tmp/pv && /tmp/pv/bin/pip install orjson pysimdjson msgspec pyyaml ...
    /tmp/pv/bin/python bench/parsers.py [--repeat 7]

(run it with an interpreter that has the parsers; the project needs orjson and pysimdjson).
Parsers that are not installed are left out of the table.  Every parser here validates the
whole document (invalid JSON is still found and counted, SPEC 5):

- `orjson.loads`: builds every Python object (what the rules evaluate today);
- `simdjson`: a document on simdjson's tape; objects are built only where the rules look
  (here: the top-level keys the embedded default's presets read), either with `get()` per
  key (a missing key is slow in pysimdjson) or reading `keys()` once and indexing only the
  keys that are there;
- `msgspec.json.decode`: builds every Python object, like orjson;
- "(simdjson parse alone)": the parse with no access at all, for reference: what simdjson
  costs before the rules read anything.

Each parser but the last then reads what the embedded default's presets read at the top
level (`TOP_KEYS`) and walks the top-level keys once (SPEC 4.4's resource test).  What a whole
`decide()` costs, as the product parses: bench/decide.py.

Times are the median of `--repeat` runs of a loop of `--number` parses, per parse, on one
core; the machine is noisy, so compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from run import clean_json_body, tunnelled_error_body  # noqa: E402

# what the embedded default's presets read at the top level of a body (graphql, jsonrpc,
# slack, error-envelope), plus the key walk of the resource test (SPEC 4.4)
TOP_KEYS = ("errors", "data", "jsonrpc", "error", "ok", "success", "status", "message")


def _read_built(doc: object) -> object:
    """What the presets read of a document a parser built whole: TOP_KEYS, then every key."""
    if isinstance(doc, dict):
        for key in TOP_KEYS:
            doc.get(key)
        for _ in doc:
            pass
    return doc


def parsers() -> dict[str, Callable[[bytes], object]]:
    found: dict[str, Callable[[bytes], object]] = {}
    try:
        import orjson

        found["orjson.loads"] = lambda raw: _read_built(orjson.loads(raw))
    except ImportError:
        pass
    try:
        import simdjson

        parser = simdjson.Parser()

        def with_simdjson(raw: bytes) -> object:
            doc = parser.parse(raw)
            if isinstance(doc, simdjson.Object):
                for key in TOP_KEYS:
                    doc.get(key)  # a missing key costs ~2 us: pysimdjson raises inside
                for _ in doc:
                    pass
            return None  # the document lives in the parser until the next parse

        found["simdjson, get() per key"] = with_simdjson
        keyed = simdjson.Parser()

        def with_simdjson_keys(raw: bytes) -> object:
            doc = keyed.parse(raw)
            if isinstance(doc, simdjson.Object):
                present = set(doc.keys())  # once; then only keys that are there are read
                for key in TOP_KEYS:
                    if key in present:
                        doc[key]
            return None

        found["simdjson, keys() once"] = with_simdjson_keys
        bare = simdjson.Parser()
        found["(simdjson parse alone)"] = bare.parse
    except ImportError:
        pass
    try:
        import msgspec

        decoder = msgspec.json.Decoder()
        found["msgspec.json.decode"] = lambda raw: _read_built(decoder.decode(raw))
    except ImportError:
        pass
    return found


def corpus_bodies() -> list[bytes]:
    corpus = ROOT / "tests" / "rules" / "corpus"
    bodies = [e["body"].encode() for e in json.loads((corpus / "bodies.json").read_text())]
    resources = json.loads((corpus / "resources.json").read_text())
    return bodies + [json.dumps(e["body"]).encode() for e in resources]


def per_parse(parse: Callable[[bytes], object], raw: bytes, number: int, repeat: int) -> float:
    """Median microseconds per parse."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            with contextlib.suppress(Exception):  # invalid JSON: found, as SPEC 5 needs
                parse(raw)
        runs.append((time.perf_counter() - started) / number * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    found = parsers()
    if not found:
        sys.exit("no JSON parser installed (orjson, pysimdjson, msgspec)")
    corpus = corpus_bodies()
    rows = [
        ("(a) 200 B tunnelled error", [tunnelled_error_body()], 20000),
        ("(b) 16 KiB clean JSON", [clean_json_body()], 1000),
        (f"the presets' corpus ({len(corpus)} bodies, total per body)", corpus, 20),
    ]
    print("| body | " + " | ".join(found) + " |")
    print("|---|" + "--:|" * len(found))
    for label, bodies, number in rows:
        cells = []
        for parse in found.values():
            total = sum(per_parse(parse, raw, number, args.repeat) for raw in bodies)
            cells.append(f"{total / len(bodies):.2f} µs")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
