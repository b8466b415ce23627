"""`tunnelguard explain`: one upstream response dry-run through a route's rules, with reasons.

`explain` builds an `Explanation`, the report's data; `explain_render` turns it into text or
JSON.  The verdict and what the client would get come from the proxy's own pure pipeline
(`ruletests.simulate`, `RuleSet.evaluate`); the reasons come from `ruletrace.trace_rules`,
which re-evaluates each rule while recording what it looked at.  Tests hold the two in
agreement.  Pure apart from the random trace id in a generated problem body; the CLI does
the I/O.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.config.model import Config, RouteConfig, TestResponse
from proxy.observe.metrics import status_class
from proxy.rules import inspection as ins
from proxy.rules.events import Event
from proxy.rules.presets import keyword_row
from proxy.rules.ruletests import Simulation, simulate
from proxy.rules.snapshot import Route, build
from proxy.rules.streams import STREAM_ERROR, examine_event, first_event_of
from proxy.rules.verdict import Verdict
from proxy.tools.ruletrace import RuleTrace, trace_rules
from proxy.wire import headers as h
from proxy.wire.jsondoc import json_type
from proxy.wire.pointer import MISSING

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
    stream: str | None = None  # sse | ndjson: an event stream held for its first event
    first_event: Event | None = None  # that event, when it was complete within the bound


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
    kind = runtime.inspect.stream_types.get(mtype)
    event = None
    held_stream = kind is not None and sim.inspection is not None and 200 <= status < 300
    if kind is not None and held_stream:
        buffered, reason, doc, event = _first_event(runtime.inspect, kind, sim, codings, body)
    else:
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
    if event is not None:  # as the proxy judges it: the built-in stream-error included
        verdict = examine_event(route.rules, event, mtype).verdict
        if verdict is not None and verdict.rule == STREAM_ERROR:
            reason = _stream_error_reason(verdict, doc is not MISSING)
    override_from = "route" if route_cfg.action else ("global" if config.action else None)
    return Explanation(
        config, route_cfg, route, route_cfg.action or config.action, override_from, status,
        tuple(headers), len(body), mtype, codings, sim, buffered, reason,
        None if doc is MISSING else json_type(doc), rules, elements, verdict,
        kind if held_stream else None, event,
    )  # fmt: skip


def _first_event(
    policy: ins.InspectPolicy,
    kind: str,
    sim: Simulation,
    codings: tuple[str, ...],
    body: bytes,
) -> tuple[bool, str, object, Event | None]:
    """(held?, why the inspection ended as it did, the first event's parsed data or MISSING,
    the first event) for an event stream (SPEC 5.1)."""
    if sim.inspection == ins.SKIPPED_ENCODING:
        return False, "a compressed event stream is not held: it streams through", MISSING, None
    event, _ = first_event_of(body, kind, policy.first_event_bytes)
    if event is None:
        if sim.inspection == ins.SKIPPED_SIZE:
            why = (
                "no complete first event within inspect.first_event_bytes "
                f"({policy.first_event_bytes}): the stream goes on unjudged"
            )
        else:
            why = "the stream ends without a complete event: nothing to judge"
        return True, why, MISSING, None
    try:
        return True, "", ins.parse_json(event.data), event
    except ins.Undecodable:
        return True, "the first event's data is not JSON", MISSING, event


def _stream_error_reason(verdict: Verdict, parsed: bool) -> str:
    hit = keyword_row(verdict.message) if verdict.message is not None else None
    why = "no rule matched" if parsed else "its data is not JSON"
    how = (
        f"keyword {hit.keyword!r} in its message -> {hit.status}"
        if hit is not None
        else f"no keyword in its message -> {verdict.status}"
    )
    return f"{why}, and it is an SSE `error` event: the built-in rule {STREAM_ERROR} ({how})"


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


def header_diff(
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
