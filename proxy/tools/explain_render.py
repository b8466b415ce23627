"""`tunnelguard explain` output: an `Explanation` as text for a person or as one JSON object.

Formatting only: every fact shown is in the `Explanation` or derived by `proxy.explain`
(`header_diff`, `retry_after`, `metric_samples`).  The JSON keys are documented and stable.
"""

from __future__ import annotations

import orjson

from proxy.tools.explain import Explanation, header_diff, metric_samples, retry_after
from proxy.tools.ruletrace import ConditionTrace, RuleTrace, clip, show
from proxy.wire import headers as h
from proxy.wire.pointer import MISSING

_PROBLEM_LIMIT = 2000  # a problem body embeds the upstream's JSON, which may be large


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
    added, removed = header_diff(e.headers, sim.headers)
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
            "stream": e.stream,
            "first_event": None
            if e.first_event is None
            else {
                "name": e.first_event.name,
                "data_bytes": len(e.first_event.data),
                "end": e.first_event.end,
            },
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


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _condition_lines(c: ConditionTrace, indent: str) -> list[str]:
    mark = "held" if c.held else "does not hold"
    if c.children:
        lines = [f"{indent}{c.op}: {mark}"]
        for child in c.children:
            lines += _condition_lines(child, indent + "  ")
        return lines
    expected = show(list(c.expected) if isinstance(c.expected, tuple) else c.expected)
    if not c.found:
        found = "found nothing (missing)"
    else:
        found = "found " + ", ".join(show(x) for x in c.found)
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
    lines += [f"{more}{f.name}: {show(f.value)}" for f in t.facts]
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
                f"{more}status: from {st.source} = {show(st.found)} -> {via} -> {st.status}"
            )
        if st.retry_after_from is not None:
            secs = f"{st.retry_after} s" if st.retry_after is not None else "not a number >= 0"
            lines.append(
                f"{more}retry_after_from {st.retry_after_from} = {show(st.retry_found)} -> {secs}"
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
    elif e.stream is not None:
        held = "held until its first event" if e.buffered else "not held, streamed through"
        out.append(f"inspection: {sim.inspection} ({e.stream} event stream, {held})")
        ev = e.first_event
        if ev is not None:
            name = repr(ev.name) if ev.name else "(an NDJSON line)"
            out.append(
                f"  first event: {name}, {len(ev.data)} bytes of data, complete at byte "
                f"{ev.end} of {e.body_bytes}; the rest follows byte for byte"
            )
        if e.reason:
            out.append(f"  {e.reason}")
    else:
        buffered = "buffered" if e.buffered else "not buffered, streamed through"
        out.append(f"inspection: {sim.inspection} ({buffered})")
        out.append(f"  {e.reason}")
    if e.rules is not None:
        of = "the first event's " if e.stream is not None else "the "
        out += ["", f"rules on {of}{e.document}:"]
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
            out.append(f"  message: {show(v.message)}")
        if v.partial_batch:
            out.append("  only some batch elements matched: flagged, never rewritten")
    out.append(f"  delivered status: {sim.status} (the upstream sent {e.status})")
    added, removed = header_diff(e.headers, sim.headers)
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
