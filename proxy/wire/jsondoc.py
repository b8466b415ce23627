"""JSON documents as the rules read them, built into Python objects only where a rule looks
(issue 18 point 3).

`parse` reads a body with simdjson, which validates the whole text as orjson does, and
returns its top-level value: a scalar as the Python value orjson gives, an object as a
`LazyObject`, an array as a `LazyArray`.  These are read-only views of the parsed document
that build Python objects only for the members a rule reads, and every value read out of
them is again a scalar or a view.  One `decide()` of the bench's 16 KiB clean body costs
~13 µs instead of ~51 µs with orjson, which builds every object (bench/results.md,
"Inspection parser (issue 18 point 3)").

Code that reads JSON values (pointers, rules, presets) takes both views and orjson's `dict`
and `list`: it tests `isinstance(v, OBJECT_TYPES)` / `isinstance(v, ARRAY_TYPES)`, never
`dict` or `list`, and reads an object with `get`, `in`, `[key]`, iteration and `len`, an
array with `[i]`, iteration and `len`.

The reference model is `orjson.loads`: a view reads the values, keys and order orjson builds
(tests/wire/test_jsondoc.py; tests/rules/test_decide.py holds `decide()` against a reference
that parses with orjson).  Where pysimdjson alone would differ, the view does what orjson does:

- a repeated key: orjson keeps the last value, pysimdjson's lookup finds the first; an object
  whose keys repeat is built whole, as orjson builds it (a plain `dict`, rare);
- a key holding U+0000: pysimdjson looks keys up as C strings, which end at the NUL, so such
  a key is found by walking the object's members;
- an integer outside int64..uint64 (orjson reads it as a float) or a scalar nested 1024
  deep (orjson's limit is 1024, simdjson's one less): `Refused`, and the caller parses the
  text with orjson.

Each document gets its own `simdjson.Parser`, which lives as long as a view of it does.  A
parser reused across documents saves ~0.2 µs a parse, but raises on the next parse while a
view of the previous document is alive, and keeps the buffers of the largest document it
ever read; a new one frees them with the last view.  Keep no view beyond the evaluation:
what a verdict keeps is `str` and `int`.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView
from typing import Final, overload

import simdjson


class Refused(ValueError):
    """simdjson did not parse the text: not JSON, or JSON it cannot hold (an integer beyond
    64 bits, a scalar nested 1024 deep).  The text may still be JSON to orjson."""


def parse(data: bytes) -> object:
    """The top-level value of `data`, a JSON text (one leading UTF-8 BOM is skipped).

    Raises `Refused` when simdjson does not parse it."""
    try:
        return _open(simdjson.Parser().parse(data))
    except (ValueError, RuntimeError) as why:  # RuntimeError: depth and big integers
        raise Refused(str(why)) from None


_UNREAD: Final = object()
_ABSENT: Final = object()


class LazyObject:
    """A JSON object of a parsed document, read like orjson's `dict`; a member's value is
    built when first read.

    Keys are listed once (listing them builds no value); a value is looked up only for a key
    that is there, because a lookup that misses is slow in pysimdjson (~2 µs).  A plain
    class, not a `Mapping`: `isinstance` against an ABC costs ~100 ns more per check, and the
    rules make dozens per body."""

    __slots__ = ("_members", "_source")

    def __init__(self, source: simdjson.Object, members: dict[str, object]) -> None:
        self._source = source
        self._members = members  # key -> its value once read, else _UNREAD

    def get(self, key: str, default: object = None) -> object:
        value = self._members.get(key, _ABSENT)
        if value is _UNREAD:
            value = self._members[key] = self._read(key)
        elif value is _ABSENT:
            return default
        return value

    def __getitem__(self, key: str) -> object:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def keys(self) -> KeysView[str]:
        return self._members.keys()

    def items(self) -> Iterator[tuple[str, object]]:
        for key in self._members:
            yield key, self.get(key)

    def __eq__(self, other: object) -> bool:
        """As `dict ==` (Python's equality, not JSON's: see `ruleset.json_equal`)."""
        if not isinstance(other, dict | LazyObject):
            return NotImplemented
        return self.keys() == other.keys() and all(self.get(k) == other[k] for k in self)

    __hash__ = None  # type: ignore[assignment]  # equal to a dict, so unhashable as one

    def _read(self, key: str) -> object:
        if "\x00" in key:  # pysimdjson passes the key as a C string: it would stop at the NUL
            for name, value in self._source.items():  # built whole: a rare key
                if name == key:
                    return value
        return _open(self._source[key])

    def __repr__(self) -> str:
        return f"LazyObject({list(self._members)!r})"


class LazyArray:
    """A JSON array of a parsed document, read like orjson's `list`; an element is built
    when it is read."""

    __slots__ = ("_source",)

    def __init__(self, source: simdjson.Array) -> None:
        self._source = source

    @overload
    def __getitem__(self, index: int) -> object: ...

    @overload
    def __getitem__(self, index: slice) -> list[object]: ...

    def __getitem__(self, index: int | slice) -> object:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _open(self._source[index])

    def __iter__(self) -> Iterator[object]:
        for value in self._source:
            yield _open(value)

    def __len__(self) -> int:
        return len(self._source)

    def __eq__(self, other: object) -> bool:
        """As `list ==` (Python's equality, not JSON's: see `ruleset.json_equal`)."""
        if not isinstance(other, list | LazyArray):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so unhashable as one

    def __repr__(self) -> str:
        return f"LazyArray(<{len(self)} elements>)"


OBJECT_TYPES: Final = (dict, LazyObject)
"""What a JSON object is as rules see it: orjson's `dict`, or a `LazyObject`."""
ARRAY_TYPES: Final = (list, LazyArray)
"""What a JSON array is as rules see it: orjson's `list`, or a `LazyArray`."""
SIZED_TYPES: Final = (str, dict, LazyObject, list, LazyArray)
"""The JSON values with a length: strings, objects and arrays."""
Object = dict[str, object] | LazyObject
"""The type of a JSON object as rules read it."""
Array = list[object] | LazyArray
"""The type of a JSON array as rules read it."""


def json_type(value: object) -> str:
    """The JSON type of a parsed value (built by orjson or a simdjson view): object, array,
    string, boolean, null or number."""
    if isinstance(value, OBJECT_TYPES):
        return "object"
    if isinstance(value, ARRAY_TYPES):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is True or value is False:
        return "boolean"
    return "null" if value is None else "number"


def _open(value: object) -> object:
    if isinstance(value, simdjson.Object):
        members = dict.fromkeys(value, _UNREAD)  # the keys, in order, listed once
        if len(members) != len(value):  # a repeated key: orjson keeps its last value
            return value.as_dict()
        return LazyObject(value, members)
    if isinstance(value, simdjson.Array):
        return LazyArray(value)
    return value


def plain(value: object) -> object:
    """`value` as orjson would have built it: views become `dict` and `list`, recursively."""
    if isinstance(value, LazyObject):
        return value._source.as_dict()
    if isinstance(value, LazyArray):
        return value._source.as_list()
    return value
