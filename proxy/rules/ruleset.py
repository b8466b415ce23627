"""Rules compiled at load time and evaluated as a pure function of a parsed JSON body.

`compile_ruleset` turns a route's rule names (user rules and presets) into a
`RuleSet`; `RuleSet.evaluate(doc, media_type)` returns the `Verdict` of the first rule
that matches, or None.  Nothing here does I/O or touches config at run time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import re2

from proxy.config.model import (
    PRESET_NAMES,
    AllOf,
    AnyOf,
    Condition,
    Not,
    RuleConfig,
    StatusSpec,
    When,
)
from proxy.rules.presets import Preset, build_preset
from proxy.rules.verdict import Verdict
from proxy.wire.jsondoc import ARRAY_TYPES, OBJECT_TYPES, SIZED_TYPES, Array
from proxy.wire.pointer import MISSING, Pointer, compile_pointer

Predicate = Callable[[object], bool]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


# -- JSON value semantics ----------------------------------------------------------------------


def json_equal(a: object, b: object) -> bool:
    """Exact JSON equality: `1` is not `"1"`, `true` is not `1`, `1` equals `1.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, ARRAY_TYPES) and isinstance(b, ARRAY_TYPES):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, OBJECT_TYPES) and isinstance(b, OBJECT_TYPES):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def _scalar_key(value: object) -> tuple[str, object] | None:
    """A hashable key under which equal JSON scalars collide; None for arrays/objects."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z", None)
    return None


def text_form(value: object) -> str | None:
    """The text a `map` key is compared with (SPEC 4.2): `100` and `"100"` both read "100"."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if value is None:
        return "null"
    return None


_NUMERIC_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def json_number(value: object) -> int | float | None:
    """A JSON number, or a string holding one (`"-32005"`, `"1.5"`; leading zeros allowed).

    Integers stay exact (a float would round codes beyond 2**53).  Python's own `float()`
    would also take "1_000", " 5", "nan" and "infinity", which are not numbers in JSON.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 64 and _NUMERIC_TEXT.fullmatch(value):
        if value.lstrip("-").isdigit():
            return int(value)
        number = float(value)
        return number if math.isfinite(number) else None
    return None


# -- compiling conditions ------------------------------------------------------------------------


def compile_when(when: When) -> Predicate:
    """Compile a condition tree into one predicate over a JSON document."""
    if isinstance(when, AllOf):
        parts = tuple(compile_when(w) for w in when.items)
        return lambda doc: all(p(doc) for p in parts)
    if isinstance(when, AnyOf):
        parts = tuple(compile_when(w) for w in when.items)
        return lambda doc: any(p(doc) for p in parts)
    if isinstance(when, Not):
        inner = compile_when(when.item)
        return lambda doc: not inner(doc)
    return compile_condition(when)


def compile_condition(cond: Condition) -> Predicate:
    """One leaf condition as a predicate over a JSON document."""
    ptr = compile_pointer(cond.path)
    if cond.op == "exists":
        return _exists(ptr) if cond.value else _negate(_exists(ptr))
    if cond.op == "nonempty":
        test = _any(ptr, lambda v: isinstance(v, SIZED_TYPES) and len(v) > 0)
        return test if cond.value else _negate(test)
    if cond.op == "equals":
        expected = cond.value
        key = _scalar_key(expected)
        if key is not None:
            return _any(ptr, lambda v: _scalar_key(v) == key)
        return _any(ptr, lambda v: json_equal(v, expected))
    if cond.op == "in":
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        keys = {_scalar_key(v) for v in values} - {None}
        others = tuple(v for v in values if _scalar_key(v) is None)
        if not others:
            return _any(ptr, lambda v: _scalar_key(v) in keys)
        return _any(ptr, lambda v: _scalar_key(v) in keys or any(json_equal(v, o) for o in others))
    if cond.op == "matches":
        regex = re2.compile(str(cond.value), _RE2_OPTIONS)
        return _any(ptr, lambda v: isinstance(v, str) and regex.search(v) is not None)
    raise ValueError(f"unknown condition {cond.op!r}")  # pragma: no cover - parser rejects


def _exists(ptr: Pointer) -> Predicate:
    if not ptr.has_wildcard:
        return lambda doc: ptr.first(doc) is not MISSING
    return lambda doc: any(True for _ in ptr.find(doc))


def _any(ptr: Pointer, test: Predicate) -> Predicate:
    if not ptr.has_wildcard:

        def single(doc: object) -> bool:
            value = ptr.first(doc)
            return value is not MISSING and test(value)

        return single
    return lambda doc: any(test(v) for v in ptr.find(doc))


def _negate(test: Predicate) -> Predicate:
    return lambda doc: not test(doc)


# -- compiled rules ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusMap:
    """A user rule's compiled `status`: fixed, or looked up from the value at `source`."""

    fixed: int | None
    source: Pointer | None
    table: Mapping[str, int]
    ranges: tuple[tuple[int, int, int], ...]
    default: int

    def resolve(self, doc: object) -> tuple[int, str | None]:
        """The mapped status and the text of the value it came from."""
        if self.fixed is not None or self.source is None:
            return (self.fixed or self.default), None
        value = self.source.first(doc)
        text = text_form(value) if value is not MISSING else None
        if text is not None and text in self.table:
            return self.table[text], text
        number = json_number(value) if self.ranges else None
        if number is not None:
            for low, high, status in self.ranges:
                if low <= number <= high:
                    return status, text
        return self.default, text


def _compile_status(spec: StatusSpec) -> StatusMap:
    return StatusMap(
        fixed=spec.fixed,
        source=compile_pointer(spec.source) if spec.source is not None else None,
        table=dict(spec.map),
        ranges=tuple((r.min, r.max, r.status) for r in spec.ranges),
        default=spec.default,
    )


@dataclass(frozen=True, slots=True)
class UserRule:
    """A compiled user rule; `match` gives its verdict on one JSON value, or None."""

    name: str
    when: Predicate
    status: StatusMap
    action: str
    body: str
    retry_after_from: Pointer | None

    def match(self, doc: object, media_type: str) -> Verdict | None:
        if not self.when(doc):
            return None
        status, text = self.status.resolve(doc)
        retry_after = None
        if self.retry_after_from is not None:
            seconds = json_number(self.retry_after_from.first(doc))
            if seconds is not None and seconds >= 0:
                retry_after = math.ceil(seconds)
        return Verdict(self.name, status, self.action, self.body, retry_after, text)


@dataclass(frozen=True, slots=True)
class PresetRule:
    """A compiled preset in a route's rule list; `match` gives its verdict, or None."""

    name: str
    preset: Preset
    action: str | None  # the override; None = the preset's own choice

    def match(self, doc: object, media_type: str) -> Verdict | None:
        hit = self.preset.evaluate(doc, media_type)
        if hit is None:
            return None
        # A protocol-mandated flag (GraphQL legacy media type, partial results) stays a
        # flag even under a route's `action: rewrite`: rewriting breaks compliant clients.
        action = "flag" if hit.flag_only else (self.action or "rewrite")
        return Verdict(self.name, hit.status, action, "keep", None, hit.message)


Rule = UserRule | PresetRule
"""A compiled rule of either kind, as held in `RuleSet.rules`."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one route, in order; the first match wins.  `action` is the override
    the route imposes on every rule (None: each rule's own), kept for the built-in
    `stream-error` rule (`streams.stream_error_verdict`)."""

    rules: tuple[Rule, ...]
    action: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def evaluate(self, doc: object, media_type: str) -> Verdict | None:
        """The verdict for one parsed body; a top-level array is a batch (SPEC 4.1)."""
        if isinstance(doc, ARRAY_TYPES):
            return self._evaluate_batch(doc, media_type)
        return self._evaluate_one(doc, media_type)

    def _evaluate_one(self, doc: object, media_type: str) -> Verdict | None:
        for rule in self.rules:
            verdict = rule.match(doc, media_type)
            if verdict is not None:
                return verdict
        return None

    def _evaluate_batch(self, docs: Array, media_type: str) -> Verdict | None:
        first: Verdict | None = None
        missed = False
        for element in docs:
            verdict = self._evaluate_one(element, media_type)
            if verdict is None:
                missed = True
            elif first is None:
                first = verdict
            if first is not None and missed:
                break
        if first is None or not missed:
            return first
        return Verdict(
            first.rule, first.status, "flag", first.body, first.retry_after, first.message, True
        )


def compile_rule(rule: RuleConfig, action: str | None = None) -> UserRule:
    return UserRule(
        name=rule.name,
        when=compile_when(rule.when),
        status=_compile_status(rule.status),
        action=action or rule.action,
        body=rule.body,
        retry_after_from=(
            compile_pointer(rule.retry_after_from) if rule.retry_after_from is not None else None
        ),
    )


def compile_ruleset(
    names: Iterable[str],
    rules: Iterable[RuleConfig],
    *,
    action: str | None = None,
    jsonrpc_codes: Mapping[int, int] | None = None,
) -> RuleSet:
    """Compile rule and preset `names`, in order; `action` overrides every rule's action."""
    by_name = {r.name: r for r in rules}
    compiled: list[Rule] = []
    for name in names:
        if name in by_name:
            compiled.append(compile_rule(by_name[name], action))
        elif name in PRESET_NAMES:
            preset = build_preset(name, jsonrpc_codes if name == "jsonrpc" else None)
            compiled.append(PresetRule(name, preset, action))
        else:
            raise ValueError(f"unknown rule or preset {name!r}")
    return RuleSet(tuple(compiled), action)
