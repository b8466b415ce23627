"""`tunnelguard explain`: one upstream response dry-run through a route's rules, with reasons.

The verdict and what the client would get come from the proxy's own pure pipeline
(`ruletests.simulate`, `RuleSet.evaluate`); the reasons come from `explain_rule`, which
re-evaluates each rule while recording what it looked at.  Tests hold the two in agreement.
Pure apart from the random trace id in a generated problem body; the CLI does the I/O.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from . import headers as h
from . import inspect as ins
from .config import Config, RouteConfig, TestResponse, When
from .metrics import status_class
from .pointer import MISSING
from .presets import (
    _CLASSIFIER,
    _ENVELOPE_STATUSES,
    _ERROR_FIELDS,
    _FALLBACK,
    _GRAPHQL_STATUS,
    _JSONRPC_STATUS,
    _SERVER_ERROR_MAX,
    _SERVER_ERROR_MIN,
    _SLACK_STATUS,
    _TOP_FIELDS,
    GRAPHQL_RESPONSE_JSON,
    JsonRpcPreset,
)
from .rules import (
    ConditionTrace,
    StatusTrace,
    Verdict,
    _PresetRule,
    _Rule,
    _UserRule,
    trace_status,
    trace_when,
)
from .ruletests import Simulation, simulate
from .runtime import Route, build

# -- tracing one rule ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """A value a rule looked at: `name` is a JSON pointer or a plain label; MISSING = absent."""

    name: str
    value: object


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """The SPEC 4.4 classifier row that matched an error message."""

    keyword: str
    row: tuple[str, ...]
    status: int


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


def classify_trace(message: str | None) -> KeywordHit | None:
    """`presets.classify`, also saying which keyword of which row matched."""
    if message is None:
        return None
    text = message.lower().replace("_", " ").replace("-", " ")
    for keywords, status in _CLASSIFIER:
        for keyword in keywords:
            if keyword in text:
                return KeywordHit(keyword, keywords, status)
    return None


def _get(doc: object, key: str) -> object:
    return doc.get(key, MISSING) if isinstance(doc, dict) else MISSING


_CLIP_DEPTH = 64
"""Body values are shown to this nesting depth: printing a 1000-deep array would recurse."""
_CLIPPED = "..."
_SHOW_LIMIT = 80
_PROBLEM_LIMIT = 2000  # a problem body embeds the upstream's JSON, which may be large


def clip(value: object, depth: int = _CLIP_DEPTH) -> object:
    """`value` with arrays and objects nested deeper than `depth` replaced by "..."."""
    if isinstance(value, dict):
        return {k: clip(v, depth - 1) for k, v in value.items()} if depth > 0 else _CLIPPED
    if isinstance(value, list):
        return [clip(v, depth - 1) for v in value] if depth > 0 else _CLIPPED
    return value


def _show(value: object) -> str:
    """A body value for a person: JSON text, cut to one short line."""
    if value is MISSING:
        return "missing"
    text = json.dumps(clip(value, 8), ensure_ascii=False)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


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
        return _Found(f"/ok is {_show(ok)}, not false", facts)
    if not isinstance(error, str):
        return _Found(
            f"/ok is false; /error is {_show(error)}, not a string", facts, 502, "fallback"
        )
    status = _SLACK_STATUS.get(error)
    if status is None:
        return _Found(f"/ok is false; {error!r} is not in Slack's table", facts, 502, "fallback")
    return _Found(f"/ok is false; {error!r} is in Slack's table", facts, status, "table")


def _graphql(doc: object, media_type: str) -> _Found:
    data, errors = _get(doc, "data"), _get(doc, "errors")
    facts = [Fact("media type", media_type), Fact("/data", data)]
    if not isinstance(doc, dict):
        return _Found("the body is not a JSON object", ())
    if not isinstance(errors, list) or not errors:
        return _Found(f"no non-empty /errors list (/errors is {_show(errors)})", (*facts,))
    first = errors[0]
    extensions = _get(first, "extensions")
    code_at, code = "/errors/0/extensions/code", _get(extensions, "code")
    facts.append(Fact(code_at, code))
    if not isinstance(code, str):
        code_at, code = "/errors/0/type", _get(first, "type")
        facts.append(Fact(code_at, code))
    facts.append(Fact("/errors/0/message", _get(first, "message")))
    if isinstance(code, str) and code in _GRAPHQL_STATUS:
        why, status, step = (
            f"{code_at} {code!r} is in the GraphQL table",
            _GRAPHQL_STATUS[code],
            "table",
        )
    else:
        why, status, step = (
            f"{code_at} is {_show(code)}: not in the GraphQL table",
            _FALLBACK,
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
        return _Found(f'/jsonrpc is {_show(version)}, not "2.0"', facts)
    if not isinstance(error, dict):
        return _Found(f"/error is {_show(error)}, not an object", facts)
    if type(code) is not int:
        return _Found(f"/error/code is {_show(code)}, not an integer", facts)
    if code in codes:
        return _Found(f"route override for code {code}", facts, codes[code], "override")
    if code in _JSONRPC_STATUS:
        return _Found(f"standard code {code}", facts, _JSONRPC_STATUS[code], "table")
    keyword = classify_trace(raw if isinstance(raw, str) else None)
    if keyword is not None:
        why = f"code {code} is not standard; /error/message classified by keyword"
        return _Found(why, facts, keyword.status, "keyword", keyword=keyword)
    if _SERVER_ERROR_MIN <= code <= _SERVER_ERROR_MAX:
        why = f"code {code} is in the server-error range, message unclassified"
        return _Found(why, facts, 500, "server-range")
    return _Found(f"code {code}: no table, keyword or range applies", facts, _FALLBACK, "fallback")


def _envelope_message(doc: dict[object, object], error: object) -> tuple[str | None, str | None]:
    """`presets._envelope_message`, also saying where the message came from."""
    if isinstance(error, str) and error:
        return error, "/error"
    if isinstance(error, dict):
        for key in _ERROR_FIELDS:
            value = error.get(key)
            if isinstance(value, str) and value:
                return value, f"/error/{key}"
    elif isinstance(error, list) and error and isinstance(error[0], dict):
        value = error[0].get("message")
        if isinstance(value, str) and value:
            return value, "/error/0/message"
    for key in _TOP_FIELDS:
        value = doc.get(key)
        if isinstance(value, str) and value:
            return value, f"/{key}"
    return None, None


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
    if isinstance(status_field, str) and status_field in _ENVELOPE_STATUSES:
        triggers.append(f"/status is {status_field!r}")
    if not triggers:
        return _Found(
            "no trigger: /error is not a non-empty string, object or array; /success is not "
            "false; /status is not error, fail or failure",
            (*facts,),
        )
    message, source = _envelope_message(doc, error)
    facts += [Fact("message", message if message is not None else MISSING)]
    facts += [Fact("message from", source if source is not None else MISSING)]
    why = " and ".join(triggers)
    keyword = classify_trace(message)
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
    return _Found(f"{why}; message unclassified", (*facts,), _FALLBACK, "fallback")


def explain_rule(rule: _Rule, doc: object, media_type: str, when: When | None = None) -> RuleTrace:
    """Re-evaluate one compiled rule on one JSON value (not a batch), recording why.

    `when` is the user rule's condition tree from the config (compiled rules keep only
    the predicate).  Agrees with `rule.match`: matched exactly when it returns a verdict,
    with the same status and action.
    """
    if isinstance(rule, _UserRule):
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


def _explain_preset(rule: _PresetRule, doc: object, media_type: str) -> RuleTrace:
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
    rules: Sequence[tuple[_Rule, When | None]], doc: object, media_type: str
) -> tuple[RuleTrace, ...]:
    """Every rule in order on one JSON value; after the first match the rest are not tried."""
    traces: list[RuleTrace] = []
    for rule, when in rules:
        if any(t.matched for t in traces):
            kind = "rule" if isinstance(rule, _UserRule) else "preset"
            traces.append(RuleTrace(rule.name, kind, False, "a rule above matched", tried=False))
        else:
            traces.append(explain_rule(rule, doc, media_type, when))
    return tuple(traces)


# -- the whole response ----------------------------------------------------------------------

_DECODED = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "identity"})


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a top-level JSON array (a batch), judged on its own."""

    index: int
    rules: tuple[RuleTrace, ...]

    @property
    def match(self) -> RuleTrace | None:
        return next((t for t in self.rules if t.matched), None)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything `explain` reports about one upstream response on one route.

    `sim` is what the proxy would deliver; `verdict` what `RuleSet.evaluate` decided (None
    when nothing matched or the body was not inspected).  A parsed body has `rules` (one
    JSON value) or `elements` (a top-level array, SPEC 4.1).
    """

    config: Config
    route: RouteConfig
    compiled: Route
    override: str | None  # the action imposed on every rule of the route, if any
    override_from: str | None  # route | global
    status: int
    headers: tuple[tuple[str, str], ...]
    body_bytes: int
    media_type: str
    encodings: tuple[str, ...]
    sim: Simulation
    buffered: bool
    reason: str  # why the inspection ended as it did
    document: str | None  # object | array | string | number | boolean | null
    rules: tuple[RuleTrace, ...] | None
    elements: tuple[Element, ...] | None
    verdict: Verdict | None


def _kind(doc: object) -> str:
    if isinstance(doc, dict):
        return "object"
    if isinstance(doc, list):
        return "array"
    if isinstance(doc, str):
        return "string"
    if isinstance(doc, bool):
        return "boolean"
    return "null" if doc is None else "number"


def _ranges(statuses: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in statuses)


def explain(
    config: Config,
    route_name: str | None,
    status: int,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> Explanation:
    """Explain `body` (the bytes as sent, maybe compressed) answered with `status` and
    `headers` on the route `route_name` (default: the first).  KeyError: unknown route."""
    runtime = build(config)
    route_cfg = config.routes[0]
    if route_name is not None:
        route_cfg = {r.name: r for r in config.routes}[route_name]
    route = next(r for r in runtime.routes if r.name == route_cfg.name)
    sim = simulate(
        route.rules,
        runtime,
        TestResponse(status, tuple(headers), body),
        fallback_retry_after=route.fallback_retry_after,
    )
    mtype = ins.media_type(h.get(headers, "content-type"))
    codings = ins.encodings(h.get(headers, "content-encoding"))
    buffered, reason, doc = _inspection(
        config, runtime.inspect, route, sim, status, mtype, codings, body
    )
    rules: tuple[RuleTrace, ...] | None = None
    elements: tuple[Element, ...] | None = None
    verdict = None
    if doc is not MISSING:
        whens = {r.name: r.when for r in config.rules}
        pairs = tuple((rule, whens.get(rule.name)) for rule in route.rules.rules)
        try:
            verdict = route.rules.evaluate(doc, mtype)
            if isinstance(doc, list):
                elements = tuple(
                    Element(i, trace_rules(pairs, x, mtype)) for i, x in enumerate(doc)
                )
                reason = _batch_reason(elements)
            else:
                rules = trace_rules(pairs, doc, mtype)
                hit = next((t for t in rules if t.matched), None)
                reason = f"rule {hit.rule!r} matched" if hit is not None else "no rule matched"
        except RecursionError:  # as `inspect.examine`: a pathological depth matches nothing
            verdict, rules, elements = None, None, None
            reason = "the body is nested too deeply to evaluate: treated as matching nothing"
    override_from = "route" if route_cfg.action else ("global" if config.action else None)
    return Explanation(
        config, route_cfg, route, route_cfg.action or config.action, override_from, status,
        tuple(headers), len(body), mtype, codings, sim, buffered, reason,
        None if doc is MISSING else _kind(doc), rules, elements, verdict,
    )  # fmt: skip


def _inspection(
    config: Config,
    policy: ins.InspectPolicy,
    route: Route,
    sim: Simulation,
    status: int,
    mtype: str,
    codings: tuple[str, ...],
    body: bytes,
) -> tuple[bool, str, object]:
    """(buffered?, why the inspection ended as it did, the parsed body or MISSING)."""
    cfg = config.inspect
    result = sim.inspection
    if result is None:
        if not route.rules:
            return False, "the route has no rules", MISSING
        if status in (204, 205, 304):
            return False, f"a {status} response has no body (RFC 9110 6.4.1)", MISSING
        return (
            False,
            f"status {status} is not in inspect.statuses ({_ranges(cfg.statuses)})",
            MISSING,
        )
    # as the handler does: screened on the head (declared length), then buffered
    buffered = policy.skip_reason(mtype, codings, len(body)) is None
    if result == ins.SKIPPED_CONTENT_TYPE:
        types = ", ".join(cfg.content_types)
        return (
            False,
            f"media type {mtype or '(none)'} is not in inspect.content_types ({types})",
            MISSING,
        )
    if result == ins.SKIPPED_ENCODING:
        unknown = [c for c in codings if c not in _DECODED]
        if unknown:
            return False, f"content coding {unknown[0]!r} is not decoded for inspection", MISSING
        return True, f"the body is not valid {'+'.join(codings)} data", MISSING
    if result == ins.SKIPPED_SIZE:
        if not buffered:
            return (
                False,
                (
                    f"the body is {len(body)} bytes, more than inspect.max_body_bytes "
                    f"({policy.max_body_bytes})"
                ),
                MISSING,
            )
        return (
            True,
            (
                "the body decodes to more than inspect.max_decoded_bytes "
                f"({policy.max_decoded_bytes})"
            ),
            MISSING,
        )
    if not body:
        return True, "the body is empty: nothing to inspect", MISSING
    try:
        decoded = ins.decode(body, codings, policy.max_decoded_bytes)
    except ins.Undecodable:  # pragma: no cover - simulate reported it above
        return True, "the body cannot be decoded", MISSING
    try:
        return True, "", ins.parse_json(decoded)
    except ins.Undecodable:
        return True, _json_error(ins.strip_bom(decoded)), MISSING


def _json_error(text: bytes) -> str:
    try:
        json.loads(text)
    except (ValueError, RecursionError) as exc:
        return f"the body is not valid JSON ({exc})"
    return "the body is not valid JSON"  # pragma: no cover - orjson is stricter in corners


def _batch_reason(elements: tuple[Element, ...]) -> str:
    hits = sum(1 for e in elements if e.match is not None)
    if not elements:
        return "an empty batch: nothing to match"
    if hits == len(elements):
        return f"all {hits} elements of the batch match: the first element's verdict applies"
    if hits:
        first = next(e.index for e in elements if e.match is not None)
        return (
            f"{hits} of {len(elements)} elements of the batch match: flag only, "
            f"Tunnelguard-Status from element {first}"
        )
    return f"none of the {len(elements)} elements of the batch matches"


# -- what the client gets, and what is counted -----------------------------------------------

_FRAMING = frozenset({"content-length", "transfer-encoding"})  # the proxy frames its own


def _header_diff(
    before: Sequence[tuple[str, str]], after: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(added, removed) header lines, as multisets; names compared case-insensitively."""
    before = [x for x in before if x[0].lower() not in _FRAMING]
    old = Counter((n.lower(), v) for n, v in before)
    new = Counter((n.lower(), v) for n, v in after)
    return _pick(after, new - old), _pick(before, old - new)


def _pick(
    lines: Sequence[tuple[str, str]], wanted: Counter[tuple[str, str]]
) -> list[tuple[str, str]]:
    picked = []
    for name, value in lines:
        if wanted[(name.lower(), value)] > 0:
            wanted[(name.lower(), value)] -= 1
            picked.append((name, value))
    return picked


def retry_after(e: Explanation) -> tuple[str | None, str | None]:
    """The delivered Retry-After and where it came from."""
    value = h.get(e.sim.headers, "retry-after")
    if value is None:
        return None, None
    if h.get(e.headers, "retry-after") is not None:
        return value, "the upstream's own header"
    v = e.verdict
    if v is not None and v.action == "rewrite" and v.retry_after is not None:
        return value, "the rule's retry_after_from"
    return value, "the upstream's retry_after setting: a 429 or 503 always carries one"


def metric_samples(e: Explanation) -> list[tuple[str, dict[str, str]]]:
    """The series a real request would increment by one (SPEC section 8)."""
    route, sim, v = e.route.name, e.sim, e.verdict
    source = "upstream" if v is None else ("flagged" if v.action == "flag" else "rewritten")
    true_status = v.status if v is not None else sim.status
    out = [
        (
            "tunnelguard_requests_total",
            {
                "route": route,
                "method": "GET",
                "code": str(sim.status),
                "class": status_class(true_status),
                "source": source,
            },
        )
    ]
    if v is not None:
        labels = {"route": route, "rule": v.rule, "action": v.action, "status": str(v.status)}
        out.append(("tunnelguard_tunnelled_errors_total", labels))
    if sim.inspection is not None:
        out.append(("tunnelguard_inspections_total", {"route": route, "result": sim.inspection}))
    return out


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


# -- machine-readable ------------------------------------------------------------------------


def _value(value: object) -> dict[str, object]:
    if value is MISSING:
        return {"value": None, "missing": True}
    return {"value": clip(value), "missing": False}


def _condition_json(c: ConditionTrace) -> dict[str, object]:
    return {
        "op": c.op,
        "held": c.held,
        "path": c.path,
        "expected": list(c.expected) if isinstance(c.expected, tuple) else c.expected,
        "found": [clip(x) for x in c.found],
        "found_count": c.found_count,
        "children": [_condition_json(x) for x in c.children],
    }


def _trace_json(t: RuleTrace) -> dict[str, object]:
    st = t.status_trace
    return {
        "rule": t.rule,
        "kind": t.kind,
        "outcome": t.outcome,
        "reason": t.reason,
        "status": t.status,
        "action": t.action,
        "step": t.step,
        "facts": [{"name": f.name, **_value(f.value)} for f in t.facts],
        "keyword": None
        if t.keyword is None
        else {"keyword": t.keyword.keyword, "row": list(t.keyword.row), "status": t.keyword.status},
        "when": None if t.when is None else _condition_json(t.when),
        "status_from": None
        if st is None
        else {
            "step": st.step,
            "from": st.source,
            "found": _value(st.found),
            "text": st.text,
            "retry_after_from": st.retry_after_from,
            "retry_found": _value(st.retry_found),
            "retry_after": st.retry_after,
        },
    }


def _problem(body: bytes) -> object:
    try:
        return clip(orjson.loads(body))
    except orjson.JSONDecodeError:  # the upstream's JSON under "upstream" is one level deeper
        return body.decode()


def to_json(e: Explanation) -> dict[str, object]:
    """The explanation as one JSON object; its keys are documented and stable."""
    sim, v = e.sim, e.verdict
    added, removed = _header_diff(e.headers, sim.headers)
    ra_value, ra_source = retry_after(e)
    own = {r.name: r.action for r in e.config.rules}
    return {
        "config": e.config.source,
        "route": {
            "name": e.route.name,
            "rules": [
                {"name": n, "kind": "rule" if n in own else "preset", "action": own.get(n)}
                for n in e.route.rules
            ],
            "action_override": e.override,
            "action_override_from": e.override_from,
        },
        "response": {
            "status": e.status,
            "headers": [list(x) for x in e.headers],
            "media_type": e.media_type,
            "content_encodings": list(e.encodings),
            "body_bytes": e.body_bytes,
        },
        "inspection": {
            "inspected": sim.inspection is not None,
            "buffered": e.buffered,
            "result": sim.inspection,
            "reason": e.reason,
        },
        "document": e.document,
        "rules": None if e.rules is None else [_trace_json(t) for t in e.rules],
        "batch": None
        if e.elements is None
        else {
            "total": len(e.elements),
            "matched": sum(1 for x in e.elements if x.match is not None),
            "elements": [
                {
                    "index": x.index,
                    "rule": x.match.rule if x.match else None,
                    "status": x.match.status if x.match else None,
                    "action": x.match.action if x.match else None,
                    "rules": [_trace_json(t) for t in x.rules],
                }
                for x in e.elements
            ],
        },
        "verdict": None
        if v is None
        else {
            "rule": v.rule,
            "action": v.action,
            "status": v.status,
            "body": v.body,
            "message": v.message,
            "partial_batch": v.partial_batch,
        },
        "delivered": {
            "status": sim.status,
            "headers": [list(x) for x in sim.headers],
            "headers_added": [list(x) for x in added],
            "headers_removed": [list(x) for x in removed],
            "retry_after": ra_value,
            "retry_after_source": ra_source,
            "body": "upstream" if sim.body is None else "problem",
            "problem": None if sim.body is None else _problem(sim.body),
        },
        "metrics": [{"name": n, "labels": labels} for n, labels in metric_samples(e)],
    }


# -- for a person ----------------------------------------------------------------------------


def _condition_lines(c: ConditionTrace, indent: str) -> list[str]:
    mark = "held" if c.held else "does not hold"
    if c.children:
        lines = [f"{indent}{c.op}: {mark}"]
        for child in c.children:
            lines += _condition_lines(child, indent + "  ")
        return lines
    expected = _show(list(c.expected) if isinstance(c.expected, tuple) else c.expected)
    if not c.found:
        found = "found nothing (missing)"
    else:
        found = "found " + ", ".join(_show(x) for x in c.found)
        if c.found_count > len(c.found):
            found += f" (+{c.found_count - len(c.found)} more)"
    return [f"{indent}{c.path} {c.op}: {expected} -> {found} -> {mark}"]


def _rule_lines(number: int, t: RuleTrace, indent: str) -> list[str]:
    head = f"{indent}{number}. {t.rule} ({t.kind}): "
    if not t.tried:
        return [head + "not tried (a rule above matched)"]
    if t.matched:
        head += f"MATCH -> status {t.status} ({t.step}), action {t.action}"
    else:
        head += "no match"
    more = indent + "     "
    lines = [head, f"{more}why: {t.reason}"]
    lines += [f"{more}{f.name}: {_show(f.value)}" for f in t.facts]
    if t.keyword is not None:
        row = " / ".join(t.keyword.row)
        lines.append(f"{more}keyword {t.keyword.keyword!r} (row: {row} -> {t.keyword.status})")
    if t.when is not None:
        lines += _condition_lines(t.when, more)
    st = t.status_trace
    if st is not None:
        if st.step == "fixed":
            lines.append(f"{more}status: fixed {st.status}")
        else:
            via = {"map": f"map {st.text!r}", "range": "ranges", "default": "default"}[st.step]
            lines.append(
                f"{more}status: from {st.source} = {_show(st.found)} -> {via} -> {st.status}"
            )
        if st.retry_after_from is not None:
            secs = f"{st.retry_after} s" if st.retry_after is not None else "not a number >= 0"
            lines.append(
                f"{more}retry_after_from {st.retry_after_from} = {_show(st.retry_found)} -> {secs}"
            )
    return lines


def render(e: Explanation) -> str:
    """The explanation as text for a person, in the order the proxy works."""
    sim, v = e.sim, e.verdict
    first = " (the first route)" if e.route is e.config.routes[0] else ""
    out = [f"config: {e.config.source}", f"route: {e.route.name}{first}"]
    own = {r.name: r for r in e.config.rules}
    if e.route.rules:
        out.append("  rules, tried in order (first match wins):")
        for i, name in enumerate(e.route.rules, 1):
            r = own.get(name)
            what = f"rule, action {r.action}, body {r.body}" if r else "preset"
            out.append(f"    {i}. {name} ({what})")
    else:
        out.append("  rules: none (nothing is inspected)")
    if e.override is not None:
        where = "the route's `action`" if e.override_from == "route" else "the top-level `action`"
        out.append(f"  action override: {e.override} (from {where}; applies to every rule)")
    else:
        out.append("  action override: none (each rule's own action)")
    ctype = h.get(e.headers, "content-type") or "(none)"
    coding = f", Content-Encoding: {', '.join(e.encodings)}" if e.encodings else ""
    out += ["", f"response: {e.status}, Content-Type: {ctype}{coding}, {e.body_bytes} bytes"]
    if sim.inspection is None:
        out.append(f"inspection: not inspected (streamed through): {e.reason}")
    else:
        buffered = "buffered" if e.buffered else "not buffered, streamed through"
        out.append(f"inspection: {sim.inspection} ({buffered})")
        out.append(f"  {e.reason}")
    if e.rules is not None:
        out += ["", f"rules on the {e.document}:"]
        for i, t in enumerate(e.rules, 1):
            out += _rule_lines(i, t, "  ")
    if e.elements is not None:
        out += ["", f"batch: a top-level array of {len(e.elements)}; each element is judged alone"]
        for x in e.elements:
            m = x.match
            got = f"{m.rule} -> {m.status}, {m.action}" if m else "no match"
            out.append(f"  element {x.index}: {got}")
            for i, t in enumerate(x.rules, 1):
                out += _rule_lines(i, t, "    ")
        out.append(f"  batch rule: {e.reason}")
    out.append("")
    if v is None:
        out.append("verdict: none; the response is delivered as the upstream sent it")
    else:
        out.append(f"verdict: rule {v.rule}, action {v.action}, mapped status {v.status}")
        if v.message is not None:
            out.append(f"  message: {_show(v.message)}")
        if v.partial_batch:
            out.append("  only some batch elements matched: flagged, never rewritten")
    out.append(f"  delivered status: {sim.status} (the upstream sent {e.status})")
    added, removed = _header_diff(e.headers, sim.headers)
    out.append("  headers added:" + ("" if added else " none"))
    out += [f"    {n}: {val}" for n, val in added]
    out.append("  headers removed:" + ("" if removed else " none"))
    out += [f"    {n}: {val}" for n, val in removed]
    ra_value, ra_source = retry_after(e)
    if ra_value is None:
        out.append("  Retry-After: none")
    else:
        out.append(f"  Retry-After: {ra_value} ({ra_source})")
    if sim.body is None:
        out.append("  body: the upstream's bytes, unchanged")
    else:
        out.append("  body: replaced by application/problem+json:")
        text = sim.body.decode()
        cut = f"... ({len(sim.body)} bytes)" if len(text) > _PROBLEM_LIMIT else ""
        out.append(f"    {text[:_PROBLEM_LIMIT]}{cut}")
    out += ["", "metrics (each +1):"]
    out += [f"  {_series(n, labels)}" for n, labels in metric_samples(e)]
    return "\n".join(out) + "\n"
