"""YAML with positions: documents become plain values plus a map from path to line/column.

PyYAML composes a node graph (with marks); we construct values ourselves so that
- every mapping key stays the text the user wrote (`on:` is the string "on", and
  `100:` in a status map keeps its text form, as SPEC 4.2 requires),
- plain scalars resolve by the YAML 1.2 core schema (`yes`/`no`/`on`/`off` are strings),
- duplicate keys are errors instead of silently losing the first value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

try:  # the C loader is much faster and behaves identically for composing
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - libyaml missing
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

# PyYAML's resolver implements YAML 1.1 (`1e3` and `0o17` are strings there, `yes` is a bool),
# so its tags are useless to us.  Untagged plain scalars get this private tag instead, and
# `resolve_plain` applies the YAML 1.2 core schema to them.
_PLAIN_TAG = "tag:tunnelguard,2024:plain"
_STR_TAG = "tag:yaml.org,2002:str"


class _Loader(_BaseLoader):
    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN_TAG
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]


Path = tuple[str | int, ...]

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    col: int  # 1-based


@dataclass(slots=True)
class Source:
    """A parsed document and where each value came from."""

    file: str
    value: object
    marks: dict[Path, Mark] = field(default_factory=dict)
    key_marks: dict[Path, Mark] = field(default_factory=dict)

    def mark(self, path: Path) -> Mark | None:
        """The position of the value at `path`, else of its nearest ancestor."""
        while True:
            found = self.marks.get(path)
            if found is not None:
                return found
            if not path:
                return None
            path = path[:-1]


class YamlError(Exception):
    """The text is not a YAML document we can read; `mark` says where."""

    def __init__(self, message: str, mark: Mark | None, path: Path = ()) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.path = path  # where in the document, when known (duplicate keys)


def resolve_plain(text: str) -> object:
    """YAML 1.2 core schema resolution of a plain (unquoted) scalar."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _INT_OCT.match(text):
        return int(text[2:], 8)
    if _INT_HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


_MAX_DEPTH = 64  # config documents are shallow; this bounds recursion on hostile input
_MAX_NODES = 100_000  # bounds alias expansion ("billion laughs"); real configs have hundreds


def load(text: str, file: str = "<config>") -> Source:
    """Parse one YAML document; raise YamlError with a position on failure."""
    try:
        # libyaml's composer recurses in C: a deeply nested document would overflow the C
        # stack and kill the process.  Its event parser does not recurse, so check depth first.
        _check_depth(text)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(mark.line + 1, mark.column + 1) if mark is not None else None
        if exc.problem == "exceeded maximum nesting depth":
            # PyYAML 6.0.4's libyaml has a limit of its own (1000 levels), and its scanner can
            # reach it while reading ahead, before _check_depth has counted 64 collections.
            raise YamlError("document nested too deeply", where) from None
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise YamlError(f"invalid YAML: {problem}", where) from None
    except yaml.reader.ReaderError as exc:
        raise YamlError(f"invalid YAML: {exc.reason}", _byte_mark(text, exc.position)) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}", None) from None
    except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8 encoded for libyaml
        raise YamlError(f"invalid text: {exc.reason}", _char_mark(text, exc.start)) from None
    source = Source(file, None)
    if node is None:
        return source
    source.value = _construct(node, (), source, 0, [0])
    return source


def _check_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                mark = event.start_mark
                where = Mark(mark.line + 1, mark.column + 1) if mark is not None else None
                raise YamlError("document nested too deeply", where)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _char_mark(text: str, index: int) -> Mark:
    before = text[:index]
    return Mark(before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1)


def _byte_mark(text: str, position: int) -> Mark:
    """libyaml reports reader errors as a UTF-8 byte offset."""
    chars = len(text.encode("utf-8", "surrogatepass")[:position].decode("utf-8", "ignore"))
    return _char_mark(text, chars)


def _construct(node: yaml.Node, path: Path, source: Source, depth: int, count: list[int]) -> object:
    source.marks[path] = _mark(node)
    if depth > _MAX_DEPTH:
        raise YamlError("document nested too deeply", _mark(node))
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise YamlError(
            f"document too large: more than {_MAX_NODES} values (aliases are expanded)",
            _mark(node),
        )
    if isinstance(node, yaml.ScalarNode):
        # Plain untagged scalars and plain scalars with a non-str tag (`!!int 5`) resolve by
        # the core schema; quoted and block scalars and `!!str` are text.
        if node.tag == _PLAIN_TAG or (not node.style and node.tag != _STR_TAG):
            return resolve_plain(node.value)
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, i), source, depth + 1, count)
            for i, item in enumerate(node.value)
        ]
    if isinstance(node, yaml.MappingNode):
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be plain text", _mark(key_node))
            key = str(key_node.value)
            if key in result:
                raise YamlError(f"duplicate key {key!r}", _mark(key_node), (*path, key))
            source.key_marks[(*path, key)] = _mark(key_node)
            result[key] = _construct(value_node, (*path, key), source, depth + 1, count)
        return result
    raise YamlError("unsupported YAML node", _mark(node))  # pragma: no cover
