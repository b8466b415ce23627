"""The discovery corpora of issue 20 (SPEC 10), read for tests/rules/test_suspect.py and
tests/system/test_discovery.py; README.md says where each body comes from.

- `discovery_clean.json`: successful bodies of real public APIs (and SPEC 3's ordinary JSON):
  none may be suspect;
- `discovery_tunnelled.json`: errors real APIs answer with 200 that no preset matches, each
  with the markers (`pointer`, `type`, `value`, `status`) the detector must report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from tests.rules.corpus import HERE


@dataclass(frozen=True, slots=True)
class Entry:
    api: str
    source: str
    content_type: str
    body: object  # the JSON value
    raw: bytes  # ... as the upstream sends it
    markers: list[dict[str, object]] | None  # None: clean


def _read(name: str) -> tuple[Entry, ...]:
    found = []
    for e in json.loads((HERE / name).read_text(encoding="utf-8")):
        found.append(
            Entry(
                e["api"], e["source"], e["content_type"], e["body"],
                json.dumps(e["body"], ensure_ascii=False).encode(), e.get("markers"),
            )
        )  # fmt: skip
    return tuple(found)


@cache
def clean() -> tuple[Entry, ...]:
    return _read("discovery_clean.json")


@cache
def tunnelled() -> tuple[Entry, ...]:
    return _read("discovery_tunnelled.json")
