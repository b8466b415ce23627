"""The example configs in config/examples/ are valid and their embedded rule tests pass.

Each example is a complete config for one preset or one real API family, with `tests:` built
from that API's real response shapes.  Here every file must parse, every embedded test must
pass, and each file must show both sides: at least one response a rule matches and at least
one clean response (`expect: {rule: null}`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.errors import ConfigError
from proxy.config.load import load_file
from proxy.config.model import Config
from proxy.rules import ruletests
from proxy.rules.ruletests import run_tests

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "config" / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))

PRESET_EXAMPLES = {"slack", "graphql", "jsonrpc", "error-envelope"}
API_EXAMPLES = {
    "apollo",
    "hasura",
    "shopify",
    "github-graphql",
    "ethereum",
    "solana",
    "google-maps",
    "flickr",
    "mediawiki",
    "elasticsearch-bulk",
    "llm-streams",  # SPEC 5.1: streaming LLM APIs' error events (issue 19)
}
MIN_TESTS = 4


def _load(path: Path) -> Config:
    try:
        return load_file(path)
    except ConfigError as exc:
        lines = "\n".join(
            f"{p.file}:{p.line}:{p.col}: {p.path or '(document)'}: {p.message}"
            for p in exc.problems
        )
        pytest.fail(f"{path.name} is not a valid config:\n{lines}", pytrace=False)


def _where(path: Path, outcome: ruletests.TestOutcome) -> str:
    line = f":{outcome.test.line}" if outcome.test.line else ""
    return f"{path.relative_to(ROOT)}{line}: test {outcome.test.name!r}"


def test_every_family_has_an_example() -> None:
    names = {p.stem for p in FILES}
    missing = sorted((PRESET_EXAMPLES | API_EXAMPLES) - names)
    assert not missing, f"config/examples/ lacks {', '.join(f'{n}.yaml' for n in missing)}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_parses_and_its_tests_pass(path: Path) -> None:
    config = _load(path)
    outcomes = run_tests(config)
    failing = [
        f"{_where(path, o)}\n" + "\n".join(f"    {m}" for m in o.mismatches)
        for o in outcomes
        if not o.passed
    ]
    assert not failing, "\n".join(failing)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_shows_matches_and_clean_responses(path: Path) -> None:
    config = _load(path)
    tests = config.tests
    assert len(tests) >= MIN_TESTS, f"{path.name}: {len(tests)} tests, want at least {MIN_TESTS}"
    # `expect.rule` is "" for `rule: null` (nothing may match), None when not checked.
    clean = [t.name for t in tests if t.expect.rule == ""]
    matched = [t.name for t in tests if t.expect.rule]
    assert clean, f"{path.name}: no test expects a clean response (`expect: {{rule: null}}`)"
    assert matched, f"{path.name}: no test expects a rule to match (`expect: {{rule: NAME}}`)"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_user_rule_is_exercised(path: Path) -> None:
    config = _load(path)
    hit = {o.actual.rule for o in run_tests(config) if o.passed}
    unused = sorted(r.name for r in config.rules if r.name not in hit)
    assert not unused, f"{path.name}: no embedded test reaches rule(s) {', '.join(unused)}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_explains_itself(path: Path) -> None:
    first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
    assert first.startswith("#"), f"{path.name}: start with a comment explaining the API"
