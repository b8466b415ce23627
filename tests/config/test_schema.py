"""config/schema.json, the JSON Schema that editors use to complete and check config files.

The parser (proxy/config/parse.py, proxy/config/parse_rules.py) is the authority; these tests
keep the
schema in step with it:

- the schema is a valid draft 2020-12 schema, and every config file and every complete config
  example in the docs validates against it;
- SYNC: the keys of every mapping the parser reads (found in its source) are exactly the
  properties of the matching schema object, and every closed schema object has such a mapping;
  enums, value syntax (durations, sizes, names, ...) and defaults agree with the parser;
- documents the parser rejects are rejected by the schema too, except for the checks JSON
  Schema cannot express, which are listed (and must be named in a `$comment`).

Documents are loaded with `proxy.yamlsrc`, so values are typed exactly as the parser sees them.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from proxy.config import (
    model as config,
)
from proxy.config import (
    parse as configparse,
)
from proxy.config import (
    parse_rules as ruleparse,
)
from proxy.config import (
    walker as configwalk,
)
from proxy.config.errors import ConfigError
from proxy.config.load import parse_text
from proxy.config.model import PRESET_NAMES
from proxy.config.parse import parse_document
from proxy.config.yamlsrc import Source, load

ROOT = Path(__file__).resolve().parents[2]
PARSERS = (configparse, ruleparse)  # the modules whose `.mapping(...)` calls read the document
SCHEMA_PATH = ROOT / "config" / "schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

CONFIG_FILES = sorted(
    p for p in (ROOT / "config").rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
)
DOC_FILES = [p for p in (ROOT / "README.md",) if p.exists()] + sorted((ROOT / "docs").glob("*.md"))


def _errors(value: object, validator: Draft202012Validator = VALIDATOR) -> list[str]:
    found = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the schema and the files it describes ----------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)


def test_config_files_are_found() -> None:
    # Guards the glob: without it, an empty parametrization would pass silently.
    names = {_rel(p) for p in CONFIG_FILES}
    assert "config/default.yaml" in names
    assert any(n.startswith("config/examples/") for n in names)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_rel)
def test_config_file_validates(path: Path) -> None:
    value = load(path.read_text(encoding="utf-8"), _rel(path)).value
    errors = _errors(value)
    assert not errors, f"{_rel(path)} does not match config/schema.json:\n" + "\n".join(errors)


_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_VERSION_1 = re.compile(r"^version:\s*1\s*(?:#.*)?$")


def _config_blocks() -> Iterator[tuple[str, str]]:
    """(file:line, text) of each ```yaml block whose first content line is `version: 1`."""
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            opening = _FENCE.match(lines[i])
            i += 1
            if opening is None:
                continue
            fence, indent = opening["fence"], len(opening["indent"])
            start, body = i, []
            while i < len(lines) and not (
                lines[i].strip().startswith(fence) and not lines[i].strip().strip(fence[0])
            ):
                body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
                i += 1
            i += 1
            if (opening["info"].split() or [""])[0].lower() not in ("yaml", "yml"):
                continue
            content = [s.strip() for s in body if s.strip() and not s.strip().startswith("#")]
            if content and _VERSION_1.match(content[0]):
                yield f"{_rel(path)}:{start + 1}", "\n".join(body) + "\n"


DOC_CONFIGS = list(_config_blocks())


def test_doc_examples_are_found() -> None:
    assert len(DOC_CONFIGS) >= 5, DOC_CONFIGS


@pytest.mark.parametrize(("where", "text"), DOC_CONFIGS, ids=[w for w, _ in DOC_CONFIGS])
def test_doc_example_validates(where: str, text: str) -> None:
    errors = _errors(load(text, where).value)
    assert not errors, f"{where}: example does not match config/schema.json:\n" + "\n".join(errors)


# -- SYNC: the parser's mappings and the schema's objects ------------------------------------


def _at(pointer: str) -> dict[str, Any]:
    node: Any = SCHEMA
    for token in pointer.split("/")[1:] if pointer else ():
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node  # type: ignore[no-any-return]


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _at(node["$ref"].removeprefix("#"))
    return node


def _object_branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a value at `node` may match (through $ref and anyOf/oneOf)."""
    node = _deref(node)
    found = [node] if "properties" in node else []
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        found += _object_branches(branch)
    return found


def _schema_keys(pointer: str) -> set[str]:
    return {k for b in _object_branches(_at(pointer)) for k in b["properties"]}


# Each mapping the parser reads, by (function, path argument) of its `w.mapping(...)` call,
# and the schema object that describes it.  A new `mapping` call must be added here.
SITES = {
    ("parse_document", "()"): "",
    ("parse_document", "('admin',)"): "/$defs/admin",
    ("_upstreams", "at"): "/$defs/upstream",
    ("_timeouts", "path"): "/$defs/timeouts",
    ("_retry", "path"): "/$defs/retry",
    ("_breaker", "path"): "/$defs/circuitBreaker",
    ("_routes", "at"): "/$defs/route",
    ("_match", "path"): "/$defs/match",
    ("_preset_options", "path"): "/$defs/presetOptions",
    ("_preset_options", "at"): "/$defs/presetOptions/properties/jsonrpc",
    ("_inspect", "path"): "/$defs/inspect",
    ("_drain", "path"): "/$defs/drain",
    ("_server", "path"): "/$defs/server",
    ("_discover", "path"): "/$defs/discover",
    ("parse_rules", "at"): "/$defs/rule",
    ("_when", "path"): "/$defs/when",
    ("_status", "path"): "/$defs/statusMapping",
    ("_status", "at"): "/$defs/statusRange",
    ("parse_tests", "at"): "/$defs/test",
    ("_test_response", "path"): "/$defs/testResponse",
    ("_test_events", "at"): "/$defs/testEvent",
    ("_test_expect", "path"): "/$defs/testExpect",
}
# Mappings whose keys are data (any key is accepted, values are checked).
OPEN_SITES = {
    (
        "_preset_options",
        "(*at, 'codes')",
    ): "/$defs/presetOptions/properties/jsonrpc/properties/codes",
    ("_status", "(*path, 'map')"): "/$defs/statusMapping/properties/map",
}


def _constant(name: str) -> object:
    """A module-level constant of the parser, wherever it is defined."""
    return next((getattr(m, name) for m in PARSERS if hasattr(m, name)), None)


def _static_keys(node: ast.expr | None) -> tuple[str, ...] | None:
    """The keys a tuple expression of the parser's source names, or None when computed."""
    if node is None:
        return ()
    if isinstance(node, ast.Name):
        value = _constant(node.id)
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        return value if ok else None
    if isinstance(node, ast.IfExp):  # `() if upstream_url else ("url",)`: either may apply
        body, orelse = _static_keys(node.body), _static_keys(node.orelse)
        return None if body is None or orelse is None else (*body, *orelse)
    if not isinstance(node, ast.Tuple):
        return None
    keys: list[str] = []
    for element in node.elts:
        if isinstance(element, ast.Constant) and isinstance(element.value, str):
            keys.append(element.value)
        elif isinstance(element, ast.Starred) and (inner := _static_keys(element.value)):
            keys.extend(inner)
        else:
            return None
    return tuple(keys)


def _mapping_calls() -> dict[tuple[str, str], tuple[ast.expr | None, ast.expr | None]]:
    """(function, path argument) -> (allowed, required) of every `.mapping(...)` call."""
    calls: dict[tuple[str, str], tuple[ast.expr | None, ast.expr | None]] = {}

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "mapping"
        ):
            args: dict[str, ast.expr | None] = dict(
                zip(("value", "path", "allowed", "required"), node.args, strict=False)
            )
            args.update({k.arg: k.value for k in node.keywords if k.arg})
            site = (function, ast.unparse(args["path"]))  # type: ignore[arg-type]
            assert site not in calls, f"two mapping calls at {site}: make SITES more precise"
            calls[site] = (args["allowed"], args.get("required"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    for module in PARSERS:
        visit(ast.parse(inspect.getsource(module)), "<module>")
    return calls


CALLS = _mapping_calls()


def test_every_mapping_the_parser_reads_is_described() -> None:
    static = {site for site, (allowed, _) in CALLS.items() if _static_keys(allowed) is not None}
    dynamic = set(CALLS) - static
    assert len(CALLS) >= len(SITES) + len(OPEN_SITES)  # the source walk found the calls
    assert static == set(SITES), (
        f"parser mappings without a schema place (add them to SITES and the schema): "
        f"{sorted(static - set(SITES))}; stale SITES entries: {sorted(set(SITES) - static)}"
    )
    assert dynamic == set(OPEN_SITES)


@pytest.mark.parametrize("site", sorted(SITES), ids="/".join)
def test_parser_keys_match_schema_properties(site: tuple[str, str]) -> None:
    allowed, required = CALLS[site]
    keys, needed = _static_keys(allowed), _static_keys(required)
    assert keys is not None and needed is not None
    pointer = SITES[site]
    branches = _object_branches(_at(pointer))
    assert branches, f"#{pointer} is not an object schema"
    in_schema = _schema_keys(pointer)
    assert set(keys) == in_schema, (
        f"{site[0]} accepts {sorted(keys)}; #{pointer} describes {sorted(in_schema)}: "
        f"missing in the schema {sorted(set(keys) - in_schema)}, "
        f"unknown to the parser {sorted(in_schema - set(keys))}"
    )
    for branch in branches:  # the parser rejects unknown keys, so must the schema
        assert branch.get("additionalProperties") is False, f"#{pointer} is not closed"
    if len(branches) == 1:
        assert set(needed) == set(branches[0].get("required", [])), f"required at #{pointer}"
    for key in needed:  # `when`: the key is required by every branch that has it
        assert all(key in b.get("required", []) for b in branches if key in b["properties"])


@pytest.mark.parametrize("site", sorted(OPEN_SITES), ids="/".join)
def test_open_mappings_are_open_in_the_schema(site: tuple[str, str]) -> None:
    node = _at(OPEN_SITES[site])
    assert node["type"] == "object" and "properties" not in node
    assert isinstance(node["additionalProperties"], dict)  # values are still checked


def _closed_objects(node: object, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            yield pointer, node
        for key, child in node.items():
            yield from _closed_objects(child, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _closed_objects(child, f"{pointer}/{i}")


def test_every_closed_schema_object_is_a_parser_mapping() -> None:
    covered = {id(b) for pointer in SITES.values() for b in _object_branches(_at(pointer))}
    extra = [p or "#" for p, node in _closed_objects(SCHEMA) if id(node) not in covered]
    assert not extra, f"schema objects the parser does not read as mappings: {extra}"


@pytest.mark.parametrize(
    ("constant", "pointer"),
    [
        ("_TOP_KEYS", ""),
        ("_UPSTREAM_KEYS", "/$defs/upstream"),
        ("_ROUTE_KEYS", "/$defs/route"),
        ("_RULE_KEYS", "/$defs/rule"),
        ("_SERVER_KEYS", "/$defs/server"),
        ("_INSPECT_KEYS", "/$defs/inspect"),
    ],
)
def test_named_key_sets_match_the_schema(constant: str, pointer: str) -> None:
    assert set(_constant(constant)) == _schema_keys(pointer)  # type: ignore[call-overload]


def test_enums_match_the_parser() -> None:
    assert _at("/$defs/action")["enum"] == list(config.ACTIONS)
    assert _at("/$defs/body")["enum"] == list(config.BODIES)
    assert _at("/$defs/presetName")["enum"] == list(PRESET_NAMES)
    reasons = _at("/$defs/retryReason")["enum"]
    assert [r for r in reasons if isinstance(r, str)] == list(config.RETRY_REASONS)
    # the parser reads `on` items as text, so unquoted numbers are reasons too
    numeric = [int(r) for r in config.RETRY_REASONS if r.isdigit()]
    assert [r for r in reasons if isinstance(r, int)] == numeric
    condition = _at("/$defs/condition")["properties"]
    assert set(condition) == {"path", *ruleparse._TESTS}


# -- SYNC: value syntax, checked by the parser's own converters -------------------------------

_W = configwalk.Walker
Convert = Callable[[_W, object], object]


def _via(function: Callable[..., object], wrap: Callable[[object], object]) -> Convert:
    return lambda w, v: function(w, wrap(v), ("x",))


VALUE_SYNTAX: list[tuple[str, Convert, list[object], list[object]]] = [
    # (schema place, parser check, values both accept, values both reject)
    (
        "/$defs/duration",
        lambda w, v: w.duration(v, ("x",)),
        ["250ms", "2s", "1.5s", "1m", "2h", "0s", 0, 0.0, "007s"],
        [2, 1.5, "2", "1m30s", "2 s", "2S", "-1s", ".5s", "5.s", "1e3s", "10d", "", None, False],
    ),
    (
        "/$defs/positiveDuration",
        lambda w, v: w.positive_duration(v, ("x",)),
        ["1s", "0.1ms", "01s", "1.05m", "0.5h"],
        ["0s", "0.0ms", "00m", 0, 0.0, 5, "5"],
    ),
    (
        "/$defs/circuitBreaker/properties/window",
        _via(configparse._breaker, lambda v: {"window": v}),
        ["1s", "10s", "1000ms", "1000.5ms", "01s", "1.5s", "1m", "2h"],
        ["999ms", "0.5s", "0s", 0, "10"],
    ),
    (
        "/$defs/size",
        lambda w, v: w.size(v, ("x",)),
        [0, 65536, "65536", "64KiB", "64 KiB", "1MiB", "2GiB", "5B"],
        [-1, 1.5, "1MB", "1KB", "1.5MiB", "64kib", "64 k", True, None],
    ),
    (
        "/$defs/hostPort",
        lambda w, v: w.listen(v, ("x",)),
        ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0", "h:65535", "h:08080", "::1:80", "a b:1"],
        ["h:65536", "8080", 8080, ":80", "[]:80", "h:", "h:+1", "h: 80", "h:8o"],
    ),
    (
        "/$defs/name",
        lambda w, v: w.name(v, ("x",)),
        ["slack", "api-v2", "eth.main", "9", "a_" * 32],
        ["_x", "-x", ".x", "a" * 65, "a b", "", 5, "ä"],
    ),
    (
        "/$defs/pointer",
        lambda w, v: w.pointer(v, ("x",)),
        ["", "/", "/error", "/a~0b", "/a~1b", "/errors/*/x", "//"],
        ["error", "/a~2", "/a~", "~0", 5, None],
    ),
    (
        "/$defs/errorStatus",
        lambda w, v: w.http_status(v, ("x",)),
        [400, 429, 599],
        [399, 200, 600, 99, "502", True, None],
    ),
    (
        "/$defs/status",
        lambda w, v: w.http_status(v, ("x",), False),
        [100, 200, 599],
        [99, 600, "200", False],
    ),
    (
        "/$defs/upstream/properties/url",
        lambda w, v: configparse._upstream_url(w, v, ("x",)),
        ["http://h", "https://h:8443/base/", "HTTP://h", "http://[::1]:80/x", "http://h/?"],
        ["ftp://h", "http://h?x=1", "http://h#f", "http://h/p?q", "h:80", "", 5, "http://"],
    ),
    (
        "/$defs/inspect/properties/content_types/items",
        _via(configparse._inspect, lambda v: {"content_types": [v]}),
        ["application/json", "application/*+json", "text/*", "Application/JSON", "a/b.c-d+e"],
        ["json", "application/", "*/*", "application/json; charset=utf-8", 5],
    ),
    (
        "/$defs/inspect/properties/statuses/items",
        _via(configparse._inspect, lambda v: {"statuses": [v]}),
        [200, 599, "200-299", "200 - 299", "500-500"],
        [99, 600, "500", "abc", "600-700", "20-29", True],
    ),
    (
        "/$defs/retry/properties/on/items",
        _via(configparse._retry, lambda v: {"on": [v]}),
        ["connect_error", "timeout", "429", 429, 503, "504"],
        ["500", 500, "TIMEOUT", "connect-error", True, None],
    ),
    (
        "/$defs/presetOptions/properties/jsonrpc/properties/codes/propertyNames",
        _via(configparse._preset_options, lambda v: {"jsonrpc": {"codes": {v: 500}}}),
        ["-32005", "+5", "5", "1" * 19],
        ["abc", "1.5", "1" * 20, "", " 5"],
    ),
]


def _sub_validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#{pointer}"})


@pytest.mark.parametrize(
    ("pointer", "convert", "good", "bad"), VALUE_SYNTAX, ids=[c[0] for c in VALUE_SYNTAX]
)
def test_value_syntax_matches_the_parser(
    pointer: str, convert: Convert, good: list[object], bad: list[object]
) -> None:
    validator = _sub_validator(pointer)
    for value, expected in [(v, True) for v in good] + [(v, False) for v in bad]:
        walker = _W(Source("<test>", None))
        convert(walker, value)
        parser_ok = not walker.problems
        schema_ok = validator.is_valid(value)
        assert (parser_ok, schema_ok) == (expected, expected), (
            f"{value!r} at #{pointer}: parser {'accepts' if parser_ok else 'rejects'}, "
            f"schema {'accepts' if schema_ok else 'rejects'}, expected both to "
            f"{'accept' if expected else 'reject'}"
        )


# -- SYNC: defaults and descriptions -----------------------------------------------------------


def _properties(node: object, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, prop in node.get("properties", {}).items():
            yield f"{pointer}/properties/{key}", prop
        for key, child in node.items():
            yield from _properties(child, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _properties(child, f"{pointer}/{i}")


def test_every_property_is_described_with_its_default() -> None:
    problems = []
    for pointer, prop in _properties(SCHEMA):
        text = prop.get("description", "")
        if not text:
            problems.append(f"#{pointer}: no description")
        elif "default" in prop and "Default:" not in text:
            problems.append(f"#{pointer}: has a default the description does not state")
    assert not problems, "\n".join(problems)


def _fill_defaults(value: object, node: dict[str, Any]) -> None:
    """Add every default the schema declares to `value`, recursively."""
    if isinstance(value, list):
        items = _deref(node).get("items")
        for item in value if items else ():
            _fill_defaults(item, items)
    if not isinstance(value, dict):
        return
    for branch in _object_branches(node):
        for key, prop in branch["properties"].items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                _fill_defaults(value[key], prop)
    extra = _deref(node).get("additionalProperties")
    if isinstance(extra, dict):
        for item in value.values():
            _fill_defaults(item, extra)


def test_schema_defaults_are_the_parser_defaults() -> None:
    # Every section present but empty: the parser fills in its defaults.
    bare: dict[str, Any] = {
        "version": 1,
        "admin": {},
        "upstreams": {
            "app": {"url": "http://h", "timeouts": {}, "retry": {}, "circuit_breaker": {}}
        },
        "routes": [
            {"name": "r", "upstream": "app", "match": {}, "preset_options": {"jsonrpc": {}}}
        ],
        "rules": [{"name": "x", "when": {"path": "/a", "exists": True}, "status": {"from": "/a"}}],
        "tests": [{"name": "t", "rules": ["x"], "response": {}, "expect": {}}],
        "inspect": {},
        "drain": {},
        "server": {},
    }
    spelled_out = copy.deepcopy(bare)
    _fill_defaults(spelled_out, SCHEMA)
    assert spelled_out["upstreams"]["app"]["retry"]["backoff"] == "100ms"  # the fill worked
    assert spelled_out["rules"][0]["status"]["default"] == 502
    expected = parse_document(Source("<test>", bare))
    assert parse_document(Source("<test>", spelled_out)) == expected
    # and the section-level defaults equal the sections' own defaults
    minimal = {k: bare[k] for k in ("version", "upstreams", "routes")}
    minimal["upstreams"] = {"app": {"url": "http://h"}}
    filled = copy.deepcopy(minimal)
    _fill_defaults(filled, SCHEMA)
    assert parse_document(Source("<test>", filled)) == parse_document(Source("<test>", minimal))


def test_every_definition_is_used() -> None:
    text = json.dumps(SCHEMA)
    unused = [name for name in SCHEMA["$defs"] if f'"#/$defs/{name}"' not in text]
    assert not unused


def test_patterns_are_portable_to_editors() -> None:
    # VS Code evaluates patterns as ECMAScript (`u` flag); keep to the common subset.
    patterns = re.findall(r'"pattern": ("(?:[^"\\]|\\.)*")', json.dumps(SCHEMA))
    assert patterns
    for pattern in map(json.loads, patterns):
        re.compile(pattern)
        assert pattern.startswith("^"), pattern  # `pattern` searches; anchor it
        for python_only in ("(?P", "\\A", "\\Z", "(?i", "(?#", "(?<"):
            assert python_only not in pattern, pattern


# -- documents the parser rejects --------------------------------------------------------------

BASE = """\
version: 1
upstreams:
  app: {url: http://127.0.0.1:3000}
routes:
  - name: app
    upstream: app
    rules: [mine]
rules:
  - name: mine
    when: {path: /error, exists: true}
    status: 502
tests:
  - name: t
    route: app
    response: {body: {error: x}}
    expect: {status: 502}
"""


def _edit(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def _route(extra: str) -> str:
    return _edit("    rules: [mine]\n", f"    rules: [mine]\n    {extra}\n")


def _upstream(extra: str) -> str:
    return _edit("{url: http://127.0.0.1:3000}", "{url: http://127.0.0.1:3000, " + extra + "}")


def _when(when: str) -> str:
    return _edit("when: {path: /error, exists: true}", f"when: {when}")


def _status(status: str) -> str:
    return _edit("status: 502\n", f"status: {status}\n")


def _nested_not(depth: int) -> str:
    return "{not: " * depth + "{path: /a, exists: true}" + "}" * depth


def test_base_document_is_valid() -> None:
    parse_text(BASE)
    assert not _errors(load(BASE).value)


INVALID = {
    "unknown top-level key": BASE + "listn: 0.0.0.0:80\n",
    "unknown route key": _route("strip: true"),
    "unknown condition key": _when("{path: /error, exist: true}"),
    "bare number as duration": _upstream("retry_after: 5"),
    "1MB size": BASE + "inspect: {max_body_bytes: 1MB}\n",
    "action rewrites": _status("502\n    action: rewrites"),
    "body replace": _status("502\n    body: replace"),
    "status 200 in a map": _status("{from: /code, map: {X: 200}}"),
    "fixed status 200": _status("200"),
    "status mapping without from": _status("{map: {X: 401}}"),
    "range without status": _status("{from: /c, ranges: [{min: 1, max: 2}]}"),
    "route without upstream": _edit("    upstream: app\n", ""),
    "route without name": _edit("  - name: app\n    upstream: app", "  - upstream: app"),
    "test with route and rules": _edit("    route: app\n", "    route: app\n    rules: [mine]\n"),
    "test with neither route nor rules": _edit("    route: app\n", ""),
    "test without expect": _edit("    expect: {status: 502}\n", ""),
    "version 2": _edit("version: 1", "version: 2"),
    "no upstreams": _edit("upstreams:\n  app: {url: http://127.0.0.1:3000}\n", ""),
    "empty upstreams": _edit("\n  app: {url: http://127.0.0.1:3000}", " {}"),
    "empty routes": _edit("  - name: app\n    upstream: app\n    rules: [mine]\n", "  []\n"),
    "route name with a space": _edit("- name: app", "- name: my app"),
    "upstream name with a space": _edit("  app: {url", "  my app: {url"),
    "rule named after a preset": _edit("- name: mine", "- name: slack"),
    "condition with two tests": _when("{path: /error, exists: true, equals: x}"),
    "condition without a test": _when("{path: /error}"),
    "condition without path": _when("{exists: true}"),
    "empty all": _when("{all: []}"),
    "combinator with another key": _when("{all: [{path: /a, exists: true}], path: /b}"),
    "pointer without slash": _when("{path: error, exists: true}"),
    "bad pointer escape": _when("{path: /a~2, exists: true}"),
    "matches a number": _when("{path: /a, matches: 5}"),
    "in an empty list": _when("{path: /a, in: []}"),
    "exists yes (a string in YAML 1.2)": _when("{path: /a, exists: yes}"),
    "listen without host": "listen: 8080\n" + BASE,
    "admin with another key": "admin: {listen: 127.0.0.1:9090, port: 1}\n" + BASE,
    "jsonrpc code that is not an integer": _route("preset_options: {jsonrpc: {codes: {abc: 429}}}"),
    "jsonrpc code mapped to 200": _route("preset_options: {jsonrpc: {codes: {-32005: 200}}}"),
    "unknown preset option": _route("preset_options: {graphql: {}}"),
    "retry on 500": _upstream("retry: {on: [connect_error, 500]}"),
    "zero attempts": _upstream("retry: {attempts: 0}"),
    "negative budget": _upstream("retry: {budget: -1}"),
    "failure_ratio 0": _upstream("circuit_breaker: {failure_ratio: 0}"),
    "window 500ms": _upstream("circuit_breaker: {window: 500ms}"),
    "max_concurrency 0": _upstream("max_concurrency: 0"),
    "preserve_host yes": _upstream("preserve_host: yes"),
    "connect timeout 0": _upstream("timeouts: {connect: 0}"),
    "ftp url": _edit("url: http://127.0.0.1:3000", "url: ftp://127.0.0.1:3000"),
    "url with a query": _edit("url: http://127.0.0.1:3000", "url: http://127.0.0.1:3000/?a=1"),
    "upstream without url": _edit("{url: http://127.0.0.1:3000}", "{retry_after: 5s}"),
    "path_prefix without slash": _route("match: {path_prefix: api}"),
    "strip_prefix yes": _route("strip_prefix: yes"),
    "global action shadow": "action: shadow\n" + BASE,
    "content type without subtype": BASE + "inspect: {content_types: [json]}\n",
    "status range text": BASE + "inspect: {statuses: [2xx]}\n",
    "keepalive_timeout 0": BASE + "server: {keepalive_timeout: 0}\n",
    "drain with an unknown key": BASE + "drain: {grace: 5s}\n",
    "expect rule 5": _edit("expect: {status: 502}", "expect: {rule: 5}"),
    "expect status 600": _edit("expect: {status: 502}", "expect: {status: 600}"),
    "response status 99": _edit("response: {body:", "response: {status: 99, body:"),
    "unknown response key": _edit("response: {body:", "response: {code: 200, body:"),
    "response with body and events": _edit("response: {body:", "response: {events: [], body:"),
    "event without data": _edit("response: {body:", "response: {events: [{event: error}], body:"),
}


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_invalid_document_is_rejected_by_parser_and_schema(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_text(text)
    assert _errors(load(text).value), "the schema accepts a document the parser rejects"


def _comments(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$comment"), str):
            yield node["$comment"]
        for child in node.values():
            yield from _comments(child)
    elif isinstance(node, list):
        for child in node:
            yield from _comments(child)


# Checks JSON Schema cannot express: the parser rejects these, the schema accepts them, and
# a `$comment` in the schema says so (the phrase given here).
BEYOND_SCHEMA = {
    "unknown upstream": (
        _edit("    upstream: app\n", "    upstream: nope\n"),
        "must be defined in `upstreams`",
    ),
    "unknown rule": (
        _edit("rules: [mine]", "rules: [mine, nope]"),
        "rule of this file or a preset",
    ),
    "unknown route in a test": (
        _edit("    route: app\n", "    route: nope\n"),
        "must name a route",
    ),
    "duplicate route name": (
        _route(
            "match: {path_prefix: /a}\n  - {name: app, upstream: app, match: {path_prefix: /b}}"
        ),
        "duplicate route names",
    ),
    "duplicate rule name": (
        _status("502\n  - {name: mine, when: {path: /b, exists: true}, status: 400}"),
        "duplicate rule names",
    ),
    "unreachable route": (
        _edit("    rules: [mine]\n", "    rules: [mine]\n  - {name: api, upstream: app}\n"),
        "unreachable routes",
    ),
    "backreference": (_when(r"""{path: /a, matches: '(a)\1'}"""), "RE2"),
    "lookahead": (_when("{path: /a, matches: 'a(?=b)'}"), "RE2"),
    "nested 17 deep": (_when(_nested_not(17)), "at most 16 deep"),
    "range min above max": (
        _status("{from: /c, ranges: [{min: 2, max: 1, status: 500}]}"),
        "`min` <= `max`",
    ),
    "inspect range backwards": (BASE + "inspect: {statuses: [299-200]}\n", "LOW <= HIGH"),
    "window in fractional minutes": (
        _upstream("circuit_breaker: {window: 0.01m}"),
        "fractional minutes",
    ),
    "url without a host after user info": (
        _edit("url: http://127.0.0.1:3000", "url: http://user@"),
        "parsed in full",
    ),
    "version 1.0": (_edit("version: 1", "version: 1.0"), "zero fraction"),
    "status 502.0": (_status("502.0"), "zero fraction"),
}


@pytest.mark.parametrize(("text", "phrase"), BEYOND_SCHEMA.values(), ids=BEYOND_SCHEMA.keys())
def test_checks_beyond_json_schema_are_documented(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError):
        parse_text(text)
    # If the schema learns to reject one of these, move it to INVALID.
    assert not _errors(load(text).value)
    assert any(phrase in comment for comment in _comments(SCHEMA)), phrase


# Unusual but valid documents: the schema must not flag what the parser accepts.
VALID = {
    "zero durations": BASE + "drain: {delay: 0, timeout: 0.0}\n",
    "sizes": BASE + "inspect: {max_body_bytes: 64 KiB, max_decoded_bytes: 1048576}\n",
    "ipv6 listeners": "listen: '[::1]:8080'\nadmin: {listen: '[::]:9090'}\n" + BASE,
    "retry reasons as numbers": _upstream("retry: {on: [429, '503', timeout, connect_error]}"),
    "empty circuit breaker": _upstream("circuit_breaker: {}"),
    "map keys as text": _status("{from: /c, map: {100: 401, true: 403, null: 404, X: 500}}"),
    "ranges and default": _status(
        "{from: '', ranges: [{min: -32099, max: -32000, status: 500}], default: 400}"
    ),
    "jsonrpc codes": _route("preset_options: {jsonrpc: {codes: {-32005: 429, +7: 503}}}"),
    "empty preset options": _route("preset_options: {}"),
    "nested combinators": _when(
        "{any: [{all: [{path: /a, equals: null}, {not: {path: /b, in: [1, '1', null]}}]},"
        " {path: /c, matches: '(?i)down'}, {path: /d, nonempty: false},"
        " {path: /e, equals: {k: [1]}}]}"
    ),
    "nested 16 deep": _when(_nested_not(16)),
    "test with rules": _edit("    route: app\n", "    rules: [mine, slack]\n"),
    "expect rule null and headers": _edit(
        "expect: {status: 502}", "expect: {rule: null, action: rewrite, headers: {x-n: 5}}"
    ),
    "string body": _edit("response: {body: {error: x}}", "response: {body: 'not json'}"),
    "list body and headers": _edit(
        "response: {body: {error: x}}",
        "response: {status: 500, headers: {etag: '\"v\"'}, body: [{error: x}]}",
    ),
    "statuses and media types": BASE
    + "inspect: {statuses: [500, 200 - 299], content_types: [Application/JSON, text/*]}\n",
    "global flag and route rewrite": "action: flag\n" + _route("action: rewrite"),
    "no rules on a route": _edit("rules: [mine]", "rules: []"),
    "url with a path and port": _edit("url: http://127.0.0.1:3000", "url: HTTPS://h:8443/base/"),
    "longest name": _edit("- name: app", "- name: " + "a" * 64).replace(
        "route: app", "route: " + "a" * 64
    ),
    "all server limits": BASE
    + "server: {header_timeout: 1.5s, keepalive_timeout: 1h, max_connections: 1,"
    " max_head_bytes: 1, max_request_body: 1GiB}\n",
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_unusual_valid_document_is_accepted_by_both(text: str) -> None:
    parse_text(text)
    errors = _errors(load(text).value)
    assert not errors, "\n".join(errors)


# -- editors: `# yaml-language-server: $schema=...` lines ------------------------------------

_MODELINE = re.compile(r"^# yaml-language-server: \$schema=(?P<target>\S+)\s*$")


def _modeline_target(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = _MODELINE.match(first)
    assert match, f"{_rel(path)}: the yaml-language-server line must be the first line: {first!r}"
    return match["target"]


def _points_at_schema(directory: Path, target: str) -> bool:
    return "://" not in target and (directory / target).resolve() == SCHEMA_PATH.resolve()


def test_examples_point_editors_at_the_schema() -> None:
    for path in CONFIG_FILES:
        assert "yaml-language-server" in path.read_text(encoding="utf-8"), _rel(path)
        target = _modeline_target(path)
        assert _points_at_schema(path.parent, target), f"{_rel(path)}: {target} is not the schema"


def test_default_config_points_editors_at_the_schema() -> None:
    default = ROOT / "config" / "default.yaml"
    target = _modeline_target(default)
    # proxy/default.yaml is a copy of it, and editors resolve the path from the file they
    # opened: `../config/schema.json` works from both directories.
    for directory in {default.parent, (ROOT / "proxy" / "default.yaml").parent}:
        assert _points_at_schema(directory, target), f"{target} from {_rel(directory)}/"
