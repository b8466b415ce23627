"""simdjson views of a JSON document (proxy.wire.jsondoc) against their reference model,
`orjson.loads`: the same values, keys and order, read lazily."""

from __future__ import annotations

import gc

import orjson
import pytest
import simdjson

from proxy.wire import jsondoc
from proxy.wire.jsondoc import (
    ARRAY_TYPES,
    OBJECT_TYPES,
    SIZED_TYPES,
    LazyArray,
    LazyObject,
    Refused,
)


def _live_views() -> int:
    gc.collect()
    kinds = (LazyObject, LazyArray, simdjson.Object, simdjson.Array)
    return sum(1 for o in gc.get_objects() if isinstance(o, kinds))


@pytest.mark.parametrize(
    "text",
    [
        b'{"ok": false, "error": "invalid_auth", "n": [1, 2.5, null, true, {"a": []}]}',
        b"[]",
        b"{}",
        b'[{"a": {"b": [[], {}]}}, "x", -0, -0.0, 1E2, 0.1e1, 1e-400]',
        b'"just a string"',
        b"0",
        b"null",
        b'{"\\u00e9": "\\ud83d\\ude00", "a\\/b": "\\u0000", "": ""}',
        b"[18446744073709551615, -9223372036854775808, 9007199254740993]",  # 64-bit edges
        b'{"a": 1, "b": {"a": 2, "a": 3}, "c": [{"d": 4, "d": 5}]}',  # nested repeated keys
        b"\xef\xbb\xbf{}",  # one leading BOM is skipped (RFC 8259 8.1), as inspection strips it
    ],
)
def test_plain_is_what_orjson_builds(text: bytes) -> None:
    expected = orjson.loads(text.removeprefix(b"\xef\xbb\xbf"))
    value = jsondoc.parse(text)
    assert jsondoc.plain(value) == expected
    assert type(jsondoc.plain(value)) is type(expected)


def test_containers_are_views_and_scalars_are_python_values() -> None:
    doc = jsondoc.parse(b'{"o": {"k": 1}, "a": [1, {"x": []}], "s": "t", "i": 7, "f": 7.5}')
    assert isinstance(doc, LazyObject)
    assert isinstance(doc["o"], LazyObject)
    assert isinstance(doc["a"], LazyArray)
    assert isinstance(doc["a"][1], LazyObject)
    assert isinstance(doc["a"][1]["x"], LazyArray)
    assert [type(doc[k]) for k in ("s", "i", "f")] == [str, int, float]
    assert doc.get("b") is doc.get("o", 1).get("b")  # both None: absent is the default
    assert isinstance(doc, OBJECT_TYPES) and isinstance(doc["a"], ARRAY_TYPES)
    assert (
        isinstance(doc, SIZED_TYPES)
        and isinstance(doc["a"], SIZED_TYPES)
        and not isinstance(7, SIZED_TYPES)
    )


def test_an_object_reads_like_orjsons_dict() -> None:
    text = b'{"b": 1, "a": {"c": null}, "": false, "x/y": [0]}'
    doc, ref = jsondoc.parse(text), orjson.loads(text)
    assert isinstance(doc, LazyObject) and isinstance(ref, dict)
    assert list(doc) == list(ref) and len(doc) == len(ref)
    assert doc.keys() == ref.keys()
    for key in (*ref, "absent", "B", "x", "x/y/0"):
        assert (key in doc) == (key in ref)
        assert jsondoc.plain(doc.get(key, "dflt")) == ref.get(key, "dflt")
    assert doc["b"] == 1 and doc["a"]["c"] is None and doc[""] is False
    with pytest.raises(KeyError):
        doc["absent"]
    assert dict(doc.items())["b"] == 1 and doc == {"b": 1, "a": {"c": None}, "": False, "x/y": [0]}


def test_a_value_is_built_once() -> None:
    doc = jsondoc.parse(b'{"e": {"m": "x"}}')
    assert isinstance(doc, LazyObject)
    assert doc["e"] is doc.get("e")


def test_an_array_reads_like_orjsons_list() -> None:
    text = b'[1, "a", {"b": [2]}, [], null]'
    doc, ref = jsondoc.parse(text), orjson.loads(text)
    assert isinstance(doc, LazyArray)
    assert len(doc) == 5 and bool(doc) and not jsondoc.parse(b"[]")
    assert [jsondoc.plain(v) for v in doc] == ref
    assert [jsondoc.plain(doc[i]) for i in range(5)] == ref
    assert jsondoc.plain(doc[-1]) is None
    assert [jsondoc.plain(v) for v in doc[1:3]] == ref[1:3]
    with pytest.raises(IndexError):
        doc[5]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        # orjson keeps the LAST value of a repeated key; simdjson's own lookup finds the first
        (b'{"ok": true, "ok": false}', "ok", False),
        (b'{"e": {"m": 1}, "e": "x"}', "e", "x"),
        (b'{"a": 1, "b": 2, "a": 3}', "a", 3),
    ],
)
def test_a_repeated_key_keeps_its_last_value(text: bytes, key: str, expected: object) -> None:
    doc = jsondoc.parse(text)
    assert isinstance(doc, OBJECT_TYPES)
    assert doc.get(key) == expected == orjson.loads(text)[key]
    assert list(doc) == list(orjson.loads(text))  # each key once, where it first came


def test_a_repeated_key_in_a_nested_object() -> None:
    doc = jsondoc.parse(b'{"error": {"code": 1, "code": 2}}')
    assert isinstance(doc, LazyObject)
    error = doc["error"]
    assert isinstance(error, OBJECT_TYPES) and error["code"] == 2


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        # pysimdjson looks keys up as C strings: "x\0y" would find "x"
        (b'{"x\\u0000y": 4, "x": 5}', "x\x00y", 4),
        (b'{"x": 5, "x\\u0000y": {"k": [1]}}', "x\x00y", {"k": [1]}),
        (b'{"x\\u0000y": 4}', "x", "absent"),
        (b'{"x": 5}', "x\x00y", "absent"),
        (b'{"\\u0000": 1}', "\x00", 1),
    ],
)
def test_a_key_holding_nul(text: bytes, key: str, expected: object) -> None:
    doc = jsondoc.parse(text)
    assert isinstance(doc, LazyObject)
    assert jsondoc.plain(doc.get(key, "absent")) == expected
    assert orjson.loads(text).get(key, "absent") == expected


@pytest.mark.parametrize(
    "text",
    [
        # JSON orjson reads, simdjson cannot hold: the caller parses with orjson instead
        b"18446744073709551616",  # 2**64: orjson gives a float
        b"-9223372036854775809",  # -2**63 - 1
        b'{"code": 123456789012345678901234567890}',
        b"[" * 1024 + b"1" + b"]" * 1024,  # a scalar at depth 1024: orjson's limit, not simdjson's
        # not JSON to either
        b"",
        b" ",
        b"{",
        b'{"a": 1} x',
        b"NaN",
        b"1e400",
        b'"\\ud800"',
        b'"\xff"',
        b"\xef\xbb\xbf\xef\xbb\xbf{}",  # one BOM is skipped, not two
        b"[" * 1025 + b"]" * 1025,
    ],
)
def test_refused(text: bytes) -> None:
    with pytest.raises(Refused):
        jsondoc.parse(text)


def test_refused_is_a_value_error() -> None:
    assert issubclass(Refused, ValueError)


def test_a_new_parse_leaves_earlier_views_valid() -> None:
    first = jsondoc.parse(b'{"a": {"b": [1, 2]}}')
    second = jsondoc.parse(b'{"a": {"b": [3]}}')
    assert jsondoc.plain(first) == {"a": {"b": [1, 2]}}
    assert jsondoc.plain(second) == {"a": {"b": [3]}}


def test_views_keep_nothing_once_dropped() -> None:
    before = _live_views()
    doc = jsondoc.parse(b'{"a": {"b": [1, {"c": 2}]}}')
    assert isinstance(doc, LazyObject)
    inner = doc["a"]["b"][1]["c"]
    assert _live_views() > before
    del doc
    assert _live_views() == before
    assert inner == 2


def test_plain_leaves_plain_values_alone() -> None:
    value = {"a": [1]}
    assert jsondoc.plain(value) is value
    assert jsondoc.plain("s") == "s"


def test_repr_names_what_it_holds() -> None:
    assert repr(jsondoc.parse(b'{"a": 1, "b": 2}')) == "LazyObject(['a', 'b'])"
    assert repr(jsondoc.parse(b"[1, 2, 3]")) == "LazyArray(<3 elements>)"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (b'{"a": 1}', "object"),
        (b"[1, 2]", "array"),
        (b'"x"', "string"),
        (b"true", "boolean"),
        (b"false", "boolean"),
        (b"null", "null"),
        (b"0", "number"),
        (b"-1.5e3", "number"),
    ],
)
def test_json_type_names_built_values_and_views_alike(text: bytes, name: str) -> None:
    assert jsondoc.json_type(orjson.loads(text)) == name
    wrapped = jsondoc.parse(b'{"v": ' + text + b', "pad": "' + b"x" * 4096 + b'"}')
    assert jsondoc.json_type(wrapped.get("v")) == name  # a simdjson view's member
