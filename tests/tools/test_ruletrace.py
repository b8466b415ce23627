"""Tables for proxy.tools.ruletrace: every trace held in agreement with `rule.match` and
`RuleSet.evaluate` on many bodies (generated, and the shipped configs' own test bodies)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from proxy.config.load import load_file, parse_text
from proxy.config.model import Config
from proxy.rules.presets import ErrorEnvelopePreset, build_preset, keyword_row
from proxy.rules.ruleset import PresetRule, RuleSet, UserRule, compile_when
from proxy.rules.snapshot import build
from proxy.tools.ruletrace import clip, explain_rule, show, trace_rules, trace_status, trace_when
from proxy.wire.pointer import MISSING, compile_pointer
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
ALL_CONFIGS = [ROOT / "config" / "default.yaml", *EXAMPLES]


# -- the tracing function agrees with RuleSet.evaluate -----------------------------------------

USER_RULES = """\
version: 1
upstreams:
  app: {url: http://127.0.0.1:3000}
routes:
  - name: all
    upstream: app
    rules: [tree, codes, msg, flagger, graphql, jsonrpc, slack, error-envelope]
    preset_options: {jsonrpc: {codes: {-32005: 429, 7: 503}}}
rules:
  - name: tree
    when:
      all:
        - {path: /result, in: [false, 0, "no"]}
        - any: [{path: /data, nonempty: false}, {path: /errors/*/code, equals: E1}]
        - not: {path: /warning, exists: true}
    status: 502
  - name: codes
    when: {path: /code, exists: true}
    status:
      from: /code
      map: {100: 401, true: 403, NO_SUCH_USER: 404}
      ranges: [{min: -32099, max: -32000, status: 500}, {min: 1000, max: 1999, status: 429}]
      default: 400
    retry_after_from: /retry_in
  - name: msg
    when: {path: /message, matches: "(?i)maint|down for"}
    status: 503
  - name: flagger
    when: {any: [{path: /flag, equals: {a: [1, 2]}}, {path: /items/*/ok, equals: false}]}
    status: 409
    action: flag
"""

_KEYS = ["ok", "error", "errors", "data", "jsonrpc", "status", "success", "message", "code",
         "result", "warning", "retry_in", "flag", "items", "error_message", "id"]  # fmt: skip
_VALUES: list[object] = [
    None, True, False, 0, 1, 100, -32005, -32000, -32603, 7, 1500, 2.5, -1, "", "2.0", "error",
    "fail", "failure", "ok", "no", "E1", "true", "100", "-32005", "NO_SUCH_USER", "invalid_auth",
    "ratelimited", "something_new", "upstream timeout", "Service unavailable", "RATE_LIMITED",
    "down for maintenance", "forbidden", "no such thing", [], {}, [1], {"a": [1, 2]},
    {"message": "expired token"}, {"code": -32601, "message": "x"}, {"code": -32005},
    {"code": 7, "message": "busy"}, {"code": -32050, "message": "weird"}, {"code": "x"},
    {"code": 1.0, "message": "m"}, {"info": "quota exceeded"}, [{"message": "Not found"}],
    [{"extensions": {"code": "UNAUTHENTICATED"}, "message": "m"}], [{"type": "NOT_FOUND"}],
    [{"code": "E1"}], [{"ok": False}, {"ok": True}], ["str"], [None],
]  # fmt: skip


_CODES: list[object] = [-32700, -32601, -32603, -32005, -32050, -32000, 7, 1, 1.0, "7", True]
_GQL = ["UNAUTHENTICATED", "FORBIDDEN", "THROTTLED", "validation-failed", "OTHER", 5]


def _bodies(count: int) -> list[object]:
    rnd = random.Random(1729)
    bodies: list[object] = [{}, [], None, "text", 5, [{}], [[]]]
    for _ in range(count):
        keys = rnd.sample(_KEYS, rnd.randint(1, 5))
        bodies.append({k: rnd.choice(_VALUES) for k in keys})
    for _ in range(count // 2):  # shaped like each protocol, so the presets match often
        bodies.append({"ok": rnd.choice([False, True, "false", 0]), "error": rnd.choice(_VALUES)})
        error = {"code": rnd.choice(_CODES), "message": rnd.choice(_VALUES)}
        bodies.append({"jsonrpc": rnd.choice(["2.0", "2.0", 2.0]), "id": 1, "error": error})
        bodies.append({"data": rnd.choice([None, {}, {"x": 1}]), "errors": rnd.choice(_VALUES)})
        bodies.append({"errors": [{"extensions": {"code": rnd.choice(_GQL)}, "type": "NOT_FOUND"}]})
    objects = [b for b in bodies if isinstance(b, dict)]
    for _ in range(count // 5):  # batches: arrays of the bodies above
        bodies.append(rnd.sample(objects, rnd.randint(1, 4)))
    return bodies


def _shipped_test_bodies() -> list[object]:
    """The bodies the shipped configs' own rule tests use (real-world shapes)."""
    bodies = []
    for path in ALL_CONFIGS:
        for test in load_file(path).tests:
            try:
                bodies.append(json.loads(test.response.body))
            except ValueError:
                continue
    return bodies


BODIES = _bodies(1500) + _shipped_test_bodies()
MEDIA_TYPES = ["application/json", "application/graphql-response+json"]


def _route_sets() -> list[tuple[str, Config, str]]:
    sets = [
        (f"{p.name}:{r.name}", load_file(p), r.name)
        for p in ALL_CONFIGS
        for r in load_file(p).routes
    ]
    user = parse_text(USER_RULES, "user.yaml")
    sets.append(("user.yaml:all", user, "all"))
    for action in ("flag", "rewrite"):
        override = parse_text(USER_RULES.replace("version: 1\n", f"version: 1\naction: {action}\n"))
        sets.append((f"user.yaml:all:{action}", override, "all"))
    return sets


ROUTE_SETS = _route_sets()


@pytest.mark.parametrize(("config", "route"), [(c, r) for _, c, r in ROUTE_SETS],
                         ids=[i for i, _, _ in ROUTE_SETS])  # fmt: skip
def test_trace_agrees_with_evaluate(config: Config, route: str) -> None:
    compiled = next(r for r in build(config).routes if r.name == route)
    rules: RuleSet = compiled.rules
    whens = {r.name: r.when for r in config.rules}
    pairs = tuple((rule, whens.get(rule.name)) for rule in rules.rules)
    matched = 0
    for body, mtype in itertools.product(BODIES, MEDIA_TYPES):
        verdict = rules.evaluate(body, mtype)
        elements = body if isinstance(body, list) else [body]
        firsts = []
        for element in elements:
            traces = trace_rules(pairs, element, mtype)
            for (rule, _), trace in zip(pairs, traces, strict=True):
                if not trace.tried:
                    continue
                own = rule.match(element, mtype)
                assert trace.matched == (own is not None), (rule.name, element, mtype, trace)
                if own is not None:
                    assert (trace.status, trace.action) == (own.status, own.action), (
                        element,
                        trace,
                    )
                if trace.when is not None:
                    assert trace.when.held == trace.matched
            hits = [t for t in traces if t.matched]
            assert (
                len(hits) <= 1 and all(not t.tried for t in traces[traces.index(hits[0]) + 1 :])
                if hits
                else True
            )
            firsts.append(hits[0] if hits else None)
        found = [t for t in firsts if t is not None]
        if not found:
            assert verdict is None, (body, verdict)
            continue
        matched += 1
        assert verdict is not None, body
        first = found[0]
        partial = len(found) < len(firsts)
        assert (verdict.rule, verdict.status) == (first.rule, first.status), body
        assert verdict.action == ("flag" if partial else first.action), body
        assert verdict.partial_batch == partial
    assert matched >= 10, "the table should exercise matches, not only misses"


def test_trace_when_agrees_with_compile_when() -> None:
    config = parse_text(USER_RULES, "user.yaml")
    for rule in config.rules:
        predicate = compile_when(rule.when)
        for body in BODIES:
            assert trace_when(rule.when, body).held == predicate(body), (rule.name, body)


def test_trace_status_agrees_with_match() -> None:
    config = parse_text(USER_RULES, "user.yaml")
    compiled = next(iter(build(config).routes)).rules.rules
    codes = next(r for r in compiled if r.name == "codes")
    assert isinstance(codes, UserRule)
    for value, retry in itertools.product(_VALUES, [None, 2.5, "3", -1, "x", 0]):
        doc = {"code": value} if retry is None else {"code": value, "retry_in": retry}
        verdict = codes.match(doc, "application/json")
        assert verdict is not None
        trace = trace_status(codes, doc)
        assert (trace.status, trace.retry_after) == (verdict.status, verdict.retry_after), doc


def test_envelope_trace_reports_the_presets_message() -> None:
    """The `message` fact is the preset's own `Hit.message`; `message from` points at it."""
    preset = ErrorEnvelopePreset()
    rule = PresetRule("error-envelope", preset, None)
    found = 0
    for body in BODIES:
        hit = preset.evaluate(body, "application/json")
        trace = explain_rule(rule, body, "application/json")
        assert trace.matched == (hit is not None), body
        if hit is None:
            continue
        facts = {f.name: f.value for f in trace.facts}
        if hit.message is None:
            assert facts["message"] is MISSING and facts["message from"] is MISSING, body
            continue
        found += 1
        source = facts["message from"]
        assert facts["message"] == hit.message, body
        assert isinstance(source, str) and compile_pointer(source).first(body) == hit.message
        if trace.step == "keyword":
            assert trace.keyword == keyword_row(hit.message), body
    assert found >= 10, "the table should exercise envelope messages"


def test_explain_rule_needs_the_when_of_a_user_rule() -> None:
    config = parse_text(USER_RULES, "user.yaml")
    rule = next(iter(build(config).routes)).rules.rules[0]
    with pytest.raises(ValueError, match="its `when` is needed"):
        explain_rule(rule, {}, "application/json")


# -- showing body values -------------------------------------------------------------------------


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "depth", "clipped"),
    [(5, 0, 5), ("s", 0, "s"), ([], 0, "..."), ({}, 0, "..."), ([[[1]]], 2, [["..."]]),
     ({"a": {"b": 1}, "c": 2}, 1, {"a": "...", "c": 2}), ([[[1]]], 3, [[[1]]])],
)  # fmt: skip
def test_clip(value: object, depth: int, clipped: object) -> None:
    assert clip(value, depth) == clipped


@pytest.mark.parametrize(
    ("value", "shown"),
    [(MISSING, "missing"), (None, "null"), (False, "false"), ("é", '"é"'),
     ({"a": [1, 2]}, '{"a": [1, 2]}'), ("x" * 100, '"' + "x" * 76 + "..."),
     (_nested(3), "[[[1]]]"), (_nested(9), "[" * 8 + '"..."' + "]" * 8)],
)  # fmt: skip
def test_show(value: object, shown: str) -> None:
    assert show(value) == shown


def test_a_very_deep_value_is_clipped_not_recursed() -> None:
    deep = _nested(100_000)
    assert len(show(deep)) <= 80
    assert json.dumps(clip(deep)).count("[") == 64


@pytest.mark.parametrize(
    ("rule", "doc", "says"),
    [
        (
            "error-envelope",
            {"executionArn": "arn:aws:states:x", "status": "FAILED", "error": "States.Timeout"},
            "`executionArn` is a resource identity",
        ),
        (
            "error-envelope",
            {"name": "operations/1", "done": True, "error": {"code": 3, "message": "not found"}},
            "`done` is a lifecycle field",
        ),
        (
            "graphql",
            {"id": 42, "state": "completed", "errors": [{"row": 12}]},
            "`id` is not a GraphQL response key",
        ),
    ],
)
def test_explain_says_why_a_body_is_a_resource(rule: str, doc: object, says: str) -> None:
    trace = explain_rule(PresetRule(rule, build_preset(rule), None), doc, "application/json")
    assert not trace.matched
    assert says in trace.reason
