"""The preset corpora of issue 17, judged by the embedded default's rules (SPEC 3, 4.4).

- `resources.json`: resources that describe a failure (operations, executions, jobs, task
  records, deliveries, payments, CI runs...), each from a public API's documentation
  (`source`): every one must stay clean.
- `bodies.json`: every real body the presets and the example configs were tested with when
  issue 17 began: tunnelled errors (`label: error`), SPEC 3's ordinary JSON (`label:
  clean`), and the bodies a preset's or an example's tests call clean for that preset or
  config alone (`label: other`: not scored, but their verdicts are held too); `before` is
  the embedded default's verdict then, `expect` its verdict now (docs/presets.md, "What is
  not a tunnelled error", says which changed and why).

`score()` gives precision and recall over both, before and now; tests/rules/conftest.py
prints them at the end of every run, so a change to a preset shows what it costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from proxy.config.load import load_default
from proxy.config.model import TestResponse
from proxy.rules.ruletests import simulate
from proxy.rules.snapshot import Runtime, build

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Entry:
    corpus: str  # resources | bodies
    id: str
    label: str  # error | clean
    status: int
    content_type: str
    body: bytes
    before: dict[str, object]  # the embedded default's verdict before issue 17
    expect: dict[str, object]  # ... and now


@cache
def entries() -> tuple[Entry, ...]:
    found: list[Entry] = []
    for e in json.loads((HERE / "resources.json").read_text(encoding="utf-8")):
        found.append(
            Entry(
                "resources", f"{e['api']}: {e['kind']}", "clean", 200, e["content_type"],
                json.dumps(e["body"]).encode(), e["before"], CLEAN,
            )
        )  # fmt: skip
    for e in json.loads((HERE / "bodies.json").read_text(encoding="utf-8")):
        found.append(
            Entry(
                "bodies", e["id"], e["label"], e["status"], e["content_type"],
                e["body"].encode(), e["before"], e["expect"],
            )
        )  # fmt: skip
    return tuple(found)


CLEAN: dict[str, object] = {"status": 200, "rule": None, "action": None}
CORPORA = ("resources", "bodies")


def verdict(entry: Entry) -> dict[str, object]:
    """The embedded default's verdict on `entry` now (the same pure steps as the proxy)."""
    runtime = _runtime()
    route = runtime.routes[0]
    response = TestResponse(entry.status, (("content-type", entry.content_type),), entry.body)
    sim = simulate(route.rules, runtime, response)
    return {"status": sim.status, "rule": sim.rule, "action": sim.action}


@cache
def _runtime() -> Runtime:
    return build(load_default("http://127.0.0.1:3000"))


@dataclass(frozen=True, slots=True)
class Score:
    precision: float
    recall: float
    true_positives: int
    false_positives: int
    false_negatives: int


def score(when: str) -> Score:
    """Precision and recall of the embedded default, `before` issue 17 or `now`: a body is
    judged a tunnelled error when any rule matched it (rewrite or flag)."""
    tp = fp = fn = 0
    for entry in entries():
        if entry.label == "other":
            continue
        judged = entry.before if when == "before" else verdict(entry)
        matched = judged["rule"] is not None
        if matched and entry.label == "error":
            tp += 1
        elif matched:
            fp += 1
        elif entry.label == "error":
            fn += 1
    return Score(tp / max(1, tp + fp), tp / max(1, tp + fn), tp, fp, fn)


def report() -> str:
    counts = {
        corpus: sum(1 for e in entries() if e.corpus == corpus)
        for corpus in ("resources", "bodies")
    }
    apis = len({e.id.split(": ")[0] for e in entries() if e.corpus == "resources"})
    lines = [
        f"preset corpora on the embedded default: {counts['resources']} resources that describe "
        f"a failure ({apis} APIs), {counts['bodies']} bodies "
        f"({sum(1 for e in entries() if e.label == 'error')} tunnelled errors, "
        f"{sum(1 for e in entries() if e.corpus == 'bodies' and e.label == 'clean')} ordinary, "
        f"{sum(1 for e in entries() if e.label == 'other')} clean for one preset or config only)"
    ]
    for when in ("before", "now"):
        s = score(when)
        lines.append(
            f"  {when:>6}: precision {s.precision:.3f}, recall {s.recall:.3f} "
            f"(true positives {s.true_positives}, false positives {s.false_positives}, "
            f"missed {s.false_negatives})"
        )
    return "\n".join(lines)
