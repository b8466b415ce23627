"""YAML with positions (proxy.config.yamlsrc): YAML 1.2 core resolution, keys as text, marks."""

from __future__ import annotations

import math

import pytest

from proxy.config.yamlsrc import Mark, YamlError, load, resolve_plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # null
        ("~", None),
        ("null", None),
        ("Null", None),
        ("NULL", None),
        ("", None),
        # bool: only true/false, never YAML 1.1's yes/no/on/off/y/n
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("yes", "yes"),
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("n", "n"),
        ("tRUE", "tRUE"),
        # int
        ("0", 0),
        ("42", 42),
        ("-32005", -32005),
        ("+12", 12),
        ("012", 12),  # decimal in 1.2 (1.1 would read octal 10)
        ("0o17", 15),
        ("0x1F", 31),
        ("0xff", 255),
        ("0b101", "0b101"),  # not in the core schema
        ("1_000", "1_000"),  # underscores are YAML 1.1
        ("1:30", "1:30"),  # sexagesimal is YAML 1.1
        # float
        ("1.5", 1.5),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("1.", 1.0),
        ("1e3", 1000.0),
        ("1.5e3", 1500.0),
        ("1E-2", 0.01),
        ("+2.5", 2.5),
        # strings that look like other things
        ("2001-12-14", "2001-12-14"),
        ("250ms", "250ms"),
        ("1MiB", "1MiB"),
        ("200-299", "200-299"),
        ("0x", "0x"),
        ("e3", "e3"),
        (".", "."),
    ],
)
def test_resolve_plain(text: str, expected: object) -> None:
    value = resolve_plain(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("text", "sign"), [(".inf", 1), (".Inf", 1), ("+.INF", 1), ("-.inf", -1), ("-.Inf", -1)]
)
def test_resolve_infinity(text: str, sign: int) -> None:
    value = resolve_plain(text)
    assert isinstance(value, float)
    assert math.isinf(value)
    assert math.copysign(1, value) == sign


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN"])
def test_resolve_nan(text: str) -> None:
    value = resolve_plain(text)
    assert isinstance(value, float)
    assert math.isnan(value)


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("on", "on"),
        ("yes", "yes"),
        ("no", "no"),
        ("true", True),
        ("false", False),
        ("5", 5),
        ("-32005", -32005),
        ("1e3", 1000.0),  # PyYAML's 1.1 resolver says str; we follow 1.2
        ("0o17", 15),
        ("1.5", 1.5),
        ("null", None),
        ("~", None),
        ("", None),
        ("'5'", "5"),  # quoted scalars are always text
        ('"true"', "true"),
        ("'null'", "null"),
        ("''", ""),
        ("!!str 5", "5"),
        ("!!str true", "true"),
        ("!!int 5", 5),
        ("|\n  5\n", "5\n"),  # block scalars are text
        (">-\n  true\n", "true"),
        ("[1, on, '2', null]", [1, "on", "2", None]),
        ("{a: 1}", {"a": 1}),
    ],
)
def test_values_resolve_by_core_schema(yaml_value: str, expected: object) -> None:
    value = load(f"k: {yaml_value}").value
    assert value == {"k": expected}
    assert isinstance(value, dict)
    assert type(value["k"]) is type(expected)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("100: x", "100"),
        ("-32005: x", "-32005"),
        ("true: x", "true"),
        ("True: x", "True"),
        ("on: x", "on"),
        ("yes: x", "yes"),
        ("null: x", "null"),
        ("~: x", "~"),
        ("1.0: x", "1.0"),
        ("0x1F: x", "0x1F"),
        ("'100': x", "100"),
        ('"a b": x', "a b"),
        ("AUTH_EXPIRED: x", "AUTH_EXPIRED"),
    ],
)
def test_keys_keep_their_text(text: str, key: str) -> None:
    assert load(text).value == {key: "x"}


def test_keys_are_text_in_flow_mappings() -> None:
    source = load("map: {100: 401, true: 500, -32005: 429, on: 400}")
    assert source.value == {"map": {"100": 401, "true": 500, "-32005": 429, "on": 400}}


@pytest.mark.parametrize(
    ("text", "line", "col", "key"),
    [
        ("a: 1\na: 2\n", 2, 1, "'a'"),
        ("x:\n  b: 1\n  c: 2\n  b: 3\n", 4, 3, "'b'"),
        ("m: {100: a, 100: b}", 1, 13, "'100'"),
        # same text, different spelling: still one key to us (SPEC 4.2 matches by text)
        ("m: {100: a, '100': b}", 1, 13, "'100'"),
        ("- a: 1\n  a: 1\n", 2, 3, "'a'"),
    ],
)
def test_duplicate_keys_rejected_with_line(text: str, line: int, col: int, key: str) -> None:
    with pytest.raises(YamlError) as info:
        load(text)
    assert info.value.message == f"duplicate key {key}"
    assert info.value.mark == Mark(line, col)


def test_non_scalar_keys_rejected() -> None:
    with pytest.raises(YamlError) as info:
        load("? [a, b]\n: 1\n")
    assert "mapping keys must be plain text" in info.value.message
    assert info.value.mark == Mark(1, 3)


def test_marks_are_one_based_for_values_and_keys() -> None:
    text = "version: 1\nupstreams:\n  app:\n    url: http://x\nlist:\n  - a\n  -   b\n"
    source = load(text, "f.yaml")
    assert source.file == "f.yaml"
    assert source.marks[()] == Mark(1, 1)
    assert source.marks[("version",)] == Mark(1, 10)
    assert source.key_marks[("version",)] == Mark(1, 1)
    assert source.marks[("upstreams", "app", "url")] == Mark(4, 10)
    assert source.key_marks[("upstreams", "app", "url")] == Mark(4, 5)
    assert source.key_marks[("upstreams", "app")] == Mark(3, 3)
    assert source.marks[("list", 0)] == Mark(6, 5)
    assert source.marks[("list", 1)] == Mark(7, 7)


def test_marks_count_characters_not_bytes() -> None:
    source = load("éé: 1\nx: {ü: 5}\n")
    assert source.marks[("éé",)] == Mark(1, 5)
    assert source.marks[("x", "ü")] == Mark(2, 8)


def test_mark_falls_back_to_nearest_ancestor() -> None:
    source = load("a:\n  b: {c: 1}\n")
    assert source.mark(("a", "b", "c")) == Mark(2, 10)
    assert source.mark(("a", "b", "nope", 3)) == Mark(2, 6)
    assert source.mark(("zzz",)) == Mark(1, 1)
    assert load("").mark(("x",)) is None


def test_empty_document_is_none() -> None:
    for text in ("", "# only a comment\n", "---\n"):
        assert load(text).value is None
    assert load("").marks == {}


@pytest.mark.parametrize(
    ("text", "message", "mark"),
    [
        ("a: [1, 2\n", "did not find expected ',' or ']'", Mark(2, 1)),
        ("a: b: c\n", "mapping values are not allowed", Mark(1, 5)),
        ("a: 1\n---\nb: 2\n", "expected a single document", Mark(2, 1)),
        ("a: *nope\n", "found undefined alias", Mark(1, 4)),
        ("a:\n\tb: 1\n", "invalid YAML", Mark(2, 1)),
        ("é: \x00\n", "control characters are not allowed", Mark(1, 4)),
        ("a: 'x\ud800'\n", "surrogates not allowed", Mark(1, 6)),
    ],
)
def test_syntax_errors_have_a_position(text: str, message: str, mark: Mark) -> None:
    with pytest.raises(YamlError) as info:
        load(text)
    assert message in info.value.message
    assert info.value.mark == mark
    assert str(info.value) == info.value.message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # libyaml's C composer would overflow the stack on this
        "{a: " * 100_000,
        "- " * 100_000,
        "a: " + "[" * 65 + "]" * 65,
    ],
)
def test_deep_nesting_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(YamlError) as info:
        load(text)
    assert info.value.message == "document nested too deeply"
    assert info.value.mark is not None
    assert info.value.mark.line == 1


def test_nesting_up_to_the_limit_is_fine() -> None:
    value = load("[" * 64 + "]" * 64).value
    for _ in range(63):
        assert isinstance(value, list)
        value = value[0]
    assert value == []


def test_recursive_alias_is_an_error() -> None:
    with pytest.raises(YamlError) as info:
        load("a: &a [*a]\n")
    assert "nested too deeply" in info.value.message


def test_aliases_expand_to_equal_values() -> None:
    assert load("a: &x {k: [1, 2]}\nb: *x\n").value == {"a": {"k": [1, 2]}, "b": {"k": [1, 2]}}


def test_alias_bomb_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(YamlError) as info:
        load("\n".join(lines))
    assert "document too large" in info.value.message
