"""The strict parser that turns a YAML document into a `Config`.

Each `_section` function reads one part of the document through `walker.Walker`,
which reports problems with the exact YAML path (and line), and substitutes the default
so that parsing continues and every error is reported in one pass.  The `rules:` and
`tests:` sections are read by `parse_rules`.
"""

from __future__ import annotations

import difflib
import re

from yarl import URL

from proxy.config.errors import ConfigError
from proxy.config.model import (
    ACTIONS,
    MAX_SHAPES_LIMIT,
    PRESET_NAMES,
    RETRY_REASONS,
    BreakerPolicy,
    Config,
    DiscoverConfig,
    DrainConfig,
    InspectConfig,
    RetryPolicy,
    RouteConfig,
    RouteMatch,
    ServerLimits,
    Timeouts,
    UpstreamConfig,
)
from proxy.config.parse_rules import parse_rules, parse_tests
from proxy.config.walker import BAD, Walker, describe
from proxy.config.yamlsrc import Path, Source

__all__ = ["parse_document"]

_STATUS_RANGE = re.compile(r"^([1-5][0-9][0-9])\s*-\s*([1-5][0-9][0-9])$")
_INTEGER = re.compile(r"[-+]?[0-9]{1,19}")
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/(?:\*|\*?[a-z0-9!#$&^_.+-]+)$")

# -- sections --------------------------------------------------------------------------------

_TOP_KEYS = (
    "version", "listen", "admin", "upstreams", "routes", "drain", "inspect", "rules",
    "tests", "server", "action", "discover",
)  # fmt: skip


def parse_document(source: Source, upstream_url: str | None = None) -> Config:
    w = Walker(source)
    doc = w.mapping(source.value, (), _TOP_KEYS, ("version", "upstreams", "routes"))
    if doc is None:
        raise ConfigError(w.problems)
    version = doc.get("version", 1)
    if type(version) is not int or version != 1:
        w.error(
            ("version",),
            f"unsupported version {version if type(version) is int else describe(version)}; "
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
    rules = parse_rules(w, doc.get("rules", []))
    # Names as declared, even where the entry itself has errors: those are reported once, at
    # the entry, not again at every reference.
    names = _declared_upstreams(doc.get("upstreams"))
    rule_names = _declared_rules(doc.get("rules")) | set(PRESET_NAMES)
    discover = w.field(doc, "discover", (), lambda v, p: _discover(w, v, p), DiscoverConfig())
    routes = _routes(w, doc["routes"], names, rule_names, discover) if "routes" in doc else ()
    config = Config(
        upstreams=upstreams,
        routes=routes,
        listen=listen,
        admin_listen=admin_listen,
        rules=rules,
        tests=parse_tests(w, doc.get("tests", []), {r.name for r in routes}, rule_names),
        inspect=_inspect(w, doc.get("inspect", {})),
        drain=_drain(w, doc.get("drain", {})),
        server=_server(w, doc.get("server", {})),
        action=w.field(doc, "action", (), w.choice(ACTIONS), None),
        discover=discover,
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


def _upstreams(w: Walker, value: object, upstream_url: str | None) -> tuple[UpstreamConfig, ...]:
    path: Path = ("upstreams",)
    if not isinstance(value, dict):
        w.error(path, f"expected a mapping of upstream names to settings, got {describe(value)}")
        return ()
    if not value:
        w.error(path, "at least one upstream is needed")
        return ()
    if upstream_url is not None and len(value) != 1:
        w.error(path, f"--upstream needs exactly one upstream in the file; it has {len(value)}")
    result = []
    for name, spec in value.items():
        at = (*path, name)
        if w.name(name, at) is BAD:
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


def _upstream_url(w: Walker, value: object, path: Path) -> str | None:
    if not isinstance(value, str) or not value:
        w.error(path, f"expected an http:// or https:// URL, got {describe(value)}")
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


def _timeouts(w: Walker, value: object, path: Path) -> Timeouts:
    m = w.mapping(value, path, ("connect", "response"))
    if m is None:
        return BAD  # type: ignore[no-any-return]
    d = Timeouts()
    return Timeouts(
        connect=w.field(m, "connect", path, w.positive_duration, d.connect),
        response=w.field(m, "response", path, w.positive_duration, d.response),
    )


def _retry(w: Walker, value: object, path: Path) -> RetryPolicy:
    m = w.mapping(value, path, ("attempts", "on", "backoff", "max_backoff", "budget"))
    if m is None:
        return BAD  # type: ignore[no-any-return]
    d = RetryPolicy()
    on = d.on
    if "on" in m:
        items = w.sequence(m["on"], (*path, "on"))
        if items is not None:
            choose = w.choice(RETRY_REASONS)
            picked = [choose(str(v), (*path, "on", i)) for i, v in enumerate(items)]
            on = tuple(p for p in picked if p is not BAD)
    return RetryPolicy(
        attempts=w.field(m, "attempts", path, w.positive_int, d.attempts),
        on=on,
        backoff=w.field(m, "backoff", path, w.duration, d.backoff),
        max_backoff=w.field(m, "max_backoff", path, w.duration, d.max_backoff),
        budget=w.field(m, "budget", path, w.non_negative, d.budget),
    )


def _breaker(w: Walker, value: object, path: Path) -> BreakerPolicy:
    m = w.mapping(value, path, ("failure_ratio", "min_requests", "window", "open_for"))
    if m is None:
        return BAD  # type: ignore[no-any-return]
    d = BreakerPolicy()

    def failure_ratio(value: object, at: Path) -> float:
        ratio = w.ratio(value, at)
        if ratio is not BAD and ratio <= 0:
            w.error(at, "must be greater than 0 (a ratio of 0 would open on success)")
            return BAD  # type: ignore[no-any-return]
        return ratio

    def window(value: object, at: Path) -> float:
        seconds = w.duration(value, at)
        if seconds is not BAD and seconds < 1:
            w.error(at, "must be at least 1s (failures are counted per second)")
            return BAD  # type: ignore[no-any-return]
        return seconds

    return BreakerPolicy(
        failure_ratio=w.field(m, "failure_ratio", path, failure_ratio, d.failure_ratio),
        min_requests=w.field(m, "min_requests", path, w.positive_int, d.min_requests),
        window=w.field(m, "window", path, window, d.window),
        open_for=w.field(m, "open_for", path, w.positive_duration, d.open_for),
    )


_ROUTE_KEYS = (
    "name", "match", "upstream", "strip_prefix", "rules", "action", "preset_options",
    "discover",
)  # fmt: skip


def _routes(
    w: Walker,
    value: object,
    upstreams: set[str] | None,
    rule_names: set[str],
    discover: DiscoverConfig | None = None,
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
            discover=w.field(m, "discover", at, lambda v, p: _discover(w, v, p, discover), None),
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


def _match(w: Walker, value: object, path: Path) -> RouteMatch:
    m = w.mapping(value, path, ("path_prefix", "host"))
    if m is None:
        return BAD  # type: ignore[no-any-return]
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


def _preset_options(w: Walker, value: object, path: Path) -> tuple[tuple[int, int], ...]:
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
        if mapped is not BAD:
            result.append((code, mapped))
    return tuple(result)


_INSPECT_KEYS = (
    "max_body_bytes", "max_decoded_bytes", "content_types", "statuses", "first_event_bytes",
    "first_event_timeout",
)  # fmt: skip


def _inspect(w: Walker, value: object, path: Path = ("inspect",)) -> InspectConfig:
    d = InspectConfig()
    m = w.mapping(value, path, _INSPECT_KEYS)
    if m is None:
        return d
    types = d.content_types
    if "content_types" in m:
        listed = w.sequence(m["content_types"], (*path, "content_types")) or []
        types = ()
        for i, t in enumerate(listed):
            if not isinstance(t, str) or not _MEDIA_TYPE.fullmatch(t.lower()):
                w.error((*path, "content_types", i), f"expected a media type, got {describe(t)}")
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
                w.error(at, f"expected a status or a range like 200-299, got {describe(s)}")
            else:
                statuses += ((int(match.group(1)), int(match.group(2))),)
    return InspectConfig(
        max_body_bytes=w.field(m, "max_body_bytes", path, w.size, d.max_body_bytes),
        max_decoded_bytes=w.field(m, "max_decoded_bytes", path, w.size, d.max_decoded_bytes),
        content_types=types,
        statuses=statuses,
        first_event_bytes=w.field(m, "first_event_bytes", path, w.size, d.first_event_bytes),
        first_event_timeout=w.field(
            m, "first_event_timeout", path, w.positive_duration, d.first_event_timeout
        ),
    )


def _discover(
    w: Walker,
    value: object,
    path: Path,
    base: DiscoverConfig | None = None,
) -> DiscoverConfig:
    """`discover` (SPEC 10), at the top level or on a route, where each key it sets
    overrides the top level's (`base`)."""
    base = base or DiscoverConfig()
    m = w.mapping(value, path, ("enabled", "max_shapes", "header"))
    if m is None:
        return BAD  # type: ignore[no-any-return]

    def max_shapes(value: object, at: Path) -> int:
        count = w.positive_int(value, at)
        if count is not BAD and count > MAX_SHAPES_LIMIT:
            w.error(at, f"at most {MAX_SHAPES_LIMIT} (each shape is a metric series), got {count}")
            return BAD  # type: ignore[no-any-return]
        return count

    return DiscoverConfig(
        enabled=w.field(m, "enabled", path, w.boolean, base.enabled),
        max_shapes=w.field(m, "max_shapes", path, max_shapes, base.max_shapes),
        header=w.field(m, "header", path, w.boolean, base.header),
    )


def _drain(w: Walker, value: object, path: Path = ("drain",)) -> DrainConfig:
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


def _server(w: Walker, value: object, path: Path = ("server",)) -> ServerLimits:
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
