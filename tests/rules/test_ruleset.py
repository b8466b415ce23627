"""Rules (proxy.rules.ruleset): conditions, status mapping, actions, presets, batches
(SPEC 4.1-4.3).

Rules are written as YAML and parsed by `parse_text`, exactly as a user writes them; bodies
are parsed as the proxy parses them: with orjson (every object built), and as simdjson views
(proxy.wire.jsondoc, how inspection reads large bodies); `matches` and `verdict` check that
both give the same verdict.
"""

from __future__ import annotations

import math
import textwrap

import orjson
import pytest

from proxy.config.load import parse_text
from proxy.config.model import RuleConfig
from proxy.rules.ruleset import RuleSet, compile_ruleset, json_equal, text_form
from proxy.rules.verdict import Verdict
from proxy.wire import jsondoc

JSON = "application/json"
GQL = "application/graphql-response+json"

_HEAD = """\
version: 1
upstreams: {app: {url: http://127.0.0.1:3000}}
routes: [{name: main, upstream: app}]
rules:
"""


def parse_rules(yaml_rules: str) -> tuple[RuleConfig, ...]:
    """`yaml_rules` is the list under `rules:`."""
    text = _HEAD + textwrap.indent(textwrap.dedent(yaml_rules).strip("\n") + "\n", "  ")
    return parse_text(text, "rules.yaml").rules


def ruleset(
    yaml_rules: str,
    names: list[str] | None = None,
    *,
    action: str | None = None,
    jsonrpc_codes: dict[int, int] | None = None,
) -> RuleSet:
    rules = parse_rules(yaml_rules)
    chosen = names if names is not None else [r.name for r in rules]
    return compile_ruleset(chosen, rules, action=action, jsonrpc_codes=jsonrpc_codes)


def when(condition: str) -> RuleSet:
    """One rule `r` with this `when` and status 502."""
    return ruleset(f"- {{name: r, when: {condition}, status: 502}}")


def _view(body: str | object) -> object:
    """`body` as a simdjson view; orjson's value where simdjson refuses the text (integers
    beyond 64 bits), as inspection does."""
    text = body.encode() if isinstance(body, str) else orjson.dumps(body)
    try:
        return jsondoc.parse(text)
    except jsondoc.Refused:
        return orjson.loads(text)


def matches(rules: RuleSet, body: str | object, media_type: str = JSON) -> bool:
    doc = orjson.loads(body) if isinstance(body, str) else body
    found = rules.evaluate(doc, media_type)
    assert rules.evaluate(_view(body), media_type) == found
    return found is not None


def verdict(rules: RuleSet, body: str, media_type: str = JSON) -> Verdict | None:
    found = rules.evaluate(orjson.loads(body), media_type)
    assert rules.evaluate(_view(body), media_type) == found
    return found


# --- conditions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "body", "expected"),
    [
        ("{path: /a, exists: true}", '{"a": 1}', True),
        ("{path: /a, exists: true}", '{"a": null}', True),  # present, even if null
        ("{path: /a, exists: true}", '{"a": false}', True),
        ("{path: /a, exists: true}", '{"b": 1}', False),
        ("{path: /a, exists: true}", "[]", False),  # an empty batch matches nothing
        ("{path: /a, exists: true}", '"a"', False),
        ("{path: /a, exists: false}", '{"b": 1}', True),
        ("{path: /a, exists: false}", '{"a": null}', False),
        ("{path: /a/b/1, exists: true}", '{"a": {"b": [0, 1]}}', True),
        ("{path: /a/b/2, exists: true}", '{"a": {"b": [0, 1]}}', False),
        ("{path: /a~1b, exists: true}", '{"a/b": 0}', True),
        ("{path: '', exists: true}", "null", True),  # "" is the whole document
    ],
)
def test_exists(condition: str, body: str, expected: bool) -> None:
    assert matches(when(condition), body) is expected


@pytest.mark.parametrize(
    ("expected_yaml", "body_value", "expected"),
    [
        # numbers: 1 equals 1.0, but never "1" or true
        ("1", "1", True),
        ("1", "1.0", True),
        ("1.0", "1", True),
        ("1", '"1"', False),
        ("1", "true", False),
        ("0", "false", False),
        ("0", "null", False),
        ("-32005", "-32005", True),
        ("1e3", "1000", True),  # YAML 1.2 float
        ("1.5", "1.5", True),
        ("1.5", "1.50", True),
        # strings
        ("'1'", '"1"', True),
        ("'1'", "1", False),
        ("error", '"error"', True),
        ("error", '"Error"', False),
        ("on", '"on"', True),  # YAML 1.2: `on` is a string
        ("on", "true", False),
        ("''", '""', True),
        ("''", "null", False),
        # booleans: true is not 1
        ("true", "true", True),
        ("true", "1", False),
        ("true", '"true"', False),
        ("false", "false", True),
        ("false", "0", False),
        ("false", "null", False),
        # null: present null, not missing, not "null"
        ("null", "null", True),
        ("null", '"null"', False),
        ("null", "false", False),
        ("null", "0", False),
        # arrays and objects compare structurally, with the same exact typing
        ("[1, 2]", "[1, 2]", True),
        ("[1, 2]", "[1.0, 2]", True),
        ("[1, 2]", "[2, 1]", False),
        ("[1, 2]", "[true, 2]", False),
        ("[1, 2]", "[1, 2, 3]", False),
        ("[]", "[]", True),
        ("{a: 1}", '{"a": 1}', True),
        ("{a: 1}", '{"a": "1"}', False),
        ("{a: 1}", '{"a": 1, "b": 2}', False),
        ("{a: [true]}", '{"a": [true]}', True),
        ("{a: [true]}", '{"a": [1]}', False),
        ("{}", "{}", True),
        ("{}", "[]", False),
    ],
)
def test_equals_uses_exact_json_typing(expected_yaml: str, body_value: str, expected: bool) -> None:
    rules = when(f"{{path: /v, equals: {expected_yaml}}}")
    assert matches(rules, f'{{"v": {body_value}}}') is expected


def test_equals_on_missing_value_is_false() -> None:
    assert not matches(when("{path: /v, equals: null}"), "{}")


@pytest.mark.parametrize(
    ("body_value", "expected"),
    [
        ("1", True),
        ("1.0", True),
        ('"x"', True),
        ("true", True),
        ("null", True),
        ("[1]", True),
        ('{"k": "v"}', True),
        ('"1"', False),
        ("false", False),
        ("0", False),
        ('"X"', False),
        ("[1, 1]", False),
        ("[true]", False),
        ('{"k": "w"}', False),
    ],
)
def test_in(body_value: str, expected: bool) -> None:
    rules = when("{path: /v, in: [1, x, true, null, [1], {k: v}]}")
    assert matches(rules, f'{{"v": {body_value}}}') is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("timeout", '"upstream timeout here"', True),  # search: unanchored
        ("'^timeout'", '"upstream timeout"', False),  # anchors are the pattern's own
        ("'^timeout'", '"timeout upstream"', True),
        ("'timeout$'", '"timeout!"', False),
        ("'^\\d{3}$'", '"404"', True),
        ("'^\\d{3}$'", '"4040"', False),
        ("'(?i)TIMEOUT'", '"Timeout"', True),
        ("TIMEOUT", '"Timeout"', False),  # case-sensitive unless asked
        ("'a.c'", '"xabcx"', True),
        ("''", '""', True),
        ("'5'", "5", False),  # strings only: a number never matches
        ("'true'", "true", False),
        ("'x'", '["x"]', False),
        ("'x'", "null", False),
        ("'é'", '"café"', True),
    ],
)
def test_matches(pattern: str, value: str, expected: bool) -> None:
    assert matches(when(f"{{path: /v, matches: {pattern}}}"), f'{{"v": {value}}}') is expected


def test_matches_missing_is_false() -> None:
    assert not matches(when("{path: /v, matches: ''}"), "{}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"x"', True),
        ('""', False),
        ("[0]", True),
        ("[]", False),
        ('{"a": null}', True),
        ("{}", False),
        ("0", False),
        ("1", False),  # numbers are never "non-empty"
        ("null", False),
        ("false", False),
        ("true", False),
    ],
)
def test_nonempty(value: str, expected: bool) -> None:
    assert matches(when("{path: /v, nonempty: true}"), f'{{"v": {value}}}') is expected
    assert matches(when("{path: /v, nonempty: false}"), f'{{"v": {value}}}') is not expected


def test_nonempty_missing_is_false() -> None:
    assert not matches(when("{path: /v, nonempty: true}"), "{}")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"status": "error", "code": "X"}', True),
        ('{"status": "fail", "code": "X"}', True),
        ('{"status": "error"}', False),  # all: needs the code
        ('{"status": "error", "code": "X", "debug": true}', False),  # not: excluded
        ('{"status": "ok", "code": "X"}', False),
        ('{"ok": false}', True),  # the other `any` branch
        ('{"ok": 0}', False),
    ],
)
def test_all_any_not_nest(body: str, expected: bool) -> None:
    rules = when(
        "{any: ["
        "{all: [{path: /status, in: [error, fail]}, {path: /code, exists: true},"
        " {not: {path: /debug, equals: true}}]},"
        "{path: /ok, equals: false}]}"
    )
    assert matches(rules, body) is expected


def test_double_not() -> None:
    rules = when("{not: {not: {path: /a, exists: true}}}")
    assert matches(rules, '{"a": 1}')
    assert not matches(rules, "{}")


# --- wildcard paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "body", "expected"),
    [
        (
            "{path: /errors/*/extensions/code, equals: UNAUTHENTICATED}",
            '{"errors": [{"message": "a"}, {"extensions": {"code": "UNAUTHENTICATED"}}]}',
            True,
        ),
        (
            "{path: /errors/*/extensions/code, equals: UNAUTHENTICATED}",
            '{"errors": [{"extensions": {"code": "FORBIDDEN"}}]}',
            False,
        ),
        ("{path: /errors/*/extensions/code, equals: X}", '{"errors": []}', False),
        ("{path: /errors/*/message, exists: true}", '{"errors": [{"m": 1}, {"message": 2}]}', True),
        ("{path: /errors/*/message, exists: true}", '{"errors": [{"m": 1}]}', False),
        ("{path: /errors/*/message, exists: false}", '{"errors": [{"m": 1}]}', True),
        ("{path: /errors/*/message, exists: false}", '{"errors": [{"message": 1}]}', False),
        ("{path: /errors/*, nonempty: true}", '{"errors": ["", "x"]}', True),
        ("{path: /errors/*, nonempty: true}", '{"errors": ["", []]}', False),
        ("{path: /errors/*/code, in: [1, 2]}", '{"errors": [{"code": 3}, {"code": 2}]}', True),
        (
            "{path: /errors/*/msg, matches: 'rate'}",
            '{"errors": [{"msg": 5}, {"msg": "rate"}]}',
            True,
        ),
        ("{path: /errors/*/code, equals: 1}", '{"errors": {"*": {"code": 1}}}', True),
    ],
)
def test_wildcard_conditions_match_any_element(condition: str, body: str, expected: bool) -> None:
    assert matches(when(condition), body) is expected


# --- status ---------------------------------------------------------------------------------

STATUS_MAP = ruleset(
    """
    - name: r
      when: {path: /v, exists: true}
      status:
        from: /v
        map: {100: 401, true: 403, X: 404, -32005: 429, 1.5: 418, null: 410, "": 400}
        default: 502
    """
)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("100", 401),  # `100:` matches JSON 100 ...
        ('"100"', 401),  # ... and "100"
        ("100.0", 401),  # the text form of 100.0 is "100"
        ("true", 403),  # `true:` matches JSON true
        ('"true"', 403),
        ('"X"', 404),
        ('"x"', 502),  # text comparison is exact
        ("-32005", 429),
        ('"-32005"', 429),
        ("1.5", 418),
        ("null", 410),
        ('""', 400),
        ("false", 502),
        ("101", 502),
        ("[100]", 502),  # arrays and objects have no text form
        ('{"100": 1}', 502),
    ],
)
def test_status_map_matches_text_form(value: str, status: int) -> None:
    found = verdict(STATUS_MAP, f'{{"v": {value}}}')
    assert found is not None
    assert found.status == status


def test_status_message_is_the_text_form() -> None:
    found = verdict(STATUS_MAP, '{"v": 100}')
    assert found is not None
    assert found.message == "100"


RANGES = ruleset(
    """
    - name: rpc
      when: {path: /error/code, exists: true}
      status:
        from: /error/code
        map: {-32001: 404}
        ranges:
          - {min: -32099, max: -32000, status: 500}
          - {min: -32050, max: -32040, status: 503}  # shadowed by the first range
          - {min: 1, max: 99, status: 400}
        default: 502
    """
)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("-32001", 404),  # map before ranges
        ('"-32001"', 404),
        ("-32000", 500),  # ranges are inclusive
        ("-32099", 500),
        ("-32045", 500),  # the first matching range wins
        ("-32050.5", 500),
        ('"-32050"', 500),  # numeric text counts as its number
        ("-32100", 502),  # default last
        ("-31999", 502),
        ("1", 400),
        ("99", 400),
        ("100", 502),
        ("true", 502),  # true is not the number 1
        ('"1_0"', 502),  # Python syntax, not a number in JSON
        ('" 5"', 502),
        ('"nan"', 502),
        ("null", 502),
        ("[1]", 502),
        ("9007199254740993", 502),  # exact integers: beyond 2**53 must not round into range
    ],
)
def test_status_precedence_map_ranges_default(code: str, status: int) -> None:
    found = verdict(RANGES, f'{{"error": {{"code": {code}}}}}')
    assert found is not None
    assert found.status == status


def test_big_integer_at_the_edge_of_a_range() -> None:
    rules = ruleset(
        """
        - name: r
          when: {path: /c, exists: true}
          status: {from: /c, ranges: [{min: 0, max: 9007199254740992, status: 500}], default: 503}
        """
    )
    found = verdict(rules, '{"c": 9007199254740992}')
    assert found is not None
    assert found.status == 500
    found = verdict(rules, '{"c": 9007199254740993}')
    assert found is not None
    assert found.status == 503


def test_status_from_missing_value_is_default() -> None:
    rules = ruleset("- {name: r, when: {path: /a, exists: true}, status: {from: /b, default: 418}}")
    assert verdict(rules, '{"a": 1}') == Verdict("r", 418, "rewrite", "keep", None, None)


def test_fixed_status() -> None:
    rules = ruleset("- {name: r, when: {path: /a, exists: true}, status: 503}")
    assert verdict(rules, '{"a": 1}') == Verdict("r", 503, "rewrite", "keep", None, None)


def test_verdict_carries_action_body_and_message() -> None:
    rules = ruleset(
        """
        - name: env
          when: {path: /status, equals: error}
          status: {from: /code, map: {BUSY: 503}}
          action: flag
          body: problem
        """
    )
    assert verdict(rules, '{"status": "error", "code": "BUSY"}') == Verdict(
        rule="env", status=503, action="flag", body="problem", retry_after=None, message="BUSY"
    )


# --- retry_after_from -----------------------------------------------------------------------

RETRY = ruleset(
    """
    - name: r
      when: {path: /status, equals: error}
      status: 503
      retry_after_from: /retry
    """
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30),
        ('"30"', 30),
        ("0", 0),
        ("1.2", 2),  # rounded up: never earlier than the upstream asked
        ('"1.2"', 2),
        ("0.01", 1),
        ("2.0", 2),
        ('"1e3"', 1000),
        ('"07"', 7),
        ("-1", None),  # negative is ignored
        ('"-5"', None),
        ("-0.5", None),
        ('"abc"', None),
        ('"1_000"', None),
        ('" 5"', None),
        ('"inf"', None),
        ('"1e999"', None),
        ("true", None),
        ("null", None),
        ("[5]", None),
        ('{"s": 5}', None),
    ],
)
def test_retry_after_from(value: str, seconds: int | None) -> None:
    found = verdict(RETRY, f'{{"status": "error", "retry": {value}}}')
    assert found is not None
    assert found.retry_after == seconds
    if seconds is not None:
        assert type(found.retry_after) is int


def test_retry_after_from_missing() -> None:
    found = verdict(RETRY, '{"status": "error"}')
    assert found is not None
    assert found.retry_after is None


# --- actions and presets --------------------------------------------------------------------

ENVELOPE = """
- name: mine
  when: {path: /status, equals: error}
  status: {from: /code, map: {AUTH_EXPIRED: 401}, default: 500}
"""
SLACK_AND_MINE = '{"ok": false, "error": "invalid_auth", "status": "error", "code": "AUTH_EXPIRED"}'


@pytest.mark.parametrize(
    ("names", "rule", "status"),
    [
        (["mine", "slack"], "mine", 401),
        (["slack", "mine"], "slack", 401),
        (["error-envelope", "mine"], "error-envelope", 400),  # "invalid auth": "invalid"
        (["graphql", "jsonrpc", "mine", "slack"], "mine", 401),  # presets that miss are skipped
    ],
)
def test_first_match_wins_in_order(names: list[str], rule: str, status: int) -> None:
    found = verdict(ruleset(ENVELOPE, names), SLACK_AND_MINE)
    assert found is not None
    assert (found.rule, found.status, found.action) == (rule, status, "rewrite")


def test_no_rule_matches() -> None:
    rules = ruleset(ENVELOPE, ["mine", "slack", "graphql", "jsonrpc", "error-envelope"])
    for body in ('{"error": null}', '{"errors": []}', '{"ok": true}', '{"status": "ok"}', "5"):
        assert verdict(rules, body) is None


def test_only_named_rules_are_compiled() -> None:
    rules = ruleset(ENVELOPE, ["slack"])
    assert rules.names == ("slack",)
    assert verdict(rules, '{"status": "error", "code": "AUTH_EXPIRED"}') is None


def test_empty_ruleset() -> None:
    rules = compile_ruleset([], ())
    assert not rules
    assert rules.names == ()
    assert rules.evaluate({"ok": False}, JSON) is None


def test_unknown_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown rule or preset 'nope'"):
        compile_ruleset(["nope"], ())


@pytest.mark.parametrize(
    ("override", "rule_action", "expected"),
    [
        (None, "rewrite", "rewrite"),
        (None, "flag", "flag"),
        ("flag", "rewrite", "flag"),  # the route's report-only rollout
        ("rewrite", "flag", "rewrite"),
        ("flag", "flag", "flag"),
    ],
)
def test_route_action_overrides_user_rules(
    override: str | None, rule_action: str, expected: str
) -> None:
    rules = ruleset(
        f"- {{name: r, when: {{path: /a, exists: true}}, status: 503, action: {rule_action}}}",
        action=override,
    )
    found = verdict(rules, '{"a": 1}')
    assert found is not None
    assert (found.action, found.status) == (expected, 503)


@pytest.mark.parametrize(
    ("names", "body", "media_type", "override", "action", "status"),
    [
        (["slack"], '{"ok": false, "error": "ratelimited"}', JSON, None, "rewrite", 429),
        (["slack"], '{"ok": false, "error": "ratelimited"}', JSON, "flag", "flag", 429),
        # GraphQL over legacy application/json is flag-only by itself ...
        (["graphql"], '{"errors": [{"extensions": {"code": "FORBIDDEN"}}]}', JSON, None,
         "flag", 403),
        # ... and stays a flag under a route's `action: rewrite` (rewriting breaks clients)
        (["graphql"], '{"errors": [{"extensions": {"code": "FORBIDDEN"}}]}', JSON, "rewrite",
         "flag", 403),
        (["graphql"], '{"data": null, "errors": [{"type": "NOT_FOUND"}]}', GQL, None,
         "rewrite", 404),
        (["graphql"], '{"data": null, "errors": [{"type": "NOT_FOUND"}]}', GQL, "flag",
         "flag", 404),
        (["error-envelope"], '{"error": "quota exceeded"}', JSON, "flag", "flag", 429),
    ],
)  # fmt: skip
def test_presets_and_the_action_override(
    names: list[str], body: str, media_type: str, override: str | None, action: str, status: int
) -> None:
    found = verdict(ruleset("[]", names, action=override), body, media_type)
    assert found is not None
    assert (found.rule, found.action, found.status, found.body) == (
        names[0],
        action,
        status,
        "keep",
    )


@pytest.mark.parametrize(
    ("codes", "status"),
    [(None, 500), ({-32005: 429}, 429), ({-32005: 503}, 503), ({-32006: 429}, 500)],
)
def test_jsonrpc_codes_reach_the_preset(codes: dict[int, int] | None, status: int) -> None:
    rules = ruleset("[]", ["jsonrpc"], jsonrpc_codes=codes)
    found = verdict(rules, '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "x"}}')
    assert found is not None
    assert (found.rule, found.status) == ("jsonrpc", status)


# --- top-level arrays (JSON-RPC batches) ----------------------------------------------------

BATCH = ruleset(
    """
    - name: r
      when: {path: /error/code, exists: true}
      status: {from: /error/code, map: {1: 400, 2: 404, 3: 429}}
      retry_after_from: /error/retry
      body: problem
    """
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # every element matches: the first element's verdict, as it is
        (
            '[{"error": {"code": 2}}, {"error": {"code": 3}}]',
            Verdict("r", 404, "rewrite", "problem", None, "2", False),
        ),
        (
            '[{"error": {"code": 3, "retry": 7}}]',
            Verdict("r", 429, "rewrite", "problem", 7, "3", False),
        ),
        # some match: flag only, with the status of the first matching element
        (
            '[{"result": 1}, {"error": {"code": 3}}, {"error": {"code": 2}}]',
            Verdict("r", 429, "flag", "problem", None, "3", True),
        ),
        (
            '[{"error": {"code": 1}}, {"result": 1}]',
            Verdict("r", 400, "flag", "problem", None, "1", True),
        ),
        (
            '[{"result": 1}, {"error": {"code": 2}}, {"result": 2}, {"error": {"code": 3}}]',
            Verdict("r", 404, "flag", "problem", None, "2", True),
        ),
        # nothing matches, or nothing to match
        ('[{"result": 1}, {"result": 2}]', None),
        ("[]", None),
        ('[1, null, "x"]', None),
    ],
)
def test_batches(body: str, expected: Verdict | None) -> None:
    assert verdict(BATCH, body) == expected


def test_partial_batch_is_flagged_even_when_the_route_forces_rewrite() -> None:
    rules = ruleset("[]", ["jsonrpc"], action="rewrite")
    body = (
        '[{"jsonrpc": "2.0", "id": 1, "result": "0x1"},'
        ' {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "no method"}}]'
    )
    found = verdict(rules, body)
    assert found is not None
    assert (found.rule, found.status, found.action, found.partial_batch) == (
        "jsonrpc",
        404,
        "flag",
        True,
    )


def test_batch_with_presets_uses_first_element() -> None:
    rules = ruleset("[]", ["jsonrpc"])
    body = (
        '[{"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "bad"}},'
        ' {"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "boom"}}]'
    )
    found = verdict(rules, body)
    assert found is not None
    assert (found.status, found.action, found.partial_batch) == (400, "rewrite", False)


def test_nested_array_element_is_evaluated_as_a_value() -> None:
    # only the top level is a batch; an element that is itself an array is one value
    rules = when("{path: /0, equals: 1}")
    assert matches(rules, "[[1], [1]]")
    assert verdict(rules, "[[1], [2]]") == Verdict("r", 502, "flag", partial_batch=True)


# --- regular expressions run in linear time -------------------------------------------------


MIB_OF_A = "a" * (1 << 20)


@pytest.mark.parametrize(
    ("pattern", "hit"),
    [
        ("'(a+)+$'", MIB_OF_A),
        ("'^(a|aa)*$'", MIB_OF_A),
        ("'^(a|a)*$'", MIB_OF_A),
        ("'(a*)*b'", MIB_OF_A + "b"),
    ],
    ids=["nested-plus", "overlapping-alternation", "identical-alternation", "nested-star"],
)
def test_pathological_regex_on_a_huge_string(pattern: str, hit: str) -> None:
    # a backtracking engine would not finish on the miss; RE2 is linear in the input
    rules = when(f"{{path: /m, matches: {pattern}}}")
    miss = rules.evaluate({"m": MIB_OF_A + "!"}, JSON)
    assert miss is None
    found = rules.evaluate({"m": hit}, JSON)
    assert found == Verdict("r", 502, "rewrite")


# --- json_equal and text_form ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1, True),
        (1, 1.0, True),
        (0, -0.0, True),
        (1, "1", False),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (True, True, True),
        (False, False, True),
        (True, False, False),
        (None, None, True),
        (None, False, False),
        (None, 0, False),
        (None, "", False),
        ("", "", True),
        ("a", "a", True),
        ("a", "A", False),
        ([], [], True),
        ([1, [2]], [1.0, [2.0]], True),
        ([1], [1, 1], False),
        ([1], (1,), False),  # only JSON arrays (lists) compare as arrays
        ({}, {}, True),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"b": 1}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),  # key order does not matter
        ({}, [], False),
        (float("inf"), float("inf"), True),
    ],
)
def test_json_equal(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal
    # an array or object of a body may be a simdjson view: the same answers
    views = [jsondoc.parse(orjson.dumps(x)) if isinstance(x, list | dict) else x for x in (a, b)]
    for x, y in ((views[0], b), (a, views[1]), tuple(views)):
        assert json_equal(x, y) is equal
        assert json_equal(y, x) is equal


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "x"),
        ("", ""),
        ("100", "100"),
        (100, "100"),
        (-32005, "-32005"),
        (100.0, "100"),
        (-0.0, "0"),
        (1.5, "1.5"),
        (1e20, "100000000000000000000"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ([1], None),
        ({"a": 1}, None),
    ],
)
def test_text_form(value: object, text: str | None) -> None:
    assert text_form(value) == text


def test_text_form_of_non_finite_floats() -> None:
    assert text_form(math.inf) == "inf"
    assert text_form(math.nan) == "nan"
