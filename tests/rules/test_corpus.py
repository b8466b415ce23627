"""Issue 17's corpora through the embedded default's rules (pure, in process); the same
bodies go through a real proxy process in tests/system/test_corpus.py.  See
tests/rules/corpus/__init__.py for what each corpus holds."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.rules.inspection import LAZY_FROM_BYTES
from tests.rules import corpus

RESOURCES = [e for e in corpus.entries() if e.corpus == "resources"]
BODIES = [e for e in corpus.entries() if e.corpus == "bodies"]


def test_the_corpora_are_as_large_as_issue_17_asks() -> None:
    apis = {e.id.split(": ")[0] for e in RESOURCES}
    assert len(RESOURCES) >= 20 and len(apis) >= 12, (len(RESOURCES), len(apis))
    assert sum(1 for e in BODIES if e.label == "error") >= 200


@pytest.mark.parametrize("entry", RESOURCES, ids=lambda e: e.id)
def test_a_resource_that_describes_a_failure_stays_clean(entry: corpus.Entry) -> None:
    assert corpus.verdict(entry) == corpus.CLEAN


@pytest.mark.parametrize("entry", BODIES, ids=lambda e: e.id)
def test_a_body_keeps_its_verdict(entry: corpus.Entry) -> None:
    assert corpus.verdict(entry) == entry.expect


@pytest.mark.parametrize("entry", RESOURCES + BODIES, ids=lambda e: e.id)
def test_a_large_body_keeps_its_verdict(entry: corpus.Entry) -> None:
    """The same body made large with trailing whitespace (the same JSON) is read through a
    simdjson view (issue 18 point 3), and judged the same."""
    large = dataclasses.replace(entry, body=entry.body + b" " * LAZY_FROM_BYTES)
    assert corpus.verdict(large) == entry.expect


def test_only_the_documented_verdicts_changed() -> None:
    """docs/presets.md names every body whose verdict issue 17 changed."""
    changed = sorted(e.id for e in BODIES if e.before != e.expect)
    assert changed == [
        "config/examples/mediawiki.yaml: errorformat=plaintext, bad token -> 401",
        "config/examples/mediawiki.yaml: errorformat=plaintext, internal exception -> 500",
        "config/examples/mediawiki.yaml: errorformat=plaintext, maxlag, lag under data",
        "test_presets.JSONRPC_CLEAN[5]",  # {"id": 1, "error": {...}}: an id, and nothing else
    ]


def test_precision_is_perfect_now() -> None:
    now = corpus.score("now")
    assert now.false_positives == 0, corpus.report()
