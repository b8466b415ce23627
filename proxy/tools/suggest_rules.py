"""Suspect shapes -> YAML rules with embedded tests, merged into a config (`tunnelguard
suggest`, SPEC 1 and 10).  Pure: the catalogue comes in as `/shapes`'s JSON (read by
`tools.suggest`), the config as text, and the merged text goes out.

Shapes of one route whose markers are the same (pointers and JSON types) become one rule:
their key sets differ, the error they carry does not.  A rule

- matches what makes each of its markers a marker, as the detector tests it
  (`rules.suspect.marker_role`: a non-empty error key that is not zero, false or a success
  word; `ok: false`; `status: "error"`; a numeric status 400-599; a lone message with no
  zero code beside it), and never a body carrying a resource identity (SPEC 4.4);
- maps each code value seen to the status the catalogue gave it (`status.from`, at the
  marker's `value_pointer` when the values were read below it, + `map`), with the shape's
  own status as `default`;
- is `action: flag`: adopting it changes no status until the operator switches it to
  `rewrite`;
- carries one embedded test per code value seen (a body synthesized from the markers and the
  value: the catalogue never holds free text, so neither do the tests), and one test that
  the same body with clean values is not flagged.

`merged` adds them after each route's own rules and edits the config with ruamel.yaml's round
trip, so the operator's comments, order and quoting survive; `verify` is `tunnelguard check`
on the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

from proxy.config.errors import ConfigError
from proxy.config.load import parse_text
from proxy.rules.presets import (
    FALLBACK_STATUS,
    KEYWORD_ROWS,
    LIFECYCLE_KEYS,
    RESOURCE_IDENTITY_KEYS,
)
from proxy.rules.ruletests import failure_report
from proxy.rules.suspect import (
    FAILED_WORDS,
    SUCCESS_TEXT,
    ZERO_CODE_KEYS,
    marker_role,
)
from proxy.wire.pointer import escape_token

RULE_PREFIX = "shape-"  # a suggested rule is named after its first shape: shape-3f9a1c2e
MAX_TESTS = 32  # value tests per rule (the catalogue keeps at most 32 values per marker)
# SPEC 4.4: the top-level keys that make a body a resource that describes a failure, as the
# presets read them (`presets.resource_key`); its `*Arn` / `*_arn` keys have no pointer form
# (the detector still never calls such a body suspect)
RESOURCE_KEYS = (*sorted(RESOURCE_IDENTITY_KEYS), *sorted(LIFECYCLE_KEYS))
_FAILED = "(?i)^(" + "|".join(sorted(FAILED_WORDS)) + ")$"
_SUCCESS = "(?i)^(" + "|".join(sorted(SUCCESS_TEXT)) + ")$"
_HTTP_ERRORS = list(range(400, 600))
_ANY = "^"  # matches every string, and nothing else
_KEYWORD_STATUSES = frozenset(status for _, status in KEYWORD_ROWS)


@dataclass(slots=True)
class _Marker:
    pointer: str
    type: str
    value_pointer: str
    values: dict[str, tuple[int, int]] = field(default_factory=dict)  # value -> (count, status)


@dataclass(slots=True)
class _Group:
    """Shapes of one route with the same markers: one rule."""

    route: str
    shapes: list[str]
    count: int
    status: int
    markers: list[_Marker]
    statuses: set[int] = field(default_factory=set)  # every shape's status


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One rule to add: its route, its YAML (`rule`) and its embedded tests."""

    route: str
    name: str
    shapes: tuple[str, ...]
    responses: int
    rule: dict[str, Any]
    tests: tuple[dict[str, Any], ...]


# -- shapes -> rules -------------------------------------------------------------------------


def suggestions(
    snapshot: Mapping[str, Any], routes: Sequence[str], taken: Iterable[str] = ()
) -> list[Suggestion]:
    """One rule per route and set of markers, most seen first; `routes` are the config's
    route names (shapes of other routes are left out), `taken` the rule names in use."""
    used = set(taken)
    out = []
    for group in _groups(snapshot, routes):
        name = RULE_PREFIX + group.shapes[0].removeprefix("s-")
        if name in used:
            continue  # adopted already (and named after this shape)
        used.add(name)
        for rule, tests in [*_keyword_rules(name, group), _rule(name, group)]:
            out.append(
                Suggestion(
                    group.route, rule["name"], tuple(group.shapes), group.count, rule, tuple(tests)
                )
            )
    return out


def _text_marker(group: _Group) -> _Marker | None:
    """The marker that is the message itself (`errorMessage`, `error_msg`), when no marker
    of the group has code values: its shapes' statuses came from the keyword classifier
    reading it."""
    if any(m.values for m in group.markers):
        return None
    return next(
        (m for m in group.markers if m.type == "string" and _role(m) in ("name", "message")),
        None,
    )


def _keyword_rules(name: str, group: _Group) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The catalogue keeps no message, so a status the classifier read in one is carried by
    a rule that reads the same keywords: one per classifier row whose status the group's
    shapes had, in the classifier's order (its first matching row wins, so does the first
    matching rule).  The group's own rule then says 502, as the classifier does when no
    keyword is found."""
    text = _text_marker(group)
    if text is None:
        return []
    found = []
    for keywords, status in KEYWORD_ROWS:
        if status not in group.statuses:
            continue
        pattern = "(?i)(" + "|".join(k.replace(" ", "[ _-]") for k in keywords) + ")"
        rule_name = f"{name}-{status}"
        conditions = [*_when(group), {"path": text.pointer, "matches": pattern}]
        rule = {"name": rule_name, "when": {"all": conditions}, "status": status, "action": "flag"}
        body = _body(group.markers, text, None)
        _put(body, text.pointer, keywords[0])
        title = f"{rule_name}: {text.pointer} saying {keywords[0]!r} is flagged {status}"
        found.append((rule, [_test(title, group.route, body, rule_name, status)]))
    return found


def _when(group: _Group) -> list[dict[str, Any]]:
    """Every marker of the group is one, and the body names no resource."""
    conditions = [c for marker in group.markers for c in _conditions(marker)]
    return conditions + [{"path": f"/{key}", "exists": False} for key in RESOURCE_KEYS]


def _groups(snapshot: Mapping[str, Any], routes: Sequence[str]) -> list[_Group]:
    groups: dict[tuple[str, tuple[tuple[str, str, str], ...]], _Group] = {}
    by_route = snapshot.get("routes") or {}
    for route in routes:
        shapes = sorted(by_route.get(route) or (), key=lambda s: -int(s.get("count", 0)))
        for shape in shapes:
            markers = [_marker(m) for m in shape.get("markers") or ()]
            if not markers:
                continue
            key = (route, tuple((m.pointer, m.type, m.value_pointer) for m in markers))
            group = groups.get(key)
            if group is None:
                status = int(shape.get("status") or 502)
                groups[key] = _Group(route, [str(shape["id"])], 0, status, markers)
                group = groups[key]
            else:
                group.shapes.append(str(shape["id"]))
                for mine, theirs in zip(group.markers, markers, strict=True):
                    for value, (count, status) in theirs.values.items():
                        seen = mine.values.get(value, (0, status))
                        mine.values[value] = (seen[0] + count, seen[1])
            group.count += int(shape.get("count", 0))
            group.statuses.add(int(shape.get("status") or FALLBACK_STATUS))
            group.statuses.update(int(k) for k in shape.get("statuses") or ())
    return sorted(groups.values(), key=lambda g: (-g.count, g.route, g.shapes[0]))


def _marker(data: Mapping[str, Any]) -> _Marker:
    pointer = str(data["pointer"])
    values = {
        str(value): (int(seen.get("count", 0)), int(seen.get("status", 502)))
        for value, seen in (data.get("values") or {}).items()
    }
    return _Marker(
        pointer, str(data.get("type", "")), str(data.get("value_pointer") or pointer), values
    )


def _role(marker: _Marker) -> str:
    """What makes this pointer a marker (`suspect.marker_role`), from its key and type."""
    key = marker.pointer.rsplit("/", 1)[-1].replace("~1", "/").replace("~0", "~")
    return marker_role(key, marker.type) or "name"  # a marker the detector added later


def _conditions(marker: _Marker) -> list[dict[str, Any]]:
    """The tests that hold exactly when `marker` is a marker (`suspect._is_marker`)."""
    path, role = marker.pointer, _role(marker)
    if role == "flag":
        return [{"path": path, "equals": False}]
    if role == "word":
        return [{"path": path, "matches": _FAILED}]
    if role == "numeric":
        return [{"path": path, "in": _HTTP_ERRORS}]
    # the matchers have no type test: `matches` holds only for a string, `nonempty` only
    # for a non-empty string, array or object, so these pin the marker's JSON type
    found: list[dict[str, Any]]
    if marker.type in ("object", "array"):
        found = [{"path": path, "nonempty": True}, {"not": {"path": path, "matches": _ANY}}]
    elif marker.type == "boolean":
        found = [{"path": path, "equals": True}]
    elif marker.type == "string":
        found = [
            {"path": path, "matches": _ANY},
            {"not": {"path": path, "in": ["", "0"]}},
            {"not": {"path": path, "matches": _SUCCESS}},
        ]
    else:  # a number other than 0
        found = [
            {"path": path, "exists": True},
            {"not": {"path": path, "matches": _ANY}},
            {"not": {"path": path, "nonempty": True}},
            {"not": {"path": path, "in": [0, None, True, False, [], {}]}},
        ]
    if role == "message":  # `{"errcode": 0, "errmsg": "ok"}` is a success
        holder = path.rsplit("/", 1)[0]
        found += [
            {"not": {"path": f"{holder}/{escape_token(key)}", "in": [0, "0", "", None, False]}}
            for key in sorted(ZERO_CODE_KEYS)
        ]
    return found


def _rule(name: str, group: _Group) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    conditions = _when(group)
    coded = max(group.markers, key=lambda m: len(m.values))
    status: int | dict[str, Any] = group.status
    if _text_marker(group) is not None and group.statuses & _KEYWORD_STATUSES:
        status = FALLBACK_STATUS  # the keywords' own rules come first (`_keyword_rules`)
    if coded.values:
        mapping = {value: seen[1] for value, seen in sorted(coded.values.items())}
        status = {"from": coded.value_pointer, "map": mapping, "default": group.status}
    rule = {"name": name, "when": {"all": conditions}, "status": status, "action": "flag"}
    tests = []
    ranked = sorted(coded.values.items(), key=lambda item: (-item[1][0], item[0]))
    for value, (_, value_status) in ranked[:MAX_TESTS]:
        body = _body(group.markers, coded, value)
        tests.append(
            _test(
                f"{name}: {coded.value_pointer} {value} is flagged {value_status}",
                group.route,
                body,
                name,
                value_status,
            )
        )
    if not ranked:
        body = _body(group.markers, coded, None)
        assert isinstance(status, int)
        tests.append(_test(f"{name}: flagged {status}", group.route, body, name, status))
    clean = _body(group.markers, coded, None, clean=True)
    tests.append(
        {
            "name": f"{name}: the same body with clean values is not flagged",
            "route": group.route,
            "response": {"status": 200, "body": clean},
            "expect": {"status": 200, "rule": None},
        }
    )
    return rule, tests


def _test(title: str, route: str, body: Any, name: str, status: int) -> dict[str, Any]:
    return {
        "name": title,
        "route": route,
        "response": {"status": 200, "body": body},
        # the status it stands for: a flagged response meets it through Tunnelguard-Status,
        # so the test holds before and after the switch to `action: rewrite`
        "expect": {"status": status, "rule": name},
    }


def _body(
    markers: Sequence[_Marker], coded: _Marker, value: str | None, *, clean: bool = False
) -> dict[str, Any]:
    """A body with these markers: `coded` carrying `value`, the others a value of their
    type that makes them markers (or, `clean`, one that does not)."""
    body: dict[str, Any] = {}
    for marker in markers:
        if clean:
            _put(body, marker.pointer, _clean_value(marker))
            continue
        if marker is coded and value is not None and marker.value_pointer != marker.pointer:
            _put(body, marker.pointer, {})
            _put(body, marker.value_pointer, value)
            continue
        if marker is coded and value is not None:
            _put(body, marker.pointer, _typed(value, marker.type))
            continue
        _put(body, marker.pointer, _marker_value(marker))
    return body


def _typed(value: str, json_type: str) -> Any:
    if json_type == "number":
        try:
            return int(value)
        except ValueError:
            return float(value)
    if json_type == "boolean":
        return value == "true"
    return value


def _marker_value(marker: _Marker) -> Any:
    role = _role(marker)
    if role == "flag":
        return False
    if role == "word":
        return "error"
    if role == "numeric":
        return 500
    return {"object": {"code": "ERROR"}, "array": [{"code": "ERROR"}], "string": "ERROR",
            "boolean": True}.get(marker.type, 1)  # fmt: skip


def _clean_value(marker: _Marker) -> Any:
    role = _role(marker)
    if role == "flag":
        return True
    if role == "word":
        return "ok"
    if role == "numeric":
        return 200
    return {"object": {}, "array": [], "string": "", "boolean": False}.get(marker.type, 0)


def _put(doc: dict[str, Any], pointer: str, value: Any) -> None:
    """Set `value` at an RFC 6901 pointer, making the objects on the way."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    for token in tokens[:-1]:
        child = doc.get(token)
        if not isinstance(child, dict):
            child = doc[token] = {}
        doc = child
    doc[tokens[-1]] = value


# -- into the config -------------------------------------------------------------------------


def merged(text: str, found: Sequence[Suggestion], source: str) -> str:
    """`text` (a config's YAML) with `found` added: each rule at the end of its route's
    `rules` (in order), its definition under `rules:`, its tests under `tests:`.  Comments
    and layout of `text` are kept.

    At the end, not first as SPEC 10 words it: a suspect shape is by definition one no rule
    of its route matched, so after them its rule still catches every body of it; first, a
    rule's `when` (wider than one shape) could take a body a preset rewrites today, and the
    flag would change its status (`{"ok": false, "error": 42}`: slack's 401, or a flagged
    200 under a rule made from Last.fm's `{"error": 10}`), which SPEC 1 says adopting
    suggested rules never does."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # a condition stays on its line
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(text)
    routes = {route["name"]: route for route in doc["routes"]}
    for route_name in dict.fromkeys(s.route for s in found):
        names = [s.name for s in found if s.route == route_name]
        route = routes[route_name]
        seq = route.get("rules")
        if seq is None:
            seq = route["rules"] = _flow_seq([])
        seq.extend(names)  # after the route's own rules: see `merged`
    rules = doc.get("rules")
    if rules is None:
        doc["rules"] = rules = CommentedSeq()
    tests = doc.get("tests")
    if tests is None:
        doc["tests"] = tests = CommentedSeq()
    for suggestion in found:
        rules.append(_styled(suggestion.rule, _RULE_BLOCKS))
        note = (
            f"suggested by `tunnelguard suggest` from {source}:\n"
            f"shape {', '.join(suggestion.shapes)} on route {suggestion.route}, "
            f"{suggestion.responses} response{'s' if suggestion.responses != 1 else ''}; "
            "set `action: rewrite` once it is right"
        )
        rules.yaml_set_comment_before_after_key(len(rules) - 1, before=note, indent=2)
        for test in suggestion.tests:
            tests.append(_styled(test, _TEST_BLOCKS))
    out = StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _flow_seq(items: list[Any]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _styled(value: Any, block: frozenset[str], path: str = "") -> Any:
    """`value` as ruamel nodes: block style at the paths in `block` (`""` the top,
    `when`, `when.all`, ...), flow style (one line) everywhere else."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        node: Any = CommentedMap(
            (k, _styled(v, block, f"{path}.{k}".lstrip("."))) for k, v in value.items()
        )
    elif isinstance(value, list):
        node = CommentedSeq(_styled(v, block, f"{path}[]") for v in value)
    else:
        return value
    if path in block:
        node.fa.set_block_style()
    else:
        node.fa.set_flow_style()
    return node


_RULE_BLOCKS = frozenset({"", "when", "when.all", "status"})
_TEST_BLOCKS = frozenset({"", "response"})


def verify(text: str, file: str) -> list[str]:
    """Problems `tunnelguard check` would report on the output (none expected)."""
    try:
        config = parse_text(text, file)
    except ConfigError as errors:
        return [problem.render() for problem in errors.problems]
    return failure_report(config)
