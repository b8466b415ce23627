"""The strict walker that turns a YAML document into a `Config`.

Each `_section` function reads one part of the document, reports problems with the
exact YAML path (and line), and substitutes the default so that parsing continues
and every error is reported in one pass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
import re2
from yarl import URL

from .config import (
    ACTIONS,
    BODIES,
    RETRY_REASONS,
    AllOf,
    AnyOf,
    BreakerPolicy,
    Condition,
    Config,
    ConfigError,
    DrainConfig,
    InspectConfig,
    Listen,
    Not,
    Problem,
    RetryPolicy,
    RouteConfig,
    RouteMatch,
    RuleConfig,
    RuleTest,
    ServerLimits,
    StatusRange,
    StatusSpec,
    TestExpect,
    TestResponse,
    Timeouts,
    UpstreamConfig,
    When,
)
from .pointer import PointerError, compile_pointer
from .presets import PRESET_NAMES
from .yamlsrc import Path, Source

T = TypeVar("T")
_BAD: Any = object()  # a value that failed to parse; the caller falls back to the default

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^([0-9]+)\s*(B|KiB|MiB|GiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_STATUS_RANGE = re.compile(r"^([1-5][0-9][0-9])\s*-\s*([1-5][0-9][0-9])$")
_INTEGER = re.compile(r"[-+]?[0-9]{1,19}")
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/(?:\*|\*?[a-z0-9!#$&^_.+-]+)$")
# RE2 is linear in the input, but its fast engine gives up on large programs and the
# fallback costs program size x input: `(?s).{0,1000}z` (size 8005) took ~10 s on 1 MiB of
# CJK text on the event loop, `.{0,100}` (805) 2 ms.  Larger patterns are refused at load.
MAX_REGEX_PROGRAM = 1000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _Walker:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.problems: list[Problem] = []

    # -- reporting -------------------------------------------------------------------------
    def error(self, path: Path, message: str, *, at_key: bool = False) -> None:
        mark = self.source.key_marks.get(path) if at_key else None
        mark = mark or self.source.mark(path)
        line, col = (mark.line, mark.col) if mark else (1, 1)  # no marks: an empty document
        self.problems.append(Problem(self.source.file, line, col, render_path(path), message))

    # -- shapes ----------------------------------------------------------------------------
    def mapping(
        self, value: object, path: Path, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, object] | None:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_describe(value)}")
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
            self.error(path, f"expected a list, got {_describe(value)}")
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
        return default if result is _BAD else result

    # -- scalar converters (return _BAD after reporting) -------------------------------------
    def string(self, value: object, path: Path) -> str:
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty string, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        return value

    def name(self, value: object, path: Path) -> str:
        text = self.string(value, path)
        if text is not _BAD and not _NAME.fullmatch(text):
            self.error(path, f"invalid name {text!r}: use letters, digits, `_`, `.`, `-`")
            return _BAD  # type: ignore[no-any-return]
        return text

    def boolean(self, value: object, path: Path) -> bool:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        return value

    def integer(self, value: object, path: Path, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        if value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return _BAD  # type: ignore[no-any-return]
        return value

    def positive_int(self, value: object, path: Path) -> int:
        return self.integer(value, path, 1)

    def ratio(self, value: object, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            self.error(path, f"expected a number from 0 to 1, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        return float(value)

    def non_negative(self, value: object, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.error(path, f"expected a number of at least 0, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        return float(value)

    def duration(self, value: object, path: Path) -> float:
        if value == 0 and not isinstance(value, bool):
            return 0.0
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            hint = f" (did you mean `{value}s`?)" if number else ""
            self.error(
                path, f"expected a duration like 250ms, 2s or 1m, got {_describe(value)}{hint}"
            )
            return _BAD  # type: ignore[no-any-return]
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]

    def positive_duration(self, value: object, path: Path) -> float:
        seconds = self.duration(value, path)
        if seconds is not _BAD and seconds <= 0:
            self.error(path, "must be greater than 0")
            return _BAD  # type: ignore[no-any-return]
        return seconds

    def size(self, value: object, path: Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[0-9]+\s*[KMG]B", value, re.I):
                hint = f" (did you mean `{value[:-1].upper().rstrip()}iB`?)"
            self.error(path, f"expected a size like 64KiB or 1MiB, got {_describe(value)}{hint}")
            return _BAD  # type: ignore[no-any-return]
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]

    def listen(self, value: object, path: Path) -> Listen:
        listen = Listen.parse(value) if isinstance(value, str) else None
        if listen is None:
            self.error(path, f"expected HOST:PORT such as 127.0.0.1:8080, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        return listen

    def http_status(self, value: object, path: Path, error_only: bool = True) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            self.error(path, f"expected an HTTP status code, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        if error_only and value < 400:
            self.error(path, f"mapped statuses must be 4xx or 5xx, got {value}")
            return _BAD  # type: ignore[no-any-return]
        return value

    def pointer(self, value: object, path: Path) -> str:
        if not isinstance(value, str):
            self.error(path, f"expected a JSON pointer such as /error, got {_describe(value)}")
            return _BAD  # type: ignore[no-any-return]
        try:
            compile_pointer(value)
        except PointerError as exc:
            self.error(path, str(exc))
            return _BAD  # type: ignore[no-any-return]
        return value

    def choice(self, choices: tuple[str, ...]) -> Callable[[object, Path], str]:
        def convert(value: object, path: Path) -> str:
            if value not in choices:
                hint = difflib.get_close_matches(str(value), choices, n=1)
                suffix = f" (did you mean `{hint[0]}`?)" if hint else ""
                self.error(
                    path, f"expected one of {', '.join(choices)}, got {_describe(value)}{suffix}"
                )
                return _BAD  # type: ignore[no-any-return]
            return str(value)

        return convert


def _describe(value: object) -> str:
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


# -- sections --------------------------------------------------------------------------------

_TOP_KEYS = (
    "version", "listen", "admin", "upstreams", "routes", "drain", "inspect", "rules",
    "tests", "server", "action",
)  # fmt: skip


def parse_document(source: Source, upstream_url: str | None = None) -> Config:
    w = _Walker(source)
    doc = w.mapping(source.value, (), _TOP_KEYS, ("version", "upstreams", "routes"))
    if doc is None:
        raise ConfigError(w.problems)
    version = doc.get("version", 1)
    if type(version) is not int or version != 1:
        w.error(
            ("version",),
            f"unsupported version {version if type(version) is int else _describe(version)}; "
            "this build reads 1",
        )
    defaults = Config(upstreams=(), routes=())
    listen = w.field(doc, "listen", (), w.listen, defaults.listen)
    admin_listen = defaults.admin_listen
    if "admin" in doc:
        admin = w.mapping(doc["admin"], ("admin",), ("listen",))
        if admin is not None:
            admin_listen = w.field(admin, "listen", ("admin",), w.listen, admin_listen)
    upstreams = _upstreams(w, doc["upstreams"], upstream_url) if "upstreams" in doc else ()
    rules = _rules(w, doc.get("rules", []))
    # Names as declared, even where the entry itself has errors: those are reported once, at
    # the entry, not again at every reference.
    names = _declared_upstreams(doc.get("upstreams"))
    rule_names = _declared_rules(doc.get("rules")) | set(PRESET_NAMES)
    routes = _routes(w, doc["routes"], names, rule_names) if "routes" in doc else ()
    config = Config(
        upstreams=upstreams,
        routes=routes,
        listen=listen,
        admin_listen=admin_listen,
        rules=rules,
        tests=_tests(w, doc.get("tests", []), {r.name for r in routes}, rule_names),
        inspect=_inspect(w, doc.get("inspect", {})),
        drain=_drain(w, doc.get("drain", {})),
        server=_server(w, doc.get("server", {})),
        action=w.field(doc, "action", (), w.choice(ACTIONS), None),
        source=source.file,
    )
    if w.problems:
        # Sections are walked in dependency order; report in reading order.
        raise ConfigError(sorted(w.problems, key=lambda p: (p.line or 0, p.col or 0)))
    return config


def _declared_upstreams(value: object) -> set[str] | None:
    """None when the section itself is missing or broken: references cannot be judged."""
    return {str(k) for k in value} if isinstance(value, dict) and value else None


def _declared_rules(value: object) -> set[str]:
    if not isinstance(value, list):
        return set()
    return {r["name"] for r in value if isinstance(r, dict) and isinstance(r.get("name"), str)}


_UPSTREAM_KEYS = (
    "url", "timeouts", "max_concurrency", "retry", "circuit_breaker", "retry_after",
    "preserve_host",
)  # fmt: skip


def _upstreams(w: _Walker, value: object, upstream_url: str | None) -> tuple[UpstreamConfig, ...]:
    path: Path = ("upstreams",)
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of upstream names to settings, got {_describe(value)}")
        return ()
    if not value:
        w.error(path, "at least one upstream is needed")
        return ()
    if upstream_url is not None and len(value) != 1:
        w.error(path, f"--upstream needs exactly one upstream in the file; it has {len(value)}")
    result = []
    for name, spec in value.items():
        at = (*path, name)
        if w.name(name, at) is _BAD:
            continue
        m = w.mapping(spec, at, _UPSTREAM_KEYS, () if upstream_url else ("url",))
        if m is None:
            continue
        url = upstream_url if upstream_url is not None else m.get("url")
        url = _upstream_url(w, url, (*at, "url")) if url is not None or "url" in m else None
        retry = w.field(m, "retry", at, lambda v, p: _retry(w, v, p), RetryPolicy())
        breaker = w.field(m, "circuit_breaker", at, lambda v, p: _breaker(w, v, p), None)
        timeouts = w.field(m, "timeouts", at, lambda v, p: _timeouts(w, v, p), Timeouts())
        result.append(
            UpstreamConfig(
                name=name,
                url=url or "http://invalid",
                timeouts=timeouts,
                max_concurrency=w.field(m, "max_concurrency", at, w.positive_int, 256),
                retry=retry,
                circuit_breaker=breaker,
                retry_after=w.field(m, "retry_after", at, w.positive_duration, 5.0),
                preserve_host=w.field(m, "preserve_host", at, w.boolean, True),
            )
        )
    return tuple(result)


def _upstream_url(w: _Walker, value: object, path: Path) -> str | None:
    if not isinstance(value, str) or not value:
        w.error(path, f"expected an http:// or https:// URL, got {_describe(value)}")
        return None
    try:
        url = URL(value)
    except ValueError as exc:
        w.error(path, f"invalid URL {value!r}: {exc}")
        return None
    if url.scheme not in ("http", "https") or not url.host:
        w.error(path, f"expected an http:// or https:// URL with a host, got {value!r}")
        return None
    if url.query_string or url.fragment:
        w.error(path, "an upstream URL cannot carry a query string or fragment")
        return None
    return value.rstrip("/")


def _timeouts(w: _Walker, value: object, path: Path) -> Timeouts:
    m = w.mapping(value, path, ("connect", "response"))
    if m is None:
        return _BAD  # type: ignore[no-any-return]
    d = Timeouts()
    return Timeouts(
        connect=w.field(m, "connect", path, w.positive_duration, d.connect),
        response=w.field(m, "response", path, w.positive_duration, d.response),
    )


def _retry(w: _Walker, value: object, path: Path) -> RetryPolicy:
    m = w.mapping(value, path, ("attempts", "on", "backoff", "max_backoff", "budget"))
    if m is None:
        return _BAD  # type: ignore[no-any-return]
    d = RetryPolicy()
    on = d.on
    if "on" in m:
        items = w.sequence(m["on"], (*path, "on"))
        if items is not None:
            choose = w.choice(RETRY_REASONS)
            picked = [choose(str(v), (*path, "on", i)) for i, v in enumerate(items)]
            on = tuple(p for p in picked if p is not _BAD)
    return RetryPolicy(
        attempts=w.field(m, "attempts", path, w.positive_int, d.attempts),
        on=on,
        backoff=w.field(m, "backoff", path, w.duration, d.backoff),
        max_backoff=w.field(m, "max_backoff", path, w.duration, d.max_backoff),
        budget=w.field(m, "budget", path, w.non_negative, d.budget),
    )


def _breaker(w: _Walker, value: object, path: Path) -> BreakerPolicy:
    m = w.mapping(value, path, ("failure_ratio", "min_requests", "window", "open_for"))
    if m is None:
        return _BAD  # type: ignore[no-any-return]
    d = BreakerPolicy()

    def failure_ratio(value: object, at: Path) -> float:
        ratio = w.ratio(value, at)
        if ratio is not _BAD and ratio <= 0:
            w.error(at, "must be greater than 0 (a ratio of 0 would open on success)")
            return _BAD  # type: ignore[no-any-return]
        return ratio

    def window(value: object, at: Path) -> float:
        seconds = w.duration(value, at)
        if seconds is not _BAD and seconds < 1:
            w.error(at, "must be at least 1s (failures are counted per second)")
            return _BAD  # type: ignore[no-any-return]
        return seconds

    return BreakerPolicy(
        failure_ratio=w.field(m, "failure_ratio", path, failure_ratio, d.failure_ratio),
        min_requests=w.field(m, "min_requests", path, w.positive_int, d.min_requests),
        window=w.field(m, "window", path, window, d.window),
        open_for=w.field(m, "open_for", path, w.positive_duration, d.open_for),
    )


_ROUTE_KEYS = (
    "name", "match", "upstream", "strip_prefix", "rules", "action", "preset_options",
)  # fmt: skip


def _routes(
    w: _Walker, value: object, upstreams: set[str] | None, rule_names: set[str]
) -> tuple[RouteConfig, ...]:
    items = w.sequence(value, ("routes",))
    if items is None:
        return ()
    if not items:
        w.error(("routes",), "at least one route is needed")
    result: list[RouteConfig] = []
    reliable: list[RouteConfig] = []  # routes whose `match` parsed without errors
    seen: set[str] = set()
    for i, spec in enumerate(items):
        at: Path = ("routes", i)
        m = w.mapping(spec, at, _ROUTE_KEYS, ("name", "upstream"))
        if m is None:
            continue
        name = w.field(m, "name", at, w.name, f"route{i}")
        if name in seen:
            w.error((*at, "name"), f"duplicate route name {name!r}")
        seen.add(name)
        upstream = w.field(m, "upstream", at, w.string, "")
        if upstream and upstreams is not None and upstream not in upstreams:
            known = ", ".join(sorted(upstreams)) or "none"
            w.error((*at, "upstream"), f"unknown upstream {upstream!r}; defined: {known}")
        rules: tuple[str, ...] = ()
        if "rules" in m:
            listed = w.sequence(m["rules"], (*at, "rules"))
            for j, rule in enumerate(listed or ()):
                if not isinstance(rule, str) or rule not in rule_names:
                    hint = difflib.get_close_matches(str(rule), sorted(rule_names), n=1)
                    suffix = f" (did you mean `{hint[0]}`?)" if hint else ""
                    w.error((*at, "rules", j), f"unknown rule or preset {rule!r}{suffix}")
                else:
                    rules += (rule,)
        before = len(w.problems)
        match = w.field(m, "match", at, lambda v, p: _match(w, v, p), RouteMatch())
        match_ok = len(w.problems) == before
        route = RouteConfig(
            name=name,
            upstream=upstream,
            match=match,
            strip_prefix=w.field(m, "strip_prefix", at, w.boolean, False),
            rules=rules,
            action=w.field(m, "action", at, w.choice(ACTIONS), None),
            jsonrpc_codes=w.field(
                m, "preset_options", at, lambda v, p: _preset_options(w, v, p), ()
            ),
        )
        # A `match` with errors fell back to defaults; judging reachability on it would only
        # add a misleading second error.
        for earlier in reliable if match_ok else ():
            if _shadows(earlier.match, route.match):
                w.error(at, f"unreachable: route {earlier.name!r} above matches all its requests")
                break
        result.append(route)
        if match_ok:
            reliable.append(route)
    return tuple(result)


def _shadows(a: RouteMatch, b: RouteMatch) -> bool:
    """True when every request matching `b` also matches the earlier `a`."""
    if a.host is not None and a.host != b.host:
        return False
    return (
        a.path_prefix == "/"
        or b.path_prefix == a.path_prefix
        or (b.path_prefix.startswith(a.path_prefix + "/"))
    )


def _match(w: _Walker, value: object, path: Path) -> RouteMatch:
    m = w.mapping(value, path, ("path_prefix", "host"))
    if m is None:
        return _BAD  # type: ignore[no-any-return]
    prefix = w.field(m, "path_prefix", path, w.string, "/")
    if not prefix.startswith("/"):
        w.error((*path, "path_prefix"), f"must start with '/', got {prefix!r}")
        prefix = "/"
    prefix = prefix.rstrip("/") or "/"
    host = w.field(m, "host", path, w.string, None)
    return RouteMatch(prefix, _host_only(host) if host else None)


def _host_only(host: str) -> str:
    """Lower case, port removed; an IPv6 literal keeps its brackets (as runtime compares)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _preset_options(w: _Walker, value: object, path: Path) -> tuple[tuple[int, int], ...]:
    m = w.mapping(value, path, ("jsonrpc",))
    if m is None or "jsonrpc" not in m:
        return ()
    at = (*path, "jsonrpc")
    opts = w.mapping(m["jsonrpc"], at, ("codes",))
    if opts is None or "codes" not in opts:
        return ()
    raw_codes = opts["codes"]
    codes = w.mapping(
        raw_codes, (*at, "codes"), tuple(raw_codes) if isinstance(raw_codes, dict) else ()
    )
    result = []
    for key, status in (codes or {}).items():
        where = (*at, "codes", key)
        if not _INTEGER.fullmatch(key):
            w.error(where, f"expected an integer JSON-RPC error code, got {key!r}", at_key=True)
            continue
        code = int(key)
        mapped = w.http_status(status, where)
        if mapped is not _BAD:
            result.append((code, mapped))
    return tuple(result)


def _inspect(w: _Walker, value: object, path: Path = ("inspect",)) -> InspectConfig:
    d = InspectConfig()
    m = w.mapping(value, path, ("max_body_bytes", "max_decoded_bytes", "content_types", "statuses"))
    if m is None:
        return d
    types = d.content_types
    if "content_types" in m:
        listed = w.sequence(m["content_types"], (*path, "content_types")) or []
        types = ()
        for i, t in enumerate(listed):
            if not isinstance(t, str) or not _MEDIA_TYPE.fullmatch(t.lower()):
                w.error((*path, "content_types", i), f"expected a media type, got {_describe(t)}")
            else:
                types += (t.lower(),)
    statuses = d.statuses
    if "statuses" in m:
        listed = w.sequence(m["statuses"], (*path, "statuses")) or []
        statuses = ()
        for i, s in enumerate(listed):
            at = (*path, "statuses", i)
            if isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599:
                statuses += ((s, s),)
                continue
            match = _STATUS_RANGE.fullmatch(s) if isinstance(s, str) else None
            if match is None or int(match.group(1)) > int(match.group(2)):
                w.error(at, f"expected a status or a range like 200-299, got {_describe(s)}")
            else:
                statuses += ((int(match.group(1)), int(match.group(2))),)
    return InspectConfig(
        max_body_bytes=w.field(m, "max_body_bytes", path, w.size, d.max_body_bytes),
        max_decoded_bytes=w.field(m, "max_decoded_bytes", path, w.size, d.max_decoded_bytes),
        content_types=types,
        statuses=statuses,
    )


def _drain(w: _Walker, value: object, path: Path = ("drain",)) -> DrainConfig:
    d = DrainConfig()
    m = w.mapping(value, path, ("delay", "timeout"))
    if m is None:
        return d
    return DrainConfig(
        delay=w.field(m, "delay", path, w.duration, d.delay),
        timeout=w.field(m, "timeout", path, w.duration, d.timeout),
    )


_SERVER_KEYS = (
    "header_timeout", "keepalive_timeout", "max_connections", "max_head_bytes",
    "max_request_body",
)  # fmt: skip


def _server(w: _Walker, value: object, path: Path = ("server",)) -> ServerLimits:
    d = ServerLimits()
    m = w.mapping(value, path, _SERVER_KEYS)
    if m is None:
        return d
    return ServerLimits(
        header_timeout=w.field(m, "header_timeout", path, w.positive_duration, d.header_timeout),
        keepalive_timeout=w.field(
            m, "keepalive_timeout", path, w.positive_duration, d.keepalive_timeout
        ),
        max_connections=w.field(m, "max_connections", path, w.positive_int, d.max_connections),
        max_head_bytes=w.field(m, "max_head_bytes", path, w.size, d.max_head_bytes),
        max_request_body=w.field(m, "max_request_body", path, w.size, d.max_request_body),
    )


# -- rules -----------------------------------------------------------------------------------

_RULE_KEYS = ("name", "when", "status", "action", "body", "retry_after_from")
_TESTS = ("exists", "equals", "in", "matches", "nonempty")


def _rules(w: _Walker, value: object) -> tuple[RuleConfig, ...]:
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


def _when(w: _Walker, value: object, path: Path, depth: int) -> When | None:
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
            w.error(at, f"expected true or false, got {_describe(arg)}")
            return None
    elif op == "in":
        if not isinstance(arg, list) or not arg:
            w.error(at, f"expected a non-empty list of values, got {_describe(arg)}")
            return None
        arg = tuple(arg)
    elif op == "matches":
        if not isinstance(arg, str):
            w.error(at, f"expected a regular expression string, got {_describe(arg)}")
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


def _status(w: _Walker, value: object, path: Path) -> StatusSpec | None:
    if isinstance(value, int) and not isinstance(value, bool):
        fixed = w.http_status(value, path)
        return None if fixed is _BAD else StatusSpec(fixed=fixed)
    if not isinstance(value, dict):
        w.error(
            path,
            f"expected a status code such as 502, or a mapping with `from`, got {_describe(value)}",
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
            if mapped is not _BAD:
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
        if _BAD in (lo, hi, st):
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


def _tests(
    w: _Walker, value: object, routes: set[str], rule_names: set[str]
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


def _expected_headers(w: _Walker, value: object, path: Path) -> tuple[tuple[str, str | None], ...]:
    """Like `_headers`, but `null` means: this header must be absent."""
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of header names to values, got {_describe(value)}")
        return ()
    return tuple((str(k).lower(), None if v is None else str(v)) for k, v in value.items())


def _headers(w: _Walker, value: object, path: Path) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of header names to values, got {_describe(value)}")
        return ()
    return tuple((str(k).lower(), str(v)) for k, v in value.items())


def _test_response(w: _Walker, value: object, path: Path) -> TestResponse | None:
    m = w.mapping(value, path, ("status", "headers", "body"))
    if m is None:
        return None
    d = TestResponse()
    status = w.field(m, "status", path, lambda v, p: w.http_status(v, p, False), d.status)
    headers = d.headers
    if "headers" in m:
        headers = _headers(w, m["headers"], (*path, "headers"))
        if not any(name == "content-type" for name, _ in headers):
            headers = (*d.headers, *headers)  # JSON unless the test says otherwise
    body = m.get("body")
    if "body" not in m:
        raw = d.body
    elif isinstance(body, str):
        raw = body.encode()  # a string is the body's exact text (JSON or not)
    else:
        try:
            raw = orjson.dumps(body)
        except (TypeError, orjson.JSONEncodeError) as exc:
            w.error((*path, "body"), f"cannot encode as JSON: {exc}")
            return None
    return TestResponse(status, headers, raw)


def _test_expect(w: _Walker, value: object, path: Path) -> TestExpect | None:
    m = w.mapping(value, path, ("status", "rule", "action", "headers"))
    if m is None:
        return None
    rule = m.get("rule")
    if "rule" in m and rule is not None and not isinstance(rule, str):
        w.error((*path, "rule"), f"expected a rule name or null, got {_describe(rule)}")
    return TestExpect(
        status=w.field(m, "status", path, lambda v, p: w.http_status(v, p, False), None),
        rule=("" if rule is None else str(rule)) if "rule" in m else None,
        action=w.field(m, "action", path, w.choice(ACTIONS), None),
        headers=_expected_headers(w, m["headers"], (*path, "headers")) if "headers" in m else (),
    )
