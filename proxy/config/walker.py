"""Reading YAML values strictly: the walker that records every problem with its path.

`Walker` checks one value at a time (a mapping's keys, a name, a duration, a size, a
status, a listen address, ...) and, on a bad value, records a `ConfigProblem` (file, line,
YAML path) and returns `BAD`, so the section parsers (`parse`, `parse_rules`) substitute the default
and go on: every error of a document is reported in one pass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from proxy.config.errors import ConfigProblem
from proxy.config.model import Listen
from proxy.config.yamlsrc import Path, Source
from proxy.wire.pointer import PointerError, compile_pointer

T = TypeVar("T")
BAD: Any = object()  # a value that failed to parse; the caller falls back to the default

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^([0-9]+)\s*(B|KiB|MiB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class Walker:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.problems: list[ConfigProblem] = []

    # -- reporting -------------------------------------------------------------------------
    def error(self, path: Path, message: str, *, at_key: bool = False) -> None:
        mark = self.source.key_marks.get(path) if at_key else None
        mark = mark or self.source.mark(path)
        line, col = (mark.line, mark.col) if mark else (1, 1)  # no marks: an empty document
        self.problems.append(ConfigProblem(self.source.file, line, col, render_path(path), message))

    # -- shapes ----------------------------------------------------------------------------
    def mapping(
        self, value: object, path: Path, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suffix = f" (did you mean `{hint[0]}`?)" if hint else ""
                known = ", ".join(allowed)
                self.error(
                    (*path, key), f"unknown key `{key}`{suffix}; known keys: {known}", at_key=True
                )
        for key in required:
            if key not in value:
                self.error(path, f"missing required key `{key}`")
        return value

    def sequence(self, value: object, path: Path) -> list[object] | None:
        if not isinstance(value, list):
            self.error(path, f"expected a list, got {describe(value)}")
            return None
        return value

    def field(
        self,
        m: Mapping[str, object],
        key: str,
        path: Path,
        convert: Callable[[object, Path], T],
        default: T,
    ) -> T:
        if key not in m:
            return default
        result = convert(m[key], (*path, key))
        return default if result is BAD else result

    # -- scalar converters (return BAD after reporting) -------------------------------------
    def string(self, value: object, path: Path) -> str:
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty string, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        return value

    def name(self, value: object, path: Path) -> str:
        text = self.string(value, path)
        if text is not BAD and not _NAME.fullmatch(text):
            self.error(path, f"invalid name {text!r}: use letters, digits, `_`, `.`, `-`")
            return BAD  # type: ignore[no-any-return]
        return text

    def boolean(self, value: object, path: Path) -> bool:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        return value

    def integer(self, value: object, path: Path, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        if value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return BAD  # type: ignore[no-any-return]
        return value

    def positive_int(self, value: object, path: Path) -> int:
        return self.integer(value, path, 1)

    def ratio(self, value: object, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            self.error(path, f"expected a number from 0 to 1, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        return float(value)

    def non_negative(self, value: object, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.error(path, f"expected a number of at least 0, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        return float(value)

    def duration(self, value: object, path: Path) -> float:
        if value == 0 and not isinstance(value, bool):
            return 0.0
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            hint = f" (did you mean `{value}s`?)" if number else ""
            self.error(
                path, f"expected a duration like 250ms, 2s or 1m, got {describe(value)}{hint}"
            )
            return BAD  # type: ignore[no-any-return]
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def positive_duration(self, value: object, path: Path) -> float:
        seconds = self.duration(value, path)
        if seconds is not BAD and seconds <= 0:
            self.error(path, "must be greater than 0")
            return BAD  # type: ignore[no-any-return]
        return seconds

    def size(self, value: object, path: Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[0-9]+\s*[KMG]B", value, re.I):
                hint = f" (did you mean `{value[:-1].upper().rstrip()}iB`?)"
            self.error(path, f"expected a size like 64KiB or 1MiB, got {describe(value)}{hint}")
            return BAD  # type: ignore[no-any-return]
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]

    def listen(self, value: object, path: Path) -> Listen:
        listen = Listen.parse(value) if isinstance(value, str) else None
        if listen is None:
            self.error(path, f"expected HOST:PORT such as 127.0.0.1:8080, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        return listen

    def http_status(self, value: object, path: Path, error_only: bool = True) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            self.error(path, f"expected an HTTP status code, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        if error_only and value < 400:
            self.error(path, f"mapped statuses must be 4xx or 5xx, got {value}")
            return BAD  # type: ignore[no-any-return]
        return value

    def pointer(self, value: object, path: Path) -> str:
        if not isinstance(value, str):
            self.error(path, f"expected a JSON pointer such as /error, got {describe(value)}")
            return BAD  # type: ignore[no-any-return]
        try:
            compile_pointer(value)
        except PointerError as exc:
            self.error(path, str(exc))
            return BAD  # type: ignore[no-any-return]
        return value

    def choice(self, choices: tuple[str, ...]) -> Callable[[object, Path], str]:
        def convert(value: object, path: Path) -> str:
            if value not in choices:
                hint = difflib.get_close_matches(str(value), choices, n=1)
                suffix = f" (did you mean `{hint[0]}`?)" if hint else ""
                self.error(
                    path, f"expected one of {', '.join(choices)}, got {describe(value)}{suffix}"
                )
                return BAD  # type: ignore[no-any-return]
            return str(value)

        return convert


def describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return f"{type(value).__name__} {value!r}"
