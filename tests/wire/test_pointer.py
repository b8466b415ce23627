"""RFC 6901 JSON pointers with the `*` array wildcard (proxy.wire.pointer).

Documents are walked as orjson builds them and as simdjson views (proxy.wire.jsondoc), the
two forms the rules read; the `represent` fixture gives each test both.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from proxy.wire import jsondoc
from proxy.wire.pointer import MISSING, PointerError, compile_pointer

Represent = Callable[[object], object]


@pytest.fixture(params=["orjson", "view"])
def represent(request: pytest.FixtureRequest) -> Represent:
    """A document as orjson builds it (plain dicts and lists), or as a simdjson view."""
    if request.param == "orjson":
        return lambda doc: orjson.loads(orjson.dumps(doc))
    return lambda doc: jsondoc.parse(orjson.dumps(doc))


# The example document of RFC 6901 section 5.
RFC_DOC: dict[str, object] = {
    "foo": ["bar", "baz"],
    "": 0,
    "a/b": 1,
    "c%d": 2,
    "e^f": 3,
    "g|h": 4,
    "i\\j": 5,
    'k"l': 6,
    " ": 7,
    "m~n": 8,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", RFC_DOC),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/foo/1", "baz"),
        ("/", 0),
        ("/a~1b", 1),
        ("/c%d", 2),
        ("/e^f", 3),
        ("/g|h", 4),
        ("/i\\j", 5),
        ('/k"l', 6),
        ("/ ", 7),
        ("/m~0n", 8),
    ],
)
def test_rfc6901_examples(text: str, expected: object, represent: Represent) -> None:
    ptr, doc = compile_pointer(text), represent(RFC_DOC)
    assert ptr.first(doc) == expected
    assert list(ptr.find(doc)) == [expected]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ()),
        ("/", ("",)),
        ("//", ("", "")),
        ("/a/b", ("a", "b")),
        ("/a~1b", ("a/b",)),
        ("/m~0n", ("m~n",)),
        # `~01` is `~1` unescaped once, not `/`: ~1 is replaced before ~0 (RFC 6901 section 4)
        ("/~01", ("~1",)),
        ("/~10", ("/0",)),
        ("/~0~1", ("~/",)),
        ("/errors/*/code", ("errors", "*", "code")),
    ],
)
def test_tokens_are_unescaped(text: str, tokens: tuple[str, ...]) -> None:
    ptr = compile_pointer(text)
    assert ptr.tokens == tokens
    assert ptr.text == text
    assert ptr.has_wildcard == ("*" in tokens)


DOC: dict[str, object] = {
    "a": {"b": [10, 20, {"c": "deep"}]},
    "list": ["x", "y", "z"],
    "null": None,
    "false": False,
    "zero": 0,
    "~": "tilde",
    "*": "star-key",
    "obj": {"*": "literal-star", "k": "v"},
    "10": "ten",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/a/b/0", 10),
        ("/a/b/2/c", "deep"),
        ("/list/2", "z"),
        ("/null", None),  # present with value null is not missing
        ("/false", False),
        ("/zero", 0),
        ("/~0", "tilde"),
        ("/*", "star-key"),  # `*` on an object is the literal key
        ("/obj/*", "literal-star"),
        ("/10", "ten"),  # digits on an object are a key, not an index
        # missing values
        ("/nope", MISSING),
        ("/a/b/3", MISSING),  # past the end
        ("/a/b/-", MISSING),  # "-" names the (non-existent) element after the last
        ("/a/b/01", MISSING),  # leading zeros are not an index
        ("/a/b/00", MISSING),
        ("/a/b/+1", MISSING),
        ("/a/b/-1", MISSING),
        ("/a/b/1.0", MISSING),
        ("/a/b/ 1", MISSING),
        ("/a/b/\u0661", MISSING),  # ARABIC-INDIC DIGIT ONE is not an ASCII digit
        ("/a/b/x", MISSING),
        ("/list/0/x", MISSING),  # into a string
        ("/zero/0", MISSING),  # into a number
        ("/null/x", MISSING),  # into null
        ("/a/x/y", MISSING),
    ],
)
def test_first(text: str, expected: object, represent: Represent) -> None:
    doc = represent(DOC)
    assert compile_pointer(text).first(doc) == expected
    found = list(compile_pointer(text).find(doc))
    assert found == ([] if expected is MISSING else [expected])


def test_missing_is_distinct_from_null(represent: Represent) -> None:
    doc = represent(DOC)
    assert compile_pointer("/null").first(doc) is None
    assert compile_pointer("/absent").first(doc) is MISSING
    assert repr(MISSING) == "MISSING"


def test_index_zero_is_valid(represent: Represent) -> None:
    assert compile_pointer("/list/0").first(represent(DOC)) == "x"


GRAPHQL: dict[str, object] = {
    "data": None,
    "errors": [
        {"message": "a", "extensions": {"code": "UNAUTHENTICATED"}},
        {"message": "b"},  # no extensions: skipped, not an error
        {"message": "c", "extensions": {"code": "FORBIDDEN"}},
        "not an object",
        {"extensions": []},
    ],
}


@pytest.mark.parametrize(
    ("text", "doc", "expected"),
    [
        ("/errors/*/extensions/code", GRAPHQL, ["UNAUTHENTICATED", "FORBIDDEN"]),
        ("/errors/*/message", GRAPHQL, ["a", "b", "c"]),
        ("/errors/*", {"errors": [1, None, "x"]}, [1, None, "x"]),
        ("/errors/*", {"errors": []}, []),
        ("/errors/*/code", {"errors": {"*": {"code": 7}}}, [7]),  # object: literal key
        ("/errors/*/code", {"errors": {"x": {"code": 7}}}, []),
        ("/errors/*/code", {"errors": "text"}, []),
        ("/errors/*/code", {}, []),
        ("/*/*", [[1, 2], [3], "s", {"*": 4}], [1, 2, 3, 4]),
        ("/m/*/1", {"m": [[1, 2], [3], [4, 5]]}, [2, 5]),
        ("/m/*/01", {"m": [[1, 2]]}, []),  # index rules still apply after a wildcard
        ("/m/0/*", {"m": [["a", "b"]]}, ["a", "b"]),
    ],
)
def test_wildcard_yields_in_document_order(
    text: str, doc: object, expected: list[object], represent: Represent
) -> None:
    ptr, doc = compile_pointer(text), represent(doc)
    assert list(ptr.find(doc)) == expected
    assert ptr.first(doc) == (expected[0] if expected else MISSING)


def test_wildcard_first_stops_early(represent: Represent) -> None:
    # `first` must not walk elements after the first hit: a generator proves it lazily.
    ptr = compile_pointer("/*/v")
    doc = represent([{"v": 1}, {"v": 2}])
    iterator = ptr.find(doc)
    assert next(iterator) == 1
    assert ptr.first(doc) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok", "did you mean '/ok'?"),
        ("errors/0", "did you mean '/errors/0'?"),
        ("#/a", "starting with '/'"),
        (" /a", "starting with '/'"),
        ("/a~", "'~' must be followed by 0 or 1"),
        ("/a~2", "'~' must be followed by 0 or 1"),
        ("/~a", "'~' must be followed by 0 or 1"),
        ("/ok/x~", "invalid escape"),
    ],
)
def test_invalid_pointers(text: str, message: str) -> None:
    with pytest.raises(PointerError) as info:
        compile_pointer(text)
    assert message in str(info.value)
    assert repr(text) in str(info.value)


def test_pointer_error_is_a_value_error() -> None:
    assert issubclass(PointerError, ValueError)


def test_pointer_is_frozen_and_hashable() -> None:
    a, b = compile_pointer("/x/*"), compile_pointer("/x/*")
    assert a == b
    assert hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.text = "/y"  # type: ignore[misc]
