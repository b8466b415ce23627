"""Tables for proxy.rules.decide: a buffered body judged and the verdict applied, the one
pure step the handler, `check` and `explain` share (SPEC 4.3, 5)."""

from __future__ import annotations

import gc
import gzip
import json
import re
from unittest import mock

import orjson
import pytest
import simdjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.load import parse_text
from proxy.config.model import InspectConfig
from proxy.rules import inspection as ins
from proxy.rules.decide import Decision, decide
from proxy.rules.inspection import InspectPolicy
from proxy.rules.ruleset import RuleSet, compile_ruleset
from proxy.rules.verdict import apply_verdict
from proxy.wire import headers as h
from proxy.wire import jsondoc

RULES = compile_ruleset(["slack", "error-envelope"], [])
POLICY = InspectPolicy.compile(InspectConfig())
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
JSON_TYPE = "application/json"
GRAPHQL_TYPE = "application/graphql-response+json"
NEVER = re.compile(rb"(?!)")
UPSTREAM: h.Headers = [
    ("Content-Type", "application/json"),
    ("ETag", '"v1"'),
    ("Cache-Control", "max-age=60"),
]


def _decide(raw: bytes, codings: tuple[str, ...] = (), status: int = 200) -> Decision:
    return decide(
        RULES, POLICY, status, UPSTREAM, raw, "application/json", codings,
        fallback_retry_after=7, trace_id=TRACE,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        (b'{"ok": true}', "clean"),
        (b'{"error": null}', "clean"),
        (b"", "clean"),
        (b'{"ok": tru', "invalid_json"),
    ],
)
def test_what_no_rule_matches_is_only_a_result(raw: bytes, result: str) -> None:
    assert _decide(raw) == Decision(result)


def test_a_match_is_rewritten_as_a_client_gets_it() -> None:
    decision = _decide(b'{"ok": false, "error": "ratelimited"}')
    assert decision.result == "matched"
    assert decision.verdict is not None and decision.verdict.rule == "slack"
    delivery = decision.delivery
    assert delivery is not None and delivery.status == 429
    names = [name.lower() for name, _ in delivery.headers]
    assert "etag" not in names  # SPEC 4.3: caching headers replaced on a rewrite
    assert h.get(delivery.headers, "cache-control") == "no-store"
    assert h.get(delivery.headers, "retry-after") == "7"  # a 429 always carries one
    assert h.get(delivery.headers, "tunnelguard-rule") == "slack"
    assert delivery.body is None  # body: keep


def test_a_compressed_body_is_judged_on_its_decoded_json() -> None:
    body = json.dumps({"error": "upstream timed out"}).encode()
    decision = _decide(gzip.compress(body), ("gzip",))
    assert decision.verdict is not None and decision.verdict.status == 504
    assert decision.delivery is not None and decision.delivery.status == 504


# -- the simdjson view against orjson (issue 18 point 3) -----------------------------------------
#
# `reference_decide` is `decide` as it was before inspection read bodies through simdjson
# views: orjson builds every object, the rules read those.  For any JSON text, or any text
# near one, the product must give the same Decision: the same result (invalid_json
# included), verdict and delivery.

_USER_RULES = """\
version: 1
upstreams: {app: {url: http://127.0.0.1:3000}}
routes: [{name: main, upstream: app}]
rules:
  - name: eq-scalar
    when: {path: /status, equals: error}
    status:
      from: /code
      map: {"100": 429, "true": 401, AUTH: 403, "2.5": 400}
      ranges: [{min: -32099, max: -32000, status: 500}]
      default: 502
    retry_after_from: /retry
  - name: eq-container
    when: {any: [{path: /e, equals: [1, "1", {a: null}]}, {path: /e, equals: {a: [true]}}]}
    status: 503
    body: problem
  - name: in-values
    when: {path: /code, in: [1, "1", true, null, 2.5, -0.0, [], {}]}
    status: 400
  - name: wildcard
    when:
      all:
        - {path: /errors/*/extensions/code, matches: "^[A-Z]"}
        - {not: {path: /data, nonempty: true}}
    status: {from: /errors/0/extensions/code, map: {UNAUTHENTICATED: 401}, default: 502}
    body: problem
  - name: exists-index
    when: {path: /a/0/b, exists: true}
    status: 404
    action: flag
  - name: nonempty
    when: {any: [{path: /result, nonempty: true}, {path: /a/*, nonempty: true}]}
    status: 500
  - name: nul-key
    when: {path: "/x\\0y", equals: 1}
    status: 418
"""
_USER = [r.name for r in parse_text(_USER_RULES, "property.yaml").rules]
_PRESETS = ["graphql", "jsonrpc", "slack", "error-envelope"]
RULE_SETS = {
    "embedded default": compile_ruleset(_PRESETS, []),
    "user rules, then presets": compile_ruleset(
        _USER + _PRESETS, parse_text(_USER_RULES, "property.yaml").rules
    ),
}

_KEYS = st.sampled_from(
    ["ok", "error", "errors", "status", "code", "message", "data", "jsonrpc", "success",
     "extensions", "type", "id", "done", "result", "retry", "e", "a", "b", "0", "*", "info",
     "error_message", "x\u0000y", "x", "\u00e9"]
) | st.text(max_size=3)  # fmt: skip
_WORDS = st.sampled_from(
    ["error", "fail", "2.0", "UNAUTHENTICATED", "FORBIDDEN", "rate limited", "timeout",
     "invalid_auth", "ratelimited", "AUTH", "100", "true", "2.5", "", "x"]
) | st.text()  # fmt: skip
_NUMBERS = st.one_of(
    st.sampled_from(["-0", "-0.0", "1.0", "1e2", "100", "2.5", "-32005", "-32603", "1E0"]),
    st.integers(-(2**63), 2**64 - 1).map(str),
    st.integers().map(str),  # beyond 64 bits too: simdjson refuses them, orjson reads floats
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
)
_SCALARS = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    _NUMBERS,
    st.builds(lambda s, ascii_: json.dumps(s, ensure_ascii=ascii_), _WORDS, st.booleans()),
)


# members the rules above and the presets look for, so that many documents match something
_MEMBERS = st.sampled_from(
    ['"ok":false', '"ok":true', '"error":"invalid_auth"', '"error":"ratelimited"',
     '"error":null', '"error":""', '"error":{"message":"rate limited","code":-32005}',
     '"error":{"code":-32603}', '"error":{"code":7,"message":"busy"}', '"error":{"info":"x"}',
     '"error":[{"message":"not found"}]', '"errors":[]', '"errors":["x"]',
     '"errors":[{"message":"m","extensions":{"code":"UNAUTHENTICATED"}}]',
     '"errors":[{"type":"FORBIDDEN"},{"extensions":{"code":"x"}}]', '"data":null',
     '"data":{"v":1}', '"data":[]', '"jsonrpc":"2.0"', '"status":"error"', '"status":"fail"',
     '"success":false', '"code":"AUTH"', '"code":100', '"code":"100"', '"code":true',
     '"code":2.5', '"code":-32050', '"code":-0.0', '"code":[]', '"code":{}', '"code":null',
     '"retry":2.5', '"retry":-1', '"retry":"7"',
     '"e":[1,"1",{"a":null}]', '"e":{"a":[true]}', '"e":[1,1]', '"a":[{"b":0}]', '"a":{"0":1}',
     '"result":[0]', '"result":{"a":0}', '"result":""', '"result":"r"', '"result":[]', '"x":1',
     '"x\\u0000y":2', '"x\\u0000y":1', '"id":1', '"done":true', '"message":"timeout"',
     '"extensions":{}',
     '"jsonrpc":"2.0","error":{"code":-32601,"message":"no such method"}',
     '"data":null,"errors":[{"message":"m","extensions":{"code":"BAD_USER_INPUT"}}]']
)  # fmt: skip


def _containers(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arrays = st.lists(inner, max_size=5).map(lambda xs: "[" + ",".join(xs) + "]")
    member = _MEMBERS | st.builds(lambda k, v: f"{json.dumps(k)}:{v}", _KEYS, inner)
    objects = st.lists(member, max_size=6).map(lambda ms: "{" + ",".join(ms) + "}")
    return arrays | objects  # repeated keys too


JSON_TEXTS = st.recursive(_SCALARS, _containers, max_leaves=25)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A JSON text (an object, mostly), with a BOM or whitespace at times, or one mangled
    near a valid text: cut short, a character added, or a second BOM."""
    text = draw(st.one_of(_containers(JSON_TEXTS), JSON_TEXTS)).encode()
    text = draw(st.sampled_from([b"", b"\xef\xbb\xbf", b" \n"])) + text
    mangle = draw(st.sampled_from(["none", "none", "cut", "insert", "bom"]))
    if mangle == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif mangle == "insert":
        at = draw(st.integers(0, len(text)))
        extra = draw(st.sampled_from([b"x", b",", b"]", b"}", b'"', b"\\", b"\x00", b"\xff"]))
        text = text[:at] + extra + text[at:]
    elif mangle == "bom":
        text = b"\xef\xbb\xbf" + text
    return text


def reference_decide(rules: RuleSet, raw: bytes, media_type: str) -> Decision:
    """`decide` before issue 18 point 3: the body parsed by orjson, every object built."""
    if not raw:
        return Decision("clean")
    try:
        doc = orjson.loads(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw)
    except orjson.JSONDecodeError:
        return Decision("invalid_json")
    try:
        verdict = rules.evaluate(doc, media_type)
    except RecursionError:
        verdict = None
    if verdict is None:
        return Decision("clean")
    delivery = apply_verdict(
        verdict, 200, UPSTREAM, decoded_json=raw.removeprefix(b"\xef\xbb\xbf"),
        fallback_retry_after=7, trace_id=TRACE,
    )  # fmt: skip
    return Decision("matched", verdict, delivery)


def _product(rules: RuleSet, raw: bytes, media_type: str) -> Decision:
    return decide(
        rules, POLICY, 200, UPSTREAM, raw, media_type, (),
        fallback_retry_after=7, trace_id=TRACE,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(RULE_SETS))
@settings(max_examples=400, derandomize=True, deadline=None)
@given(raw=bodies(), media_type=st.sampled_from([JSON_TYPE, GRAPHQL_TYPE]))
def test_a_view_decides_as_orjson_did(name: str, raw: bytes, media_type: str) -> None:
    """Every body read through a view, however small, batches included."""
    rules = RULE_SETS[name]
    with mock.patch.object(ins, "LAZY_FROM_BYTES", 0), mock.patch.object(ins, "_BATCH", NEVER):
        assert _product(rules, raw, media_type) == reference_decide(rules, raw, media_type)


@pytest.mark.parametrize("name", sorted(RULE_SETS))
@settings(max_examples=200, derandomize=True, deadline=None)
@given(raw=bodies(), pad=st.sampled_from([0, ins.LAZY_FROM_BYTES]))
def test_decide_as_routed_decides_as_orjson_did(name: str, raw: bytes, pad: int) -> None:
    """Bodies as they arrive: small ones and batches go to orjson, large ones to a view."""
    rules, raw = RULE_SETS[name], raw + b" " * pad
    assert _product(rules, raw, JSON_TYPE) == reference_decide(rules, raw, JSON_TYPE)


def _live_views() -> int:
    gc.collect()
    kinds = (jsondoc.LazyObject, jsondoc.LazyArray, simdjson.Object, simdjson.Array)
    return sum(1 for o in gc.get_objects() if isinstance(o, kinds))


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "error", "code": "AUTH", "retry": 3, "e": {"a": [true]}, "pad": "%s"}',
        b'{"data": null, "errors": [{"extensions": {"code": "UNAUTHENTICATED"}}], "p": "%s"}',
        b'{"ok": false, "error": "ratelimited", "pad": "%s"}',
    ],
)
def test_a_decision_keeps_nothing_of_the_parser(body: bytes) -> None:
    """A Decision holds str, int and bytes only: no view, so no simdjson parser either."""
    raw = body % (b"x" * ins.LAZY_FROM_BYTES)
    rules = RULE_SETS["user rules, then presets"]
    before = _live_views()
    decision = _product(rules, raw, JSON_TYPE)
    assert decision.verdict is not None
    assert _live_views() == before
    assert decision == reference_decide(rules, raw, JSON_TYPE)
