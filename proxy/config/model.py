"""The config's data shapes: frozen dataclasses that a loaded config is made of.

`load` reads YAML into them (through `parse`, which checks every value); nothing here
parses or validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RETRY_REASONS = ("connect_error", "timeout", "429", "502", "503", "504")
# the built-in presets of SPEC 4.4, by the names users write (rules/presets implements them)
PRESET_NAMES: tuple[str, ...] = ("slack", "graphql", "jsonrpc", "error-envelope")
ACTIONS = ("rewrite", "flag")
BODIES = ("keep", "problem")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Listen | None:
        """`HOST:PORT` (`[::1]:8080` for IPv6), or None when it is not one."""
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            return None
        return cls(host, int(port))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 2.0
    response: float = 30.0  # until the response head arrives


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 2  # total tries; 1 disables retries
    on: tuple[str, ...] = ("connect_error",)
    backoff: float = 0.1
    max_backoff: float = 2.0
    budget: float = 0.2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_ratio: float = 0.5
    min_requests: int = 20
    window: float = 10.0
    open_for: float = 30.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    url: str
    timeouts: Timeouts = Timeouts()
    max_concurrency: int = 256
    retry: RetryPolicy = RetryPolicy()
    circuit_breaker: BreakerPolicy | None = None
    retry_after: float = 5.0
    preserve_host: bool = True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path_prefix: str = "/"  # whole path segments; stored without a trailing slash
    host: str | None = None  # lower case, no port


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    upstream: str
    match: RouteMatch = RouteMatch()
    strip_prefix: bool = False
    rules: tuple[str, ...] = ()
    action: str | None = None  # overrides every rule's action on this route
    jsonrpc_codes: tuple[tuple[int, int], ...] = ()
    discover: DiscoverConfig | None = None  # None: the top level's; else merged with it


@dataclass(frozen=True, slots=True)
class InspectConfig:
    max_body_bytes: int = 1 << 20
    max_decoded_bytes: int = 4 << 20
    content_types: tuple[str, ...] = ("application/json", "application/*+json")
    statuses: tuple[tuple[int, int], ...] = ((200, 299),)
    # SPEC 5.1: an event stream is held until its first event, within both bounds
    first_event_bytes: int = 16 << 10  # 0: event streams are not held (5.1 off)
    first_event_timeout: float = 1.0


MAX_SHAPES_LIMIT = 1000  # each shape is a metric series: `discover.max_shapes` stays below this


@dataclass(frozen=True, slots=True)
class DiscoverConfig:
    """SPEC 10: find suspect error shapes in bodies no rule matched."""

    enabled: bool = True
    max_shapes: int = 64  # per route; then new shapes count as `other`
    header: bool = False  # add `Tunnelguard-Suspect: <id>` to suspect responses


@dataclass(frozen=True, slots=True)
class Condition:
    """A leaf test: `op` is exists | equals | in | matches | nonempty."""

    path: str
    op: str
    value: object


@dataclass(frozen=True, slots=True)
class AllOf:
    items: tuple[When, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    items: tuple[When, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: When


When = Condition | AllOf | AnyOf | Not


@dataclass(frozen=True, slots=True)
class StatusRange:
    min: int
    max: int
    status: int


@dataclass(frozen=True, slots=True)
class StatusSpec:
    """Either a fixed status, or `from` a pointer through map -> ranges -> default."""

    fixed: int | None = None
    source: str | None = None
    map: tuple[tuple[str, int], ...] = ()
    ranges: tuple[StatusRange, ...] = ()
    default: int = 502


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    when: When
    status: StatusSpec
    action: str = "rewrite"
    body: str = "keep"
    retry_after_from: str | None = None


@dataclass(frozen=True, slots=True)
class TestEvent:
    """One event of a rule test's stream body (`response.events`): SSE `event` name (None:
    none), and the data as text (a JSON value encoded, or a string as it stands)."""

    __test__ = False  # not a test case, for pytest, whatever its name says

    name: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class TestResponse:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    body: bytes = b""
    events: tuple[TestEvent, ...] = ()  # a stream body, written out by `rules.ruletests`


@dataclass(frozen=True, slots=True)
class TestExpect:
    status: int | None = None
    rule: str | None = None  # "" means: no rule may match
    action: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # None: the header must be absent


@dataclass(frozen=True, slots=True)
class RuleTest:
    name: str
    route: str | None
    rules: tuple[str, ...] | None
    response: TestResponse
    expect: TestExpect
    line: int | None = None


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    max_head_bytes: int = 16 << 10
    max_request_body: int = 0  # 0 = unlimited


@dataclass(frozen=True, slots=True)
class DrainConfig:
    delay: float = 0.0
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    upstreams: tuple[UpstreamConfig, ...]
    routes: tuple[RouteConfig, ...]
    listen: Listen = Listen("127.0.0.1", 8080)
    admin_listen: Listen = Listen("127.0.0.1", 9090)
    rules: tuple[RuleConfig, ...] = ()
    tests: tuple[RuleTest, ...] = ()
    inspect: InspectConfig = InspectConfig()
    drain: DrainConfig = DrainConfig()
    server: ServerLimits = ServerLimits()
    action: str | None = None  # global override (report-only rollout with `flag`)
    discover: DiscoverConfig = DiscoverConfig()
    source: str = "<config>"
    upstream_by_name: dict[str, UpstreamConfig] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        self.upstream_by_name.update({u.name: u for u in self.upstreams})
