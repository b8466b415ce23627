"""RFC 6901 JSON pointers, compiled once, with a `*` wildcard over array elements.

`/errors/*/extensions/code` yields the `code` of every element of `errors`.  A `*`
token matches every element of an array; on an object it is the literal key `*`
(RFC 6901 has no wildcard, so the object case keeps its standard meaning).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.wire.jsondoc import ARRAY_TYPES, OBJECT_TYPES

WILDCARD = "*"


class PointerError(ValueError):
    """The text is not an RFC 6901 JSON pointer."""


@dataclass(frozen=True, slots=True)
class Pointer:
    """A compiled JSON pointer.  `tokens` are unescaped reference tokens."""

    text: str
    tokens: tuple[str, ...]
    has_wildcard: bool

    def find(self, doc: object) -> Iterator[object]:
        """Yield every value the pointer reaches in `doc`, in document order."""
        if not self.has_wildcard:
            value = _walk(doc, self.tokens)
            if value is not _MISSING:
                yield value
            return
        yield from _find(doc, self.tokens, 0)

    def first(self, doc: object) -> object:
        """The first value reached, or `MISSING`."""
        if not self.has_wildcard:
            return _walk(doc, self.tokens)
        for value in _find(doc, self.tokens, 0):
            return value
        return _MISSING


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING = _Missing()
MISSING: object = _MISSING


def compile_pointer(text: str) -> Pointer:
    """Compile `text`; raise PointerError with a message a user can act on."""
    if text == "":
        return Pointer(text, (), False)
    if not text.startswith("/"):
        raise PointerError(
            f"expected a JSON pointer starting with '/', got {text!r} (did you mean '/{text}'?)"
        )
    tokens: list[str] = []
    for raw in text[1:].split("/"):
        i = raw.find("~")
        while i != -1:
            if i + 1 >= len(raw) or raw[i + 1] not in "01":
                raise PointerError(
                    f"invalid escape in JSON pointer {text!r}: '~' must be followed by 0 or 1"
                )
            i = raw.find("~", i + 2)
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return Pointer(text, tuple(tokens), WILDCARD in tokens)


def _index(token: str, length: int) -> int:
    """The array index `token` names, or -1 (RFC 6901: no leading zeros, no sign)."""
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        return -1
    index = int(token)
    return index if index < length else -1


def _walk(doc: object, tokens: tuple[str, ...]) -> object:
    for token in tokens:
        if isinstance(doc, OBJECT_TYPES):
            if token not in doc:
                return _MISSING
            doc = doc[token]
        elif isinstance(doc, ARRAY_TYPES):
            index = _index(token, len(doc))
            if index < 0:
                return _MISSING
            doc = doc[index]
        else:
            return _MISSING
    return doc


def _find(doc: object, tokens: tuple[str, ...], start: int) -> Iterator[object]:
    for pos in range(start, len(tokens)):
        token = tokens[pos]
        if isinstance(doc, OBJECT_TYPES):
            if token not in doc:
                return
            doc = doc[token]
        elif isinstance(doc, ARRAY_TYPES):
            if token == WILDCARD:
                for element in doc:
                    yield from _find(element, tokens, pos + 1)
                return
            index = _index(token, len(doc))
            if index < 0:
                return
            doc = doc[index]
        else:
            return
    yield doc


def escape_token(key: str) -> str:
    """`key` as one RFC 6901 reference token (`~` -> `~0`, `/` -> `~1`)."""
    return key.replace("~", "~0").replace("/", "~1")
