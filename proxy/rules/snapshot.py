"""A loaded config compiled for serving: routes matched, rules compiled, once.

A `Runtime` is immutable; a reload builds a new one and swaps it in, so a request
keeps the snapshot it started with (SPEC 4.6).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

from yarl import URL

from proxy.config.model import Config, DiscoverConfig, RouteConfig, UpstreamConfig
from proxy.rules.inspection import InspectPolicy
from proxy.rules.ruleset import RuleSet, compile_ruleset
from proxy.wire.headers import authority


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    prefix: str  # "/" or a prefix without a trailing slash
    host: str | None
    strip_prefix: bool
    upstream: UpstreamConfig
    base_url: str  # upstream URL without userinfo and without a trailing slash
    upstream_host: str | None  # Host to send when preserve_host is false
    authorization: str | None  # from the upstream URL's userinfo; the client's own wins
    rules: RuleSet
    fallback_retry_after: int
    discover: DiscoverConfig  # the route's, merged with the top level's (SPEC 10)

    def matches(self, host: str, path: str) -> bool:
        if self.host is not None and self.host != host:
            return False
        if self.prefix == "/":
            return True
        return path == self.prefix or path.startswith(self.prefix + "/")

    def upstream_target(self, raw_path: str) -> str:
        """The path and query to request upstream (`strip_prefix` applied)."""
        if not self.strip_prefix or self.prefix == "/":
            return raw_path
        rest = raw_path[len(self.prefix) :]
        if not rest.startswith("/"):
            rest = "/" + rest  # "/api" -> "/", "/api?x" -> "/?x"
        return rest


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    routes: tuple[Route, ...]
    inspect: InspectPolicy

    def route_for(self, host_header: str, raw_path: str) -> Route | None:
        host = _host_only(host_header)
        path = raw_path.split("?", 1)[0]
        for route in self.routes:
            if route.matches(host, path):
                return route
        return None


def _host_only(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _route(route: RouteConfig, config: Config) -> Route:
    upstream = config.upstream_by_name[route.upstream]
    url = URL(upstream.url)
    return Route(
        name=route.name,
        prefix=route.match.path_prefix,
        host=route.match.host,
        strip_prefix=route.strip_prefix,
        upstream=upstream,
        base_url=str(url.with_user(None)).rstrip("/") if url.user else upstream.url.rstrip("/"),
        upstream_host=None if upstream.preserve_host else authority(url),
        authorization=_basic_auth(url),
        rules=compile_ruleset(
            route.rules,
            config.rules,
            action=route.action or config.action,
            jsonrpc_codes=dict(route.jsonrpc_codes),
        ),
        fallback_retry_after=max(1, math.ceil(upstream.retry_after)),
        discover=route.discover or config.discover,
    )


def _basic_auth(url: URL) -> str | None:
    """`http://user:pass@host` means: authenticate to the upstream with Basic auth."""
    if url.user is None:
        return None
    credentials = f"{url.user}:{url.password or ''}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")  # RFC 7617


def build(config: Config) -> Runtime:
    """Compile `config` for serving (rules, routes, inspection policy)."""
    return Runtime(
        config=config,
        routes=tuple(_route(r, config) for r in config.routes),
        inspect=InspectPolicy.compile(config.inspect),
    )
