"""Rule tracing for `tunnelguard explain`: each rule re-evaluated on one JSON value, with reasons.

Pure.  `trace_rules` tries a route's compiled rules in order, as `RuleSet` does, and says for
each why it matched or not: a user rule's `when` tree node by node (`trace_when`) and how its
status was found (`trace_status`); a preset's checks, facts and table or keyword row, read
from the preset's own public tables (`proxy.presets`).  Tests hold every trace in agreement
with `rule.match` and `RuleSet.evaluate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.model import AllOf, AnyOf, Not, When
from proxy.rules.presets import (
    ENVELOPE_STATUSES,
    FALLBACK_STATUS,
    GRAPHQL_RESPONSE_JSON,
    GRAPHQL_STATUS,
    JSONRPC_SERVER_ERROR_MAX,
    JSONRPC_SERVER_ERROR_MIN,
    JSONRPC_STATUS,
    SLACK_STATUS,
    JsonRpcPreset,
    KeywordHit,
    envelope_message,
    graphql_foreign_key,
    keyword_row,
    resource_key,
)
from proxy.rules.ruleset import (
    PresetRule,
    Rule,
    UserRule,
    compile_condition,
    json_number,
    text_form,
)
from proxy.wire.pointer import MISSING, compile_pointer, escape_token

# -- showing body values ---------------------------------------------------------------------

_CLIP_DEPTH = 64
"""Body values are shown to this nesting depth: printing a 1000-deep array would recurse."""
_CLIPPED = "..."
_SHOW_LIMIT = 80


def clip(value: object, depth: int = _CLIP_DEPTH) -> object:
    """`value` with arrays and objects nested deeper than `depth` replaced by "..."."""
    if isinstance(value, dict):
        return {k: clip(v, depth - 1) for k, v in value.items()} if depth > 0 else _CLIPPED
    if isinstance(value, list):
        return [clip(v, depth - 1) for v in value] if depth > 0 else _CLIPPED
    return value


def show(value: object) -> str:
    """A body value for a person: JSON text, cut to one short line."""
    if value is MISSING:
        return "missing"
    text = json.dumps(clip(value, 8), ensure_ascii=False)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


# -- user rules: the `when` tree and the status ----------------------------------------------

_TRACE_FOUND_LIMIT = 20
"""Values of a `*` pointer kept in a trace: enough to read, bounded for huge arrays."""


@dataclass(frozen=True, slots=True)
class ConditionTrace:
    """One node of a `when` tree evaluated against one document.

    `op` is all | any | not, or a leaf test (exists | equals | in | matches | nonempty) with
    its `path`, its operand `expected`, and `found`: the first values the pointer reached, in
    document order (empty: it reached nothing); `found_count` counts them all.
    """

    op: str
    held: bool
    path: str | None = None
    expected: object = None
    found: tuple[object, ...] = ()
    found_count: int = 0
    children: tuple[ConditionTrace, ...] = ()


def trace_when(when: When, doc: object) -> ConditionTrace:
    """Evaluate `when` against `doc` as `compile_when` does, recording every node.

    Every node is evaluated (no short-circuit), so each condition can be shown; a leaf's
    `held` comes from the very predicate `compile_when` builds, and all/any/not combine
    their children as the compiled tree does, so the root's `held` is the rule's answer.
    """
    if isinstance(when, AllOf):
        children = tuple(trace_when(w, doc) for w in when.items)
        return ConditionTrace("all", all(c.held for c in children), children=children)
    if isinstance(when, AnyOf):
        children = tuple(trace_when(w, doc) for w in when.items)
        return ConditionTrace("any", any(c.held for c in children), children=children)
    if isinstance(when, Not):
        child = trace_when(when.item, doc)
        return ConditionTrace("not", not child.held, children=(child,))
    found = list(compile_pointer(when.path).find(doc))
    return ConditionTrace(
        when.op,
        compile_condition(when)(doc),
        when.path,
        when.value,
        tuple(found[:_TRACE_FOUND_LIMIT]),
        len(found),
    )


@dataclass(frozen=True, slots=True)
class StatusTrace:
    """How a matching user rule's status (and Retry-After seconds) were found.

    `step` is fixed | map | range | default; `found` is the value at `source` (the `from`
    pointer), or MISSING; `retry_found` the value at `retry_after_from`, or MISSING.
    """

    status: int
    step: str
    source: str | None = None
    found: object = MISSING
    text: str | None = None
    retry_after_from: str | None = None
    retry_found: object = MISSING
    retry_after: int | None = None


def trace_status(rule: UserRule, doc: object) -> StatusTrace:
    """Re-derive what `rule.match` decides about a document its `when` holds for."""
    spec = rule.status
    retry_from = rule.retry_after_from
    retry_found = retry_from.first(doc) if retry_from is not None else MISSING
    seconds = json_number(retry_found) if retry_found is not MISSING else None
    retry = math.ceil(seconds) if seconds is not None and seconds >= 0 else None
    retry_text = retry_from.text if retry_from is not None else None
    if spec.fixed is not None or spec.source is None:
        status = spec.fixed or spec.default
        return StatusTrace(status, "fixed", None, MISSING, None, retry_text, retry_found, retry)
    found = spec.source.first(doc)
    text = text_form(found) if found is not MISSING else None
    step, status = "default", spec.default
    if text is not None and text in spec.table:
        step, status = "map", spec.table[text]
    elif spec.ranges and (number := json_number(found)) is not None:
        for low, high, mapped in spec.ranges:
            if low <= number <= high:
                step, status = "range", mapped
                break
    return StatusTrace(status, step, spec.source.text, found, text, retry_text, retry_found, retry)


# -- one rule ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """A value a rule looked at: `name` is a JSON pointer or a plain label; MISSING = absent."""

    name: str
    value: object


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One rule tried on one JSON value, and why it matched or not.

    `step` says how the status was chosen: for user rules fixed | map | range | default;
    for presets table | override | keyword | server-range | jsend-fail | fallback.
    `tried` is False for rules after the first match (first match wins).
    """

    rule: str
    kind: str  # rule | preset
    matched: bool
    reason: str
    status: int | None = None
    action: str | None = None
    step: str | None = None
    facts: tuple[Fact, ...] = ()
    keyword: KeywordHit | None = None
    when: ConditionTrace | None = None
    status_trace: StatusTrace | None = None
    tried: bool = True

    @property
    def outcome(self) -> str:
        return "matched" if self.matched else ("no_match" if self.tried else "not_tried")


def _get(doc: object, key: str) -> object:
    return doc.get(key, MISSING) if isinstance(doc, dict) else MISSING


@dataclass(frozen=True, slots=True)
class _Found:
    """What a preset trace found: no match (status None) or a hit."""

    reason: str
    facts: tuple[Fact, ...]
    status: int | None = None
    step: str | None = None
    flag_only: bool = False
    keyword: KeywordHit | None = None


def _slack(doc: object) -> _Found:
    ok, error = _get(doc, "ok"), _get(doc, "error")
    facts = (Fact("/ok", ok), Fact("/error", error))
    if not isinstance(doc, dict):
        return _Found("the body is not a JSON object", ())
    if ok is not False:
        return _Found(f"/ok is {show(ok)}, not false", facts)
    if not isinstance(error, str):
        return _Found(
            f"/ok is false; /error is {show(error)}, not a string", facts, 502, "fallback"
        )
    status = SLACK_STATUS.get(error)
    if status is None:
        return _Found(f"/ok is false; {error!r} is not in Slack's table", facts, 502, "fallback")
    return _Found(f"/ok is false; {error!r} is in Slack's table", facts, status, "table")


def _graphql(doc: object, media_type: str) -> _Found:
    data, errors = _get(doc, "data"), _get(doc, "errors")
    facts = [Fact("media type", media_type), Fact("/data", data)]
    if not isinstance(doc, dict):
        return _Found("the body is not a JSON object", ())
    if not isinstance(errors, list) or not errors:
        return _Found(f"no non-empty /errors list (/errors is {show(errors)})", (*facts,))
    foreign = graphql_foreign_key(doc) if media_type != GRAPHQL_RESPONSE_JSON else None
    if foreign is not None:
        return _Found(
            f"legacy media type {media_type!r} and `{foreign}` is not a GraphQL response key "
            "(data, errors, extensions): not a GraphQL response",
            (*facts, Fact(f"/{escape_token(foreign)}", doc[foreign])),
        )
    first = errors[0]
    extensions = _get(first, "extensions")
    code_at, code = "/errors/0/extensions/code", _get(extensions, "code")
    facts.append(Fact(code_at, code))
    if not isinstance(code, str):
        code_at, code = "/errors/0/type", _get(first, "type")
        facts.append(Fact(code_at, code))
    facts.append(Fact("/errors/0/message", _get(first, "message")))
    if isinstance(code, str) and code in GRAPHQL_STATUS:
        why, status, step = (
            f"{code_at} {code!r} is in the GraphQL table",
            GRAPHQL_STATUS[code],
            "table",
        )
    else:
        why, status, step = (
            f"{code_at} is {show(code)}: not in the GraphQL table",
            FALLBACK_STATUS,
            "fallback",
        )
    if media_type != GRAPHQL_RESPONSE_JSON:
        return _Found(
            f"{why}; legacy media type {media_type!r}: flag only", (*facts,), status, step, True
        )
    if data is not MISSING and data is not None:
        return _Found(
            f"{why}; partial result (/data is not null): flag only", (*facts,), status, step, True
        )
    return _Found(f"{why}; no data: rewritable", (*facts,), status, step)


def _jsonrpc(doc: object, codes: dict[int, int]) -> _Found:
    version, error = _get(doc, "jsonrpc"), _get(doc, "error")
    code, raw = _get(error, "code"), _get(error, "message")
    facts = (Fact("/jsonrpc", version), Fact("/error/code", code), Fact("/error/message", raw))
    if not isinstance(doc, dict):
        return _Found("the body is not a JSON object", ())
    if version != "2.0":
        return _Found(f'/jsonrpc is {show(version)}, not "2.0"', facts)
    if not isinstance(error, dict):
        return _Found(f"/error is {show(error)}, not an object", facts)
    if type(code) is not int:
        return _Found(f"/error/code is {show(code)}, not an integer", facts)
    if code in codes:
        return _Found(f"route override for code {code}", facts, codes[code], "override")
    if code in JSONRPC_STATUS:
        return _Found(f"standard code {code}", facts, JSONRPC_STATUS[code], "table")
    keyword = keyword_row(raw) if isinstance(raw, str) else None
    if keyword is not None:
        why = f"code {code} is not standard; /error/message classified by keyword"
        return _Found(why, facts, keyword.status, "keyword", keyword=keyword)
    if JSONRPC_SERVER_ERROR_MIN <= code <= JSONRPC_SERVER_ERROR_MAX:
        why = f"code {code} is in the server-error range, message unclassified"
        return _Found(why, facts, 500, "server-range")
    why = f"code {code}: no table, keyword or range applies"
    return _Found(why, facts, FALLBACK_STATUS, "fallback")


def _envelope(doc: object) -> _Found:
    error, success, status_field = _get(doc, "error"), _get(doc, "success"), _get(doc, "status")
    facts = [Fact("/error", error), Fact("/success", success), Fact("/status", status_field)]
    if not isinstance(doc, dict):
        return _Found("the body is not a JSON object", ())
    triggers = []
    if isinstance(error, str | dict | list) and len(error) > 0:
        triggers.append("/error is non-empty")
    if success is False:
        triggers.append("/success is false")
    if isinstance(status_field, str) and status_field in ENVELOPE_STATUSES:
        triggers.append(f"/status is {status_field!r}")
    if not triggers:
        return _Found(
            "no trigger: /error is not a non-empty string, object or array; /success is not "
            "false; /status is not error, fail or failure",
            (*facts,),
        )
    resource = resource_key(doc)
    if resource is not None:
        key, what = resource
        facts.append(Fact(f"/{escape_token(key)}", doc[key]))
        return _Found(
            f"{' and '.join(triggers)}, but `{key}` is a {what}: a resource that describes a "
            "failure, not a tunnelled error",
            (*facts,),
        )
    found = envelope_message(doc)
    message, source = (None, None) if found is None else found
    facts += [Fact("message", message if message is not None else MISSING)]
    facts += [Fact("message from", source if source is not None else MISSING)]
    why = " and ".join(triggers)
    keyword = keyword_row(message) if message is not None else None
    if keyword is not None:
        return _Found(
            f"{why}; message classified by keyword",
            (*facts,),
            keyword.status,
            "keyword",
            keyword=keyword,
        )
    if status_field == "fail":
        return _Found(f"{why}; message unclassified, JSend fail", (*facts,), 400, "jsend-fail")
    return _Found(f"{why}; message unclassified", (*facts,), FALLBACK_STATUS, "fallback")


def explain_rule(rule: Rule, doc: object, media_type: str, when: When | None = None) -> RuleTrace:
    """Re-evaluate one compiled rule on one JSON value (not a batch), recording why.

    `when` is the user rule's condition tree from the config (compiled rules keep only
    the predicate).  Agrees with `rule.match`: matched exactly when it returns a verdict,
    with the same status and action.
    """
    if isinstance(rule, UserRule):
        if when is None:
            raise ValueError(f"rule {rule.name!r}: its `when` is needed to explain it")
        tree = trace_when(when, doc)
        if not tree.held:
            return RuleTrace(
                rule.name, "rule", False, "the `when` condition does not hold", when=tree
            )
        st = trace_status(rule, doc)
        reason = "the `when` condition holds"
        return RuleTrace(
            rule.name,
            "rule",
            True,
            reason,
            st.status,
            rule.action,
            st.step,
            when=tree,
            status_trace=st,
        )
    return _explain_preset(rule, doc, media_type)


def _explain_preset(rule: PresetRule, doc: object, media_type: str) -> RuleTrace:
    preset = rule.preset
    if rule.name == "slack":
        found = _slack(doc)
    elif rule.name == "graphql":
        found = _graphql(doc, media_type)
    elif rule.name == "jsonrpc":
        codes = preset.codes if isinstance(preset, JsonRpcPreset) else {}
        found = _jsonrpc(doc, dict(codes))
    else:
        found = _envelope(doc)
    if found.status is None:
        return RuleTrace(rule.name, "preset", False, found.reason, facts=found.facts)
    action = "flag" if found.flag_only else (rule.action or "rewrite")
    return RuleTrace(
        rule.name, "preset", True, found.reason, found.status, action, found.step,
        found.facts, found.keyword,
    )  # fmt: skip


def trace_rules(
    rules: Sequence[tuple[Rule, When | None]], doc: object, media_type: str
) -> tuple[RuleTrace, ...]:
    """Every rule in order on one JSON value; after the first match the rest are not tried."""
    traces: list[RuleTrace] = []
    for rule, when in rules:
        if any(t.matched for t in traces):
            kind = "rule" if isinstance(rule, UserRule) else "preset"
            traces.append(RuleTrace(rule.name, kind, False, "a rule above matched", tried=False))
        else:
            traces.append(explain_rule(rule, doc, media_type, when))
    return tuple(traces)
