"""The docs show what the code does: every YAML example in them is checked.

Fenced ```yaml blocks are taken from README.md (when present) and docs/*.md:

- a block whose first line that is not blank or a comment is `version: 1` is a complete
  config: it must parse, and every rule test it embeds must pass;
- any other block is a fragment: it must be a YAML mapping or list.  A fragment mapping
  that uses a top-level config key (`upstreams:`, `routes:`, `inspect:`, ...) is also
  completed with a minimal upstream and route and must then parse as a config (its
  embedded tests, if any, are not run: the minimal route has no rules).

Every metric tunnelguard registers must be named in docs/metrics.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from proxy.config.errors import ConfigError, ConfigProblem
from proxy.config.load import parse_text
from proxy.config.parse import parse_document
from proxy.config.yamlsrc import Source, YamlError, load
from proxy.observe.metrics import Metrics
from proxy.rules.ruletests import run_tests

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [p for p in (ROOT / "README.md",) if p.exists()] + sorted((ROOT / "docs").glob("*.md"))

CONFIG_KEYS = frozenset(
    {"version", "listen", "admin", "upstreams", "routes", "drain", "inspect", "rules", "tests"}
    | {"server", "action", "discover"}
)
_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_FULL = re.compile(r"^version:\s*1\s*(?:#.*)?$")
_PLACEHOLDER_URL = "http://127.0.0.1:3000"


@dataclass(frozen=True)
class Block:
    """One fenced YAML block: `line` is the 1-based line of its first content line."""

    file: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def is_config(self) -> bool:
        for line in self.text.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                return bool(_FULL.match(stripped))
        return False


def extract_yaml_blocks(path: Path, name: str) -> list[Block]:
    """The ```yaml (or ```yml) blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        i += 1
        if opening is None:
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = (opening["info"].split() or [""])[0].lower()
        start, body = i, []
        while i < len(lines):
            closing = lines[i].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1  # past the closing fence
        if language in ("yaml", "yml"):
            blocks.append(Block(name, start + 1, "\n".join(body) + "\n"))
    return blocks


BLOCKS = [b for p in DOC_FILES for b in extract_yaml_blocks(p, str(p.relative_to(ROOT)))]
CONFIGS = [b for b in BLOCKS if b.is_config]
FRAGMENTS = [b for b in BLOCKS if not b.is_config]


def _where(block: Block, problems: tuple[ConfigProblem, ...]) -> str:
    """Problems with their line in the Markdown file, not in the block."""
    lines = []
    for p in problems:
        where = block.id if p.line is None else f"{block.file}:{block.line + p.line - 1}:{p.col}"
        lines.append(f"{where}: {p.path or '(document)'}: {p.message}")
    return "\n".join(lines)


def test_docs_have_yaml_examples() -> None:
    # Guards the extractor: if it found nothing, every parametrized test would vanish.
    assert (ROOT / "docs").is_dir()
    assert CONFIGS, "no complete config example (`version: 1`) found in the docs"
    assert FRAGMENTS, "no YAML fragment found in the docs"


@pytest.mark.parametrize("block", CONFIGS, ids=[b.id for b in CONFIGS])
def test_config_example_parses_and_its_tests_pass(block: Block) -> None:
    try:
        config = parse_text(block.text, block.id)
    except ConfigError as exc:
        pytest.fail(f"invalid config example:\n{_where(block, exc.problems)}", pytrace=False)
    failing = [
        f"{block.file}:{block.line + o.test.line - 1 if o.test.line else '?'}: "
        f"test {o.test.name!r}: {'; '.join(o.mismatches)}"
        for o in run_tests(config)
        if not o.passed
    ]
    assert not failing, "\n".join(failing)


def _completed(fragment: dict[str, object]) -> dict[str, object]:
    """A fragment made into a whole document with the fewest additions."""
    doc: dict[str, object] = {"version": 1, **fragment}
    upstreams = doc.get("upstreams")
    if "routes" not in doc:
        first = next(iter(upstreams), "app") if isinstance(upstreams, dict) else "app"
        doc["routes"] = [{"name": "default", "upstream": first}]
    if "upstreams" not in doc:
        routes = doc["routes"] if isinstance(doc["routes"], list) else []
        names = [r["upstream"] for r in routes if isinstance(r, dict) and "upstream" in r]
        doc["upstreams"] = {str(n): {"url": _PLACEHOLDER_URL} for n in names or ["app"]}
    return doc


@pytest.mark.parametrize("block", FRAGMENTS, ids=[b.id for b in FRAGMENTS])
def test_fragment_is_valid_yaml(block: Block) -> None:
    try:
        source = load(block.text, block.id)
    except YamlError as exc:
        line = block.line + exc.mark.line - 1 if exc.mark else block.line
        pytest.fail(f"{block.file}:{line}: {exc.message}", pytrace=False)
    value = source.value
    assert isinstance(value, dict | list) and value, (
        f"{block.id}: a YAML example should be a mapping or a list, got {value!r}"
    )
    if isinstance(value, dict) and CONFIG_KEYS & value.keys():
        # The fragment's keys keep their paths, so its marks still point at the right lines.
        completed = Source(block.id, _completed(value), source.marks, source.key_marks)
        try:
            parse_document(completed)
        except ConfigError as exc:
            pytest.fail(
                f"config fragment does not parse:\n{_where(block, exc.problems)}", pytrace=False
            )


def _exposed_names(family: Metric) -> str:
    # prometheus_client strips `_total` from a counter family's name; users see it.
    return family.name + "_total" if family.type == "counter" else family.name


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    names = sorted(_exposed_names(f) for f in Metrics().registry.collect())
    assert names, "proxy.metrics registered no metric"
    missing = [n for n in names if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert not missing, f"docs/metrics.md does not mention {missing}"
