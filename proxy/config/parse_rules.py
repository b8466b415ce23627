"""The `rules:` and `tests:` sections of a config file (SPEC 4.1-4.5), read strictly."""

from __future__ import annotations

import re

import orjson
import re2

from proxy.config.model import (
    ACTIONS,
    BODIES,
    PRESET_NAMES,
    AllOf,
    AnyOf,
    Condition,
    Not,
    RuleConfig,
    RuleTest,
    StatusRange,
    StatusSpec,
    TestEvent,
    TestExpect,
    TestResponse,
    When,
)
from proxy.config.walker import BAD, Walker, describe
from proxy.config.yamlsrc import Path

# RE2 is linear in the input, but its fast engine gives up on large programs and the
# fallback costs program size x input: `(?s).{0,1000}z` (size 8005) took ~10 s on 1 MiB of
# CJK text on the event loop, `.{0,100}` (805) 2 ms.  Larger patterns are refused at load.
MAX_REGEX_PROGRAM = 1000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

# -- rules -----------------------------------------------------------------------------------

_RULE_KEYS = ("name", "when", "status", "action", "body", "retry_after_from")
_TESTS = ("exists", "equals", "in", "matches", "nonempty")


def parse_rules(w: Walker, value: object) -> tuple[RuleConfig, ...]:
    items = w.sequence(value, ("rules",))
    result: list[RuleConfig] = []
    seen: set[str] = set()
    for i, spec in enumerate(items or ()):
        at: Path = ("rules", i)
        m = w.mapping(spec, at, _RULE_KEYS, ("name", "when", "status"))
        if m is None:
            continue
        name = w.field(m, "name", at, w.name, f"rule{i}")
        if name in PRESET_NAMES:
            w.error((*at, "name"), f"{name!r} is a preset's name; choose another")
        elif name in seen:
            w.error((*at, "name"), f"duplicate rule name {name!r}")
        seen.add(name)
        when = _when(w, m.get("when"), (*at, "when"), 0) if "when" in m else None
        status = _status(w, m.get("status"), (*at, "status")) if "status" in m else None
        retry_from = w.field(m, "retry_after_from", at, w.pointer, None)
        action = w.field(m, "action", at, w.choice(ACTIONS), "rewrite")
        body = w.field(m, "body", at, w.choice(BODIES), "keep")
        if when is not None and status is not None:
            result.append(RuleConfig(name, when, status, action, body, retry_from))
    return tuple(result)


_MAX_WHEN_DEPTH = 16


def _when(w: Walker, value: object, path: Path, depth: int) -> When | None:
    if depth > _MAX_WHEN_DEPTH:
        w.error(path, f"conditions nested more than {_MAX_WHEN_DEPTH} deep")
        return None
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("all", "any", "not"):
        key = next(iter(value))
        at = (*path, key)
        if key == "not":
            inner = _when(w, value[key], at, depth + 1)
            return Not(inner) if inner is not None else None
        items = w.sequence(value[key], at)
        if items is not None and not items:
            w.error(at, f"`{key}` needs at least one condition")
        parsed = [_when(w, v, (*at, i), depth + 1) for i, v in enumerate(items or ())]
        if any(p is None for p in parsed) or not parsed:
            return None
        conds = tuple(p for p in parsed if p is not None)
        return AllOf(conds) if key == "all" else AnyOf(conds)
    before = len(w.problems)
    m = w.mapping(value, path, ("path", *_TESTS, "all", "any", "not"), ("path",))
    if m is None:
        return None
    misspelt = len(w.problems) > before  # `equal: 1` is reported as an unknown key already
    for key in ("all", "any", "not"):
        if key in m:
            w.error((*path, key), f"`{key}` must be the only key of its condition", at_key=True)
            return None
    ptr = w.field(m, "path", path, w.pointer, None)
    tests = [k for k in _TESTS if k in m]
    if not tests and misspelt:
        return None
    if len(tests) != 1:
        w.error(path, f"a condition needs exactly one of {', '.join(_TESTS)}; got {len(tests)}")
        return None
    op = tests[0]
    arg = m[op]
    at = (*path, op)
    if op in ("exists", "nonempty"):
        if not isinstance(arg, bool):
            w.error(at, f"expected true or false, got {describe(arg)}")
            return None
    elif op == "in":
        if not isinstance(arg, list) or not arg:
            w.error(at, f"expected a non-empty list of values, got {describe(arg)}")
            return None
        arg = tuple(arg)
    elif op == "matches":
        if not isinstance(arg, str):
            w.error(at, f"expected a regular expression string, got {describe(arg)}")
            return None
        try:
            size = re2.compile(arg, _RE2_OPTIONS).programsize
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            w.error(
                at,
                f"invalid or non-linear regular expression {arg!r}: {reason} "
                "(RE2 syntax: no backreferences or lookaround)",
            )
            return None
        if size > MAX_REGEX_PROGRAM:
            w.error(
                at,
                f"regular expression {arg!r} is too large to evaluate quickly (RE2 program "
                f"size {size} > {MAX_REGEX_PROGRAM}); shrink large counted repetitions such "
                "as .{0,1000}",
            )
            return None
    if ptr is None:
        return None
    return Condition(ptr, op, arg)


def _status(w: Walker, value: object, path: Path) -> StatusSpec | None:
    if isinstance(value, int) and not isinstance(value, bool):
        fixed = w.http_status(value, path)
        return None if fixed is BAD else StatusSpec(fixed=fixed)
    if not isinstance(value, dict):
        w.error(
            path,
            f"expected a status code such as 502, or a mapping with `from`, got {describe(value)}",
        )
        return None
    m = w.mapping(value, path, ("from", "map", "ranges", "default"), ("from",))
    if m is None:  # pragma: no cover - a dict always passes
        return None
    source = w.field(m, "from", path, w.pointer, None)
    mapping: list[tuple[str, int]] = []
    if "map" in m:
        entries = w.mapping(
            m["map"], (*path, "map"), tuple(m["map"] or ()) if isinstance(m["map"], dict) else ()
        )
        for key, status in (entries or {}).items():
            mapped = w.http_status(status, (*path, "map", key))
            if mapped is not BAD:
                mapping.append((key, mapped))
    ranges: list[StatusRange] = []
    for i, spec in enumerate(
        w.sequence(m["ranges"], (*path, "ranges")) or () if "ranges" in m else ()
    ):
        at = (*path, "ranges", i)
        r = w.mapping(spec, at, ("min", "max", "status"), ("min", "max", "status"))
        if r is None or not all(k in r for k in ("min", "max", "status")):
            continue
        lo = w.integer(r["min"], (*at, "min"), -(2**63))
        hi = w.integer(r["max"], (*at, "max"), -(2**63))
        st = w.http_status(r["status"], (*at, "status"))
        if BAD in (lo, hi, st):
            continue
        if lo > hi:
            w.error(at, f"min {lo} is greater than max {hi}")
            continue
        ranges.append(StatusRange(lo, hi, st))
    default = w.field(m, "default", path, w.http_status, 502)
    if source is None:
        return None
    return StatusSpec(source=source, map=tuple(mapping), ranges=tuple(ranges), default=default)


# -- embedded tests --------------------------------------------------------------------------


def parse_tests(
    w: Walker, value: object, routes: set[str], rule_names: set[str]
) -> tuple[RuleTest, ...]:
    items = w.sequence(value, ("tests",))
    result = []
    for i, spec in enumerate(items or ()):
        at: Path = ("tests", i)
        m = w.mapping(
            spec,
            at,
            ("name", "route", "rules", "response", "expect"),
            ("name", "response", "expect"),
        )
        if m is None:
            continue
        name = w.field(m, "name", at, w.string, f"test {i}")
        route = w.field(m, "route", at, w.string, None)
        rules: tuple[str, ...] | None = None
        if route is not None and route not in routes:
            w.error((*at, "route"), f"unknown route {route!r}")
        if "rules" in m:
            listed = w.sequence(m["rules"], (*at, "rules")) or []
            rules = tuple(str(r) for r in listed)
            for j, r in enumerate(rules):
                if r not in rule_names:
                    w.error((*at, "rules", j), f"unknown rule or preset {r!r}")
        if (route is None) == (rules is None):
            w.error(at, "a test names exactly one of `route` or `rules`")
        response = _test_response(w, m["response"], (*at, "response")) if "response" in m else None
        expect = _test_expect(w, m["expect"], (*at, "expect")) if "expect" in m else None
        mark = w.source.mark(at)
        if response is not None and expect is not None:
            result.append(
                RuleTest(name, route, rules, response, expect, mark.line if mark else None)
            )
    return tuple(result)


def _expected_headers(w: Walker, value: object, path: Path) -> tuple[tuple[str, str | None], ...]:
    """Like `_headers`, but `null` means: this header must be absent."""
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of header names to values, got {describe(value)}")
        return ()
    return tuple((str(k).lower(), None if v is None else str(v)) for k, v in value.items())


def _headers(w: Walker, value: object, path: Path) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of header names to values, got {describe(value)}")
        return ()
    return tuple((str(k).lower(), str(v)) for k, v in value.items())


def _test_response(w: Walker, value: object, path: Path) -> TestResponse | None:
    m = w.mapping(value, path, ("status", "headers", "body", "events"))
    if m is None:
        return None
    d = TestResponse()
    status = w.field(m, "status", path, lambda v, p: w.http_status(v, p, False), d.status)
    events: tuple[TestEvent, ...] = ()
    if "events" in m:
        if "body" in m:
            w.error((*path, "events"), "give `body` or `events`, not both", at_key=True)
            return None
        events = _test_events(w, m["events"], (*path, "events"))
    headers = d.headers
    if "headers" in m:
        headers = _headers(w, m["headers"], (*path, "headers"))
        if not any(name == "content-type" for name, _ in headers):
            # JSON unless the test says otherwise; events are an event stream
            headers = (*(_EVENT_STREAM if "events" in m else d.headers), *headers)
    elif "events" in m:
        headers = _EVENT_STREAM
    raw = d.body if "body" not in m else _json_text(w, m["body"], (*path, "body"))
    if raw is None:
        return None
    return TestResponse(status, headers, raw, events)


_EVENT_STREAM = (("content-type", "text/event-stream"),)
_EVENT_NAME = re.compile(r"[^\r\n]*")


def _json_text(w: Walker, value: object, path: Path) -> bytes | None:
    """A string is the exact text (JSON or not); anything else is encoded as JSON."""
    if isinstance(value, str):
        return value.encode()
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        w.error(path, f"cannot encode as JSON: {exc}")
        return None


def _test_events(w: Walker, value: object, path: Path) -> tuple[TestEvent, ...]:
    """`events: [{event: error, data: {...}}, {data: ...}]`: a stream body, one event each."""
    events = []
    for i, item in enumerate(w.sequence(value, path) or []):
        at = (*path, i)
        m = w.mapping(item, at, ("event", "data"), ("data",))
        if m is None or "data" not in m:
            continue
        name = m.get("event")
        if name is not None and (not isinstance(name, str) or not _EVENT_NAME.fullmatch(name)):
            w.error((*at, "event"), f"expected an event name on one line, got {describe(name)}")
            continue
        data = _json_text(w, m["data"], (*at, "data"))
        if data is not None:
            events.append(TestEvent(name, data))
    return tuple(events)


def _test_expect(w: Walker, value: object, path: Path) -> TestExpect | None:
    m = w.mapping(value, path, ("status", "rule", "action", "headers"))
    if m is None:
        return None
    rule = m.get("rule")
    if "rule" in m and rule is not None and not isinstance(rule, str):
        w.error((*path, "rule"), f"expected a rule name or null, got {describe(rule)}")
    return TestExpect(
        status=w.field(m, "status", path, lambda v, p: w.http_status(v, p, False), None),
        rule=("" if rule is None else str(rule)) if "rule" in m else None,
        action=w.field(m, "action", path, w.choice(ACTIONS), None),
        headers=_expected_headers(w, m["headers"], (*path, "headers")) if "headers" in m else (),
    )
