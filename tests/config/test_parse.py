"""Config parsing (proxy.config: load, parse, parse_rules, errors, model): values, defaults,
every error class.

Errors must name the file, line, column and YAML path, and every independent error in a
document must be reported at once (SPEC 1 and 4).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.errors import ConfigError, ConfigProblem
from proxy.config.load import load_default, load_file, parse_text
from proxy.config.model import (
    AllOf,
    BreakerPolicy,
    Condition,
    Config,
    DiscoverConfig,
    DrainConfig,
    InspectConfig,
    Listen,
    Not,
    RetryPolicy,
    RouteMatch,
    ServerLimits,
    StatusRange,
    StatusSpec,
    TestEvent,
    Timeouts,
)
from proxy.rules.ruletests import run_tests

REPO = Path(__file__).resolve().parents[2]
FILE = "t.yaml"

# SPEC section 4, verbatim but for three comments cut to fit the line length.
SPEC_EXAMPLE = """\
version: 1
listen: 0.0.0.0:8080
admin: {listen: 0.0.0.0:9090}
upstreams:
  slack:
    url: http://127.0.0.1:3000
    timeouts: {connect: 2s, response: 30s}     # response = until the headers arrive
    max_concurrency: 256                        # more in flight -> 503 + Retry-After
    retry: {attempts: 2, on: [connect_error], backoff: 100ms, max_backoff: 2s, budget: 0.2}
    circuit_breaker: {failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 30s}
    retry_after: 5s                             # used when a 429/503 needs one and none is known
routes:                                         # first match wins
  - name: slack
    match: {path_prefix: /api/, host: slack.internal}   # optional; absent = every request
    upstream: slack
    strip_prefix: false                         # true: /api/users -> /users, /api -> /
    rules: [slack, my-envelope]                 # preset or rule names, tried in order
    action: rewrite                             # optional: overrides every rule's action here
    preset_options: {jsonrpc: {codes: {-32005: 429}}}   # optional, per route
drain: {delay: 0s, timeout: 30s}               # defaults, see 6.3
inspect:                                        # these values are the defaults
  max_body_bytes: 1MiB                          # larger bodies stream through uninspected
  max_decoded_bytes: 4MiB                       # cap on a decompressed body (bomb-safe)
  content_types: [application/json, "application/*+json"]
  statuses: [200-299]
rules:
  - name: my-envelope
    when: {all: [{path: /status, equals: error}, {path: /code, exists: true}]}
    status:
      from: /code
      map: {AUTH_EXPIRED: 401, NO_SUCH_USER: 404, BUSY: 503}
      default: 502
    action: rewrite                             # rewrite | flag
    body: keep                                  # keep | problem
    retry_after_from: /retry_in_seconds         # optional, JSON pointer to seconds
tests:
  - name: expired token becomes 401
    route: slack
    response: {status: 200, headers: {content-type: application/json},
               body: {status: error, code: AUTH_EXPIRED}}
    expect: {status: 401, rule: my-envelope}
"""

MINIMAL = """\
version: 1
upstreams:
  app:
    url: http://127.0.0.1:3000
routes:
  - name: main
    upstream: app
"""


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str, **kwargs: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_text(text, FILE, **kwargs)
    found = list(info.value.problems)
    assert str(info.value) == "\n".join(p.render() for p in found)
    return found


def rendered(text: str, **kwargs: str) -> list[str]:
    return [p.render() for p in problems(text, **kwargs)]


# --- the SPEC example -----------------------------------------------------------------------


def test_spec_example_parses_with_the_right_values() -> None:
    config = parse_text(SPEC_EXAMPLE, "spec.yaml")
    assert config.source == "spec.yaml"
    assert config.listen == Listen("0.0.0.0", 8080)
    assert config.admin_listen == Listen("0.0.0.0", 9090)
    assert str(config.listen) == "0.0.0.0:8080"

    (up,) = config.upstreams
    assert up.name == "slack"
    assert up.url == "http://127.0.0.1:3000"
    assert up.timeouts == Timeouts(connect=2.0, response=30.0)
    assert isinstance(up.timeouts.connect, float)
    assert up.max_concurrency == 256
    assert up.retry == RetryPolicy(
        attempts=2, on=("connect_error",), backoff=0.1, max_backoff=2.0, budget=0.2
    )
    assert up.circuit_breaker == BreakerPolicy(
        failure_ratio=0.5, min_requests=20, window=10.0, open_for=30.0
    )
    assert up.retry_after == 5.0
    assert up.preserve_host is True
    assert config.upstream_by_name == {"slack": up}

    (route,) = config.routes
    assert route.name == "slack"
    assert route.upstream == "slack"
    assert route.match == RouteMatch(path_prefix="/api", host="slack.internal")
    assert route.strip_prefix is False
    assert route.rules == ("slack", "my-envelope")
    assert route.action == "rewrite"
    assert route.jsonrpc_codes == ((-32005, 429),)

    assert config.drain == DrainConfig(delay=0.0, timeout=30.0)
    assert config.inspect == InspectConfig(
        max_body_bytes=1048576,
        max_decoded_bytes=4194304,
        content_types=("application/json", "application/*+json"),
        statuses=((200, 299),),
    )

    (rule,) = config.rules
    assert rule.name == "my-envelope"
    assert rule.when == AllOf(
        (Condition("/status", "equals", "error"), Condition("/code", "exists", True))
    )
    assert rule.status == StatusSpec(
        source="/code",
        map=(("AUTH_EXPIRED", 401), ("NO_SUCH_USER", 404), ("BUSY", 503)),
        default=502,
    )
    assert rule.action == "rewrite"
    assert rule.body == "keep"
    assert rule.retry_after_from == "/retry_in_seconds"

    (test,) = config.tests
    assert test.name == "expired token becomes 401"
    assert test.route == "slack"
    assert test.rules is None
    assert test.line == 37
    assert test.response.status == 200
    assert test.response.headers == (("content-type", "application/json"),)
    assert test.response.body == b'{"status":"error","code":"AUTH_EXPIRED"}'
    assert test.expect.status == 401
    assert test.expect.rule == "my-envelope"

    outcomes = run_tests(config)
    assert [o.mismatches for o in outcomes] == [()]


# --- defaults -------------------------------------------------------------------------------


def test_defaults_when_keys_are_absent() -> None:
    config = parse_text(MINIMAL, FILE)
    # SPEC 1: proxy on 127.0.0.1:8080, admin on 127.0.0.1:9090
    assert config.listen == Listen("127.0.0.1", 8080)
    assert config.admin_listen == Listen("127.0.0.1", 9090)
    (up,) = config.upstreams
    # SPEC 4: retry defaults; breaker absent = off; SPEC 6.1: retry_after default 5 s
    assert up.retry == RetryPolicy(2, ("connect_error",), 0.1, 2.0, 0.2)
    assert up.circuit_breaker is None
    assert up.retry_after == 5.0
    assert up.timeouts == Timeouts(2.0, 30.0)
    assert up.max_concurrency == 256
    assert up.preserve_host is True  # SPEC 7: Host is the client's unless preserve_host: false
    (route,) = config.routes
    assert route.match == RouteMatch("/", None)  # absent = every request
    assert route.strip_prefix is False
    assert route.rules == ()  # none = no inspection
    assert route.action is None
    assert route.jsonrpc_codes == ()
    # SPEC 4: inspect "these values are the defaults"; drain 0s / 30s (6.3)
    assert config.inspect == InspectConfig(
        1 << 20, 4 << 20, ("application/json", "application/*+json"), ((200, 299),), 16 << 10, 1.0
    )  # SPEC 5.1: a stream's first event held up to 16 KiB and 1 s
    assert config.drain == DrainConfig(0.0, 30.0)
    # SPEC 4.7
    assert config.server == ServerLimits(10.0, 75.0, 10000, 16 * 1024, 0)
    assert config.rules == ()
    assert config.tests == ()
    assert config.action is None


def test_rule_defaults() -> None:
    config = parse_text(
        MINIMAL
        + doc("""
            rules:
              - name: r
                when: {path: /ok, equals: false}
                status: {from: /code}
            """),
        FILE,
    )
    (rule,) = config.rules
    assert rule.action == "rewrite"  # SPEC 4.3
    assert rule.body == "keep"
    assert rule.retry_after_from is None
    assert rule.status == StatusSpec(source="/code", default=502)


def test_empty_circuit_breaker_turns_it_on_with_defaults() -> None:
    text = MINIMAL.replace(
        "    url: http://127.0.0.1:3000\n", "    url: http://h\n    circuit_breaker: {}\n"
    )
    (up,) = parse_text(text, FILE).upstreams
    assert up.circuit_breaker == BreakerPolicy()


def test_config_is_frozen() -> None:
    config = parse_text(MINIMAL, FILE)
    with pytest.raises(AttributeError):
        config.action = "flag"  # type: ignore[misc]


# --- value forms ----------------------------------------------------------------------------


def _with_drain_delay(value: str) -> str:
    return MINIMAL + f"drain: {{delay: {value}}}\n"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("'100ms'", 0.1),
    ],
)
def test_durations_are_float_seconds(value: str, seconds: float) -> None:
    delay = parse_text(_with_drain_delay(value), FILE).drain.delay
    assert delay == pytest.approx(seconds)
    assert isinstance(delay, float)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("0", 0),
        ("1000", 1000),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("2GiB", 2 << 30),
        ("10B", 10),
        ("1 MiB", 1048576),
    ],
)
def test_sizes_are_bytes(value: str, size: int) -> None:
    config = parse_text(MINIMAL + f"inspect: {{max_body_bytes: {value}}}\n", FILE)
    assert config.inspect.max_body_bytes == size


@pytest.mark.parametrize(
    ("value", "statuses"),
    [
        ("[200-299]", ((200, 299),)),
        ("[200-299, 404, '500 - 599']", ((200, 299), (404, 404), (500, 599))),
        ("[200]", ((200, 200),)),
        ("[]", ()),
    ],
)
def test_inspect_statuses(value: str, statuses: tuple[tuple[int, int], ...]) -> None:
    config = parse_text(MINIMAL + f"inspect: {{statuses: {value}}}\n", FILE)
    assert config.inspect.statuses == statuses


@pytest.mark.parametrize(
    ("fragment", "size", "seconds"),
    [
        ("{first_event_bytes: 4KiB, first_event_timeout: 250ms}", 4096, 0.25),
        ("{first_event_bytes: 0}", 0, 1.0),  # 0: SPEC 5.1 off
        ("{first_event_timeout: 1m}", 16 << 10, 60.0),
    ],
)
def test_first_event_bounds(fragment: str, size: int, seconds: float) -> None:
    config = parse_text(MINIMAL + f"inspect: {fragment}\n", FILE)
    assert (config.inspect.first_event_bytes, config.inspect.first_event_timeout) == (
        size,
        seconds,
    )


def test_content_types_are_lower_cased() -> None:
    config = parse_text(
        MINIMAL + "inspect: {content_types: [Application/JSON, 'application/*+json', a/b+JSON]}\n",
        FILE,
    )
    assert config.inspect.content_types == ("application/json", "application/*+json", "a/b+json")


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{path_prefix: /api/}", RouteMatch("/api", None)),
        ("{path_prefix: /api}", RouteMatch("/api", None)),
        ("{path_prefix: /}", RouteMatch("/", None)),
        ("{host: API.Example.com:8443}", RouteMatch("/", "api.example.com")),
        ("{host: '[::1]:8080'}", RouteMatch("/", "[::1]")),
        ("{host: '[::1]'}", RouteMatch("/", "[::1]")),
    ],
)
def test_route_match_normalised(match: str, expected: RouteMatch) -> None:
    config = parse_text(MINIMAL + f"    match: {match}\n", FILE)
    assert config.routes[0].match == expected


def test_retry_policy_values() -> None:
    text = MINIMAL.replace(
        "    url: http://127.0.0.1:3000\n",
        "    url: http://127.0.0.1:3000\n"
        "    retry: {attempts: 3, on: [connect_error, timeout, 429, 503], backoff: 50ms,"
        " max_backoff: 1s, budget: 0}\n",
    )
    (up,) = parse_text(text, FILE).upstreams
    assert up.retry == RetryPolicy(3, ("connect_error", "timeout", "429", "503"), 0.05, 1.0, 0.0)


def test_status_ranges_and_jsonrpc_codes() -> None:
    text = MINIMAL + doc("""
            rules: [rpc]
            preset_options: {jsonrpc: {codes: {-32005: 429, "-32000": 503, 7: 500}}}
        rules:
          - name: rpc
            when: {path: /error/code, exists: true}
            status:
              from: /error/code
              map: {-32001: 404}
              ranges: [{min: -32099, max: -32000, status: 500}]
              default: 502
        """)
    config = parse_text(text, FILE)
    assert config.routes[0].rules == ("rpc",)
    assert config.routes[0].jsonrpc_codes == ((-32005, 429), (-32000, 503), (7, 500))
    assert all(type(c) is int and type(s) is int for c, s in config.routes[0].jsonrpc_codes)
    assert config.rules[0].status == StatusSpec(
        source="/error/code",
        map=(("-32001", 404),),
        ranges=(StatusRange(-32099, -32000, 500),),
        default=502,
    )


def test_conditions_nest() -> None:
    text = MINIMAL + doc("""
        rules:
          - name: r
            when:
              any:
                - {path: /a, in: [1, "1", true]}
                - not: {path: /b, nonempty: true}
                - {path: /c, matches: "^x"}
            status: 500
            action: flag
            body: problem
        """)
    (rule,) = parse_text(text, FILE).rules
    assert rule.when.items == (  # type: ignore[union-attr]
        Condition("/a", "in", (1, "1", True)),
        Not(Condition("/b", "nonempty", True)),
        Condition("/c", "matches", "^x"),
    )
    assert rule.status == StatusSpec(fixed=500)
    assert (rule.action, rule.body) == ("flag", "problem")


@pytest.mark.parametrize(
    ("response", "body"),
    [
        ("{body: {ok: false}}", b'{"ok":false}'),
        ("{body: 'not json'}", b"not json"),
        ("{body: [1, 2]}", b"[1,2]"),
        ("{body: null}", b"null"),
        ("{status: 200}", b""),  # no body at all: an empty body
    ],
)
def test_test_response_bodies(response: str, body: bytes) -> None:
    text = MINIMAL + f"tests:\n  - {{name: t, route: main, response: {response}, expect: {{}}}}\n"
    (test,) = parse_text(text, FILE).tests
    assert test.response.body == body


def test_test_response_events_are_a_stream_body() -> None:
    text = MINIMAL + doc("""
        tests:
          - name: sse
            route: main
            response:
              events:
                - {event: error, data: {type: error}}
                - {data: "[DONE]"}
            expect: {}
          - name: ndjson
            route: main
            response:
              headers: {content-type: application/x-ndjson}
              events: [{data: {error: quota}}]
            expect: {}
        """)
    sse, ndjson = parse_text(text, FILE).tests
    assert sse.response.headers == (("content-type", "text/event-stream"),)
    assert sse.response.events == (
        TestEvent("error", b'{"type":"error"}'),
        TestEvent(None, b"[DONE]"),
    )
    assert ndjson.response.headers == (("content-type", "application/x-ndjson"),)
    assert ndjson.response.events == (TestEvent(None, b'{"error":"quota"}'),)


@pytest.mark.parametrize(
    ("response", "path", "message"),
    [
        ("{body: x, events: []}", "tests[0].response.events", "give `body` or `events`"),
        ("{events: [{event: error}]}", "tests[0].response.events[0]", "missing required key"),
        ("{events: [{event: [1], data: x}]}", "tests[0].response.events[0].event",
         "expected an event name on one line"),
        ("{events: [{event: \"a\\nb\", data: x}]}", "tests[0].response.events[0].event",
         "expected an event name on one line"),
        ("{events: [{data: x, id: 1}]}", "tests[0].response.events[0].id", "unknown key"),
        ("{events: {data: x}}", "tests[0].response.events", "expected a list"),
    ],
)  # fmt: skip
def test_bad_test_events_are_config_errors(response: str, path: str, message: str) -> None:
    text = MINIMAL + f"tests:\n  - {{name: t, route: main, response: {response}, expect: {{}}}}\n"
    with pytest.raises(ConfigError) as caught:
        parse_text(text, FILE)
    (problem,) = caught.value.problems
    assert problem.path == path and message in problem.message


def test_expect_rule_null_means_no_rule() -> None:
    text = MINIMAL + doc("""
        tests:
          - {name: a, rules: [slack], response: {}, expect: {rule: null}}
          - {name: b, rules: [slack], response: {}, expect: {rule: slack}}
          - {name: c, rules: [slack], response: {}, expect: {status: 200}}
        """)
    a, b, c = parse_text(text, FILE).tests
    assert (a.expect.rule, b.expect.rule, c.expect.rule) == ("", "slack", None)
    assert a.rules == ("slack",)
    assert a.route is None


# --- upstream_url override ------------------------------------------------------------------


def test_upstream_url_replaces_the_single_upstream() -> None:
    config = parse_text(MINIMAL, FILE, upstream_url="https://api.example.com:8443/")
    assert config.upstreams[0].url == "https://api.example.com:8443"
    assert config.upstream_by_name["app"].url == "https://api.example.com:8443"


def test_upstream_url_makes_url_key_optional() -> None:
    text = MINIMAL.replace("    url: http://127.0.0.1:3000\n", "    retry_after: 2s\n")
    assert rendered(text) == ["t.yaml:4:5: upstreams.app: missing required key `url`"]
    config = parse_text(text, FILE, upstream_url="http://10.0.0.1:9000")
    assert config.upstreams[0].url == "http://10.0.0.1:9000"
    assert config.upstreams[0].retry_after == 2.0


def test_upstream_url_with_two_upstreams_is_an_error() -> None:
    text = doc("""
        version: 1
        upstreams:
          a: {url: http://127.0.0.1:1}
          b: {url: http://127.0.0.1:2}
        routes:
          - {name: main, upstream: a}
        """)
    parse_text(text, FILE)  # fine without the override
    assert rendered(text, upstream_url="http://127.0.0.1:3") == [
        "t.yaml:3:3: upstreams: --upstream needs exactly one upstream in the file; it has 2"
    ]


def test_invalid_upstream_url_override() -> None:
    (problem,) = problems(MINIMAL, upstream_url="ftp://example.com")
    assert problem.path == "upstreams.app.url"
    assert "expected an http:// or https:// URL with a host" in problem.message


def test_load_default() -> None:
    config = load_default("http://127.0.0.1:5555")
    assert [u.url for u in config.upstreams] == ["http://127.0.0.1:5555"]
    (route,) = config.routes
    # SPEC 3: one route, every path, the presets in this order
    assert route.match == RouteMatch("/", None)
    assert route.rules == ("graphql", "jsonrpc", "slack", "error-envelope")
    assert config.inspect == InspectConfig()
    assert all(o.passed for o in run_tests(config))


def test_embedded_default_is_the_shipped_file() -> None:
    embedded = (REPO / "proxy" / "default.yaml").read_text(encoding="utf-8")
    assert embedded == (REPO / "config" / "default.yaml").read_text(encoding="utf-8")


# --- every shipped YAML file ----------------------------------------------------------------

CONFIG_FILES = sorted((REPO / "config").glob("**/*.yaml"))


def test_config_files_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in CONFIG_FILES}
    assert "config/default.yaml" in names
    assert any(n.startswith("config/examples/") for n in names)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shipped_config_parses_and_its_tests_pass(path: Path) -> None:
    config = load_file(path)
    assert config.source == str(path)
    outcomes = run_tests(config)
    failures = [f"{o.test.name} (line {o.test.line}): {'; '.join(o.mismatches)}" for o in outcomes]
    failures = [f for o, f in zip(outcomes, failures, strict=True) if not o.passed]
    for failure in failures:
        print(failure)
    assert failures == []


# --- load_file ------------------------------------------------------------------------------


def test_load_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_file(missing)
    (problem,) = info.value.problems
    assert problem.file == str(missing)
    assert problem.line is None
    assert problem.render() == f"{missing}: (document): cannot read file: No such file or directory"


def test_load_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path)
    assert "cannot read file" in info.value.problems[0].message


def test_load_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert "cannot read file" in info.value.problems[0].message
    assert "utf-8" in info.value.problems[0].message


def test_load_file_reads_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + "listen: nowhere\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert [p.render() for p in info.value.problems] == [
        f"{path}:8:9: listen: expected HOST:PORT such as 127.0.0.1:8080, got 'nowhere'"
    ]


# --- problems render as FILE:LINE:COL: path: message ----------------------------------------


def test_problem_render() -> None:
    assert ConfigProblem("f", 3, 7, "a.b[0]", "bad").render() == "f:3:7: a.b[0]: bad"
    assert ConfigProblem("f", None, None, "", "bad").render() == "f: (document): bad"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "t.yaml:1:1: (document): expected a mapping, got nothing (null)"),
        ("- a\n", "t.yaml:1:1: (document): expected a mapping, got a list"),
        ("a: [1\n", "t.yaml:2:1: (document): invalid YAML: while parsing a flow sequence"),
        ("a: 1\na: 2\n", "t.yaml:2:1: a: duplicate key 'a'"),
    ],
)
def test_document_level_errors(text: str, expected: str) -> None:
    found = rendered(text)
    assert len(found) == 1
    assert found[0].startswith(expected)


def test_yaml_error_without_position_still_renders() -> None:
    (problem,) = problems("a: 'x\ud800'\n")
    assert problem.render() == "t.yaml:1:6: (document): invalid text: surrogates not allowed"


# --- error classes --------------------------------------------------------------------------
# Each row: (document, line, fragment, yaml path, message fragment).  The column is where
# `fragment` starts on that line, so a row pins the exact position without counting by hand.

ROUTE_HEAD = MINIMAL  # lines 1-7; a key added to the route lands on line 8


def _route(line: str) -> str:
    return ROUTE_HEAD + f"    {line}\n"


def _upstream(line: str) -> str:
    """`line` is added to upstream `app`, on line 5."""
    return MINIMAL.replace(
        "    url: http://127.0.0.1:3000\n", f"    url: http://127.0.0.1:3000\n    {line}\n"
    )


def _rule(when: str = "{path: /ok, equals: false}", status: str = "502", extra: str = "") -> str:
    """Lines 8-12: `rules:`, `- name: r`, `when:` (10), `status:` (11), `extra` (12)."""
    text = ROUTE_HEAD + f"rules:\n  - name: r\n    when: {when}\n    status: {status}\n"
    return text + (f"    {extra}\n" if extra else "")


def _tests(entry: str) -> str:
    """`entry` is the first test, on line 9."""
    return MINIMAL + f"tests:\n  - {entry}\n"


ERRORS = [
    # unknown keys, with a "did you mean" hint, reported at the key
    ("unknown-key-hint", _route("match: {path_prefx: /api}"), 8, "path_prefx",
     "routes[0].match.path_prefx", "unknown key `path_prefx` (did you mean `path_prefix`?)"),
    ("unknown-top-level-key", MINIMAL + "rule: []\n", 8, "rule", "rule",
     "unknown key `rule` (did you mean `rules`?)"),
    ("unknown-upstream-key", _upstream("timeout: {connect: 1s}"), 5, "timeout",
     "upstreams.app.timeout", "(did you mean `timeouts`?)"),
    ("unknown-key-no-hint", MINIMAL + "zzz: 1\n", 8, "zzz", "zzz",
     "unknown key `zzz`; known keys: version, listen, admin"),
    ("unknown-condition-test", _rule(when="{path: /a, equal: 1}"), 10, "equal",
     "rules[0].when.equal", "unknown key `equal` (did you mean `equals`?)"),
    ("nested-unknown-key",
     _rule(when="{all: [{path: /a, exists: true}, {path: /b, sometimes: 1}]}"), 10,
     "sometimes", "rules[0].when.all[1].sometimes", "unknown key `sometimes`"),
    ("preset-options-unknown", _route("preset_options: {graphql: {}}"), 8, "graphql",
     "routes[0].preset_options.graphql", "unknown key `graphql`; known keys: jsonrpc"),
    # wrong types
    ("type-int", _upstream("max_concurrency: many"), 5, "many",
     "upstreams.app.max_concurrency", "expected an integer, got 'many'"),
    ("int-minimum", _upstream("max_concurrency: 0"), 5, "0",
     "upstreams.app.max_concurrency", "must be at least 1, got 0"),
    ("type-float-for-int", _upstream("max_concurrency: 1.5"), 5, "1.5",
     "upstreams.app.max_concurrency", "expected an integer, got float 1.5"),
    ("type-bool-yaml11-yes", _route("strip_prefix: yes"), 8, "yes", "routes[0].strip_prefix",
     "expected true or false, got 'yes'"),
    ("type-bool-int", _upstream("preserve_host: 1"), 5, "1", "upstreams.app.preserve_host",
     "expected true or false, got int 1"),
    ("type-list", _route("rules: slack"), 8, "slack", "routes[0].rules",
     "expected a list, got 'slack'"),
    ("type-mapping", _upstream("timeouts: 5s"), 5, "5s", "upstreams.app.timeouts",
     "expected a mapping, got '5s'"),
    ("type-null", _upstream("retry: ~"), 5, "~", "upstreams.app.retry",
     "expected a mapping, got nothing (null)"),
    ("ratio-range", _upstream("circuit_breaker: {failure_ratio: 1.5}"), 5, "1.5",
     "upstreams.app.circuit_breaker.failure_ratio", "expected a number from 0 to 1, got float 1.5"),
    ("retry-on-choice", _upstream("retry: {on: [connect_error, 500]}"), 5, "500",
     "upstreams.app.retry.on[1]",
     "expected one of connect_error, timeout, 429, 502, 503, 504, got '500'"),
    ("retry-budget-negative", _upstream("retry: {budget: -1}"), 5, "-1",
     "upstreams.app.retry.budget", "expected a number of at least 0, got int -1"),
    ("choice-hint", _route("action: rewrit"), 8, "rewrit", "routes[0].action",
     "expected one of rewrite, flag, got 'rewrit' (did you mean `rewrite`?)"),
    ("global-action", MINIMAL + "action: report\n", 8, "report", "action",
     "expected one of rewrite, flag, got 'report'"),
    ("listen", MINIMAL + "listen: 8080\n", 8, "8080", "listen",
     "expected HOST:PORT such as 127.0.0.1:8080, got int 8080"),
    ("listen-port-range", MINIMAL + "admin: {listen: 'localhost:99999'}\n", 8, "'localhost",
     "admin.listen", "expected HOST:PORT"),
    # durations
    ("duration-bare-number", _upstream("timeouts: {connect: 5}"), 5, "5}",
     "upstreams.app.timeouts.connect",
     "expected a duration like 250ms, 2s or 1m, got int 5 (did you mean `5s`?)"),
    ("duration-words", _upstream("retry_after: 5 seconds"), 5, "5 seconds",
     "upstreams.app.retry_after", "expected a duration like 250ms, 2s or 1m, got '5 seconds'"),
    ("duration-positive", _upstream("timeouts: {response: 0s}"), 5, "0s",
     "upstreams.app.timeouts.response", "must be greater than 0"),
    ("duration-negative", MINIMAL + "drain: {timeout: -1s}\n", 8, "-1s", "drain.timeout",
     "expected a duration like 250ms, 2s or 1m, got '-1s'"),
    ("duration-bool", MINIMAL + "drain: {delay: true}\n", 8, "true", "drain.delay",
     "expected a duration like 250ms, 2s or 1m, got boolean true"),
    ("duration-server", MINIMAL + "server: {header_timeout: 10}\n", 8, "10",
     "server.header_timeout", "(did you mean `10s`?)"),
    # sizes
    ("size-MB", MINIMAL + "inspect: {max_body_bytes: 1MB}\n", 8, "1MB",
     "inspect.max_body_bytes",
     "expected a size like 64KiB or 1MiB, got '1MB' (did you mean `1MiB`?)"),
    ("size-kb", MINIMAL + "server: {max_head_bytes: 64kb}\n", 8, "64kb",
     "server.max_head_bytes", "(did you mean `64KiB`?)"),
    ("size-fraction", MINIMAL + "inspect: {max_decoded_bytes: 1.5MiB}\n", 8, "1.5MiB",
     "inspect.max_decoded_bytes", "expected a size like 64KiB or 1MiB, got '1.5MiB'"),
    ("size-negative", MINIMAL + "inspect: {max_body_bytes: -1}\n", 8, "-1",
     "inspect.max_body_bytes", "expected a size like 64KiB or 1MiB, got int -1"),
    ("first-event-bytes-MB", MINIMAL + "inspect: {first_event_bytes: 16KB}\n", 8, "16KB",
     "inspect.first_event_bytes",
     "expected a size like 64KiB or 1MiB, got '16KB' (did you mean `16KiB`?)"),
    ("first-event-bytes-negative", MINIMAL + "inspect: {first_event_bytes: -1}\n", 8, "-1",
     "inspect.first_event_bytes", "expected a size like 64KiB or 1MiB, got int -1"),
    ("first-event-timeout-zero", MINIMAL + "inspect: {first_event_timeout: 0s}\n", 8, "0s",
     "inspect.first_event_timeout", "must be greater than 0"),
    ("first-event-timeout-number", MINIMAL + "inspect: {first_event_timeout: 2}\n", 8, "2}",
     "inspect.first_event_timeout",
     "expected a duration like 250ms, 2s or 1m, got int 2 (did you mean `2s`?)"),
    ("first-event-unknown-key", MINIMAL + "inspect: {first_event_byte: 1KiB}\n", 8,
     "first_event_byte", "inspect.first_event_byte",
     "unknown key `first_event_byte` (did you mean `first_event_bytes`?)"),
    ("status-range-order", MINIMAL + "inspect: {statuses: [200-199]}\n", 8, "200-199",
     "inspect.statuses[0]", "expected a status or a range like 200-299, got '200-199'"),
    ("media-type", MINIMAL + "inspect: {content_types: [json]}\n", 8, "json",
     "inspect.content_types[0]", "expected a media type, got 'json'"),
    # JSON pointers
    ("pointer-when", _rule(when="{path: ok, exists: true}"), 10, "ok", "rules[0].when.path",
     "expected a JSON pointer starting with '/', got 'ok' (did you mean '/ok'?)"),
    ("pointer-status-from", _rule(status="{from: code}"), 11, "code", "rules[0].status.from",
     "got 'code' (did you mean '/code'?)"),
    ("pointer-escape", _rule(extra="retry_after_from: /a~2"), 12, "/a~2",
     "rules[0].retry_after_from", "'~' must be followed by 0 or 1"),
    ("pointer-type", _rule(when="{path: 5, exists: true}"), 10, "5", "rules[0].when.path",
     "expected a JSON pointer such as /error, got int 5"),
    # regular expressions: RE2 only (linear time)
    ("regex-invalid", _rule(when="{path: /m, matches: '('}"), 10, "'('",
     "rules[0].when.matches", "invalid or non-linear regular expression '('"),
    ("regex-backreference", _rule(when="{path: /m, matches: '(a)\\1'}"), 10, "'(a)",
     "rules[0].when.matches", "non-linear regular expression '(a)\\\\1'"),
    ("regex-lookahead", _rule(when="{path: /m, matches: 'a(?=x)'}"), 10, "'a(",
     "rules[0].when.matches", "(RE2 syntax: no backreferences or lookaround)"),
    ("regex-lookbehind", _rule(when="{path: /m, matches: '(?<!x)y'}"), 10, "'(?",
     "rules[0].when.matches", "(RE2 syntax: no backreferences or lookaround)"),
    ("regex-type", _rule(when="{path: /m, matches: 5}"), 10, "5}", "rules[0].when.matches",
     "expected a regular expression string, got int 5"),
    # conditions
    ("condition-two-tests", _rule(when="{path: /m, exists: true, equals: 1}"), 10, "{",
     "rules[0].when",
     "a condition needs exactly one of exists, equals, in, matches, nonempty; got 2"),
    ("condition-no-test", _rule(when="{path: /m}"), 10, "{", "rules[0].when", "; got 0"),
    ("condition-no-path", _rule(when="{exists: true}"), 10, "{", "rules[0].when",
     "missing required key `path`"),
    ("condition-in-empty", _rule(when="{path: /m, in: []}"), 10, "[]", "rules[0].when.in",
     "expected a non-empty list of values, got a list"),
    ("condition-exists-type", _rule(when="{path: /m, exists: yes}"), 10, "yes",
     "rules[0].when.exists", "expected true or false, got 'yes'"),
    ("all-empty", _rule(when="{all: []}"), 10, "[]", "rules[0].when.all",
     "`all` needs at least one condition"),
    ("any-with-path", _rule(when="{any: [{path: /a, exists: true}], path: /b}"), 10, "any",
     "rules[0].when.any", "`any` must be the only key of its condition"),
    ("not-list", _rule(when="{not: [{path: /a, exists: true}]}"), 10, "[",
     "rules[0].when.not", "expected a mapping, got a list"),
    ("when-too-deep", _rule(when="{not: " * 17 + "{path: /a, exists: true}" + "}" * 17),
     10, "{path", "rules[0].when" + ".not" * 17, "conditions nested more than 16 deep"),
    # statuses
    ("map-2xx", _rule(status="{from: /code, map: {X: 200}}"), 11, "200",
     "rules[0].status.map.X", "mapped statuses must be 4xx or 5xx, got 200"),
    ("fixed-2xx", _rule(status="200"), 11, "200", "rules[0].status",
     "mapped statuses must be 4xx or 5xx, got 200"),
    ("fixed-out-of-range", _rule(status="999"), 11, "999", "rules[0].status",
     "expected an HTTP status code, got int 999"),
    ("default-3xx", _rule(status="{from: /code, default: 302}"), 11, "302",
     "rules[0].status.default", "mapped statuses must be 4xx or 5xx, got 302"),
    ("range-status", _rule(status="{from: /c, ranges: [{min: 1, max: 5, status: 600}]}"), 11,
     "600", "rules[0].status.ranges[0].status", "expected an HTTP status code, got int 600"),
    ("range-order", _rule(status="{from: /c, ranges: [{min: 5, max: 1, status: 500}]}"), 11,
     "{min", "rules[0].status.ranges[0]", "min 5 is greater than max 1"),
    ("range-missing-key", _rule(status="{from: /c, ranges: [{min: 5, status: 500}]}"), 11,
     "{min", "rules[0].status.ranges[0]", "missing required key `max`"),
    ("status-quoted", _rule(status="'502'"), 11, "'502'", "rules[0].status",
     "expected a status code such as 502, or a mapping with `from`, got '502'"),
    ("status-missing-from", _rule(status="{map: {X: 500}}"), 11, "{", "rules[0].status",
     "missing required key `from`"),
    ("rule-body", _rule(extra="body: html"), 12, "html", "rules[0].body",
     "expected one of keep, problem, got 'html'"),
    ("rule-missing-when", ROUTE_HEAD + "rules:\n  - {name: r, status: 500}\n", 9, "{",
     "rules[0]", "missing required key `when`"),
    # references between sections
    ("unknown-preset", _route("rules: [slakc]"), 8, "slakc", "routes[0].rules[0]",
     "unknown rule or preset 'slakc' (did you mean `slack`?)"),
    ("unknown-upstream", MINIMAL.replace("upstream: app", "upstream: ap"), 7, "ap",
     "routes[0].upstream", "unknown upstream 'ap'; defined: app"),
    ("duplicate-route",
     MINIMAL + "    match: {host: a}\n  - {name: main, upstream: app, match: {host: b}}\n", 9,
     "main", "routes[1].name", "duplicate route name 'main'"),
    ("duplicate-rule", _rule() + "  - {name: r, when: {path: /a, exists: true}, status: 500}\n",
     12, "r,", "rules[1].name", "duplicate rule name 'r'"),
    ("rule-named-like-preset",
     ROUTE_HEAD + "rules:\n  - {name: slack, when: {path: /a, exists: true}, status: 500}\n", 9,
     "slack", "rules[0].name", "'slack' is a preset's name; choose another"),
    ("unreachable-after-catch-all",
     MINIMAL + "  - name: api\n    upstream: app\n    match: {path_prefix: /api}\n", 8,
     "name: api", "routes[1]", "unreachable: route 'main' above matches all its requests"),
    ("unreachable-under-prefix",
     _route("match: {path_prefix: /api}")
     + "  - {name: deeper, upstream: app, match: {path_prefix: /api/v1, host: x}}\n", 9, "{",
     "routes[1]", "unreachable: route 'main' above matches all its requests"),
    ("unreachable-same-host",
     _route("match: {host: a.ex}") + "  - {name: b, upstream: app, match: {host: A.EX}}\n",
     9, "{", "routes[1]", "unreachable: route 'main'"),
    ("path-prefix-slash", _route("match: {path_prefix: api}"), 8, "api}",
     "routes[0].match.path_prefix", "must start with '/', got 'api'"),
    ("duplicate-yaml-key", _route("name: other"), 8, "name", "routes[0].name",
     "duplicate key 'name'"),
    ("invalid-name", MINIMAL.replace("name: main", "name: 'my route'"), 6, "'my",
     "routes[0].name", "invalid name 'my route'"),
    ("url-scheme", MINIMAL.replace("url: http://127.0.0.1:3000", "url: ftp://x"), 4, "ftp",
     "upstreams.app.url", "expected an http:// or https:// URL with a host, got 'ftp://x'"),
    ("url-query", MINIMAL.replace("url: http://127.0.0.1:3000", "url: http://x/?a=1"), 4,
     "http", "upstreams.app.url", "cannot carry a query string or fragment"),
    ("jsonrpc-code-key", _route("preset_options: {jsonrpc: {codes: {abc: 429}}}"), 8, "abc",
     "routes[0].preset_options.jsonrpc.codes.abc",
     "expected an integer JSON-RPC error code, got 'abc'"),
    ("jsonrpc-code-key-spaces", _route("preset_options: {jsonrpc: {codes: {' 5': 429}}}"), 8,
     "' 5'", "routes[0].preset_options.jsonrpc.codes. 5",
     "expected an integer JSON-RPC error code, got ' 5'"),
    ("jsonrpc-code-status", _route("preset_options: {jsonrpc: {codes: {-32005: 200}}}"), 8,
     "200}", "routes[0].preset_options.jsonrpc.codes.-32005",
     "mapped statuses must be 4xx or 5xx, got 200"),
    # version and required sections
    ("version-2", MINIMAL.replace("version: 1", "version: 2"), 1, "2", "version",
     "unsupported version 2; this build reads 1"),
    ("version-true", MINIMAL.replace("version: 1", "version: true"), 1, "true", "version",
     "unsupported version boolean true"),
    ("version-float", MINIMAL.replace("version: 1", "version: 1.0"), 1, "1.0", "version",
     "unsupported version float 1.0"),
    ("version-string", MINIMAL.replace("version: 1", "version: '1'"), 1, "'1'", "version",
     "unsupported version '1'"),
    ("version-missing", MINIMAL.replace("version: 1\n", ""), 1, "upstreams", "(document)",
     "missing required key `version`"),
    ("routes-missing", "version: 1\nupstreams: {app: {url: http://x}}\n", 1, "version",
     "(document)", "missing required key `routes`"),
    ("routes-empty", MINIMAL.split("routes:")[0] + "routes: []\n", 5, "[]", "routes",
     "at least one route is needed"),
    ("upstreams-empty", "version: 1\nupstreams: {}\nroutes: [{name: m, upstream: a}]\n", 2,
     "{}", "upstreams", "at least one upstream is needed"),
    ("route-missing-upstream", MINIMAL.replace("    upstream: app\n", ""), 6, "name",
     "routes[0]", "missing required key `upstream`"),
    # embedded tests
    ("test-unknown-route", _tests("{name: t, route: nope, response: {}, expect: {}}"), 9,
     "nope", "tests[0].route", "unknown route 'nope'"),
    ("test-route-and-rules",
     _tests("{name: t, route: main, rules: [slack], response: {}, expect: {}}"), 9, "{",
     "tests[0]", "a test names exactly one of `route` or `rules`"),
    ("test-neither-route-nor-rules", _tests("{name: t, response: {}, expect: {}}"), 9, "{",
     "tests[0]", "a test names exactly one of `route` or `rules`"),
    ("test-unknown-rule", _tests("{name: t, rules: [nope], response: {}, expect: {}}"), 9,
     "nope", "tests[0].rules[0]", "unknown rule or preset 'nope'"),
    ("test-expect-status", _tests("{name: t, route: main, response: {}, expect: {status: ok}}"),
     9, "ok}", "tests[0].expect.status", "expected an HTTP status code, got 'ok'"),
    ("test-expect-rule-type", _tests("{name: t, route: main, response: {}, expect: {rule: 5}}"),
     9, "5}", "tests[0].expect.rule", "expected a rule name or null, got int 5"),
    ("test-headers", _tests("{name: t, route: main, response: {headers: [a]}, expect: {}}"), 9,
     "[a]", "tests[0].response.headers", "expected a mapping of header names to values"),
    ("test-missing-expect", _tests("{name: t, route: main, response: {}}"), 9, "{",
     "tests[0]", "missing required key `expect`"),
    # discover (SPEC 10), top level and per route
    ("discover-not-mapping", MINIMAL + "discover: true\n", 8, "true", "discover",
     "expected a mapping, got boolean true"),
    ("discover-unknown-key", MINIMAL + "discover: {max_shape: 3}\n", 8, "max_shape",
     "discover.max_shape", "unknown key `max_shape` (did you mean `max_shapes`?)"),
    ("discover-enabled-type", MINIMAL + "discover: {enabled: 'yes'}\n", 8, "'yes'",
     "discover.enabled", "expected true or false, got 'yes'"),
    ("discover-max-shapes-zero", MINIMAL + "discover: {max_shapes: 0}\n", 8, "0}",
     "discover.max_shapes", "must be at least 1, got 0"),
    ("discover-max-shapes-huge", MINIMAL + "discover: {max_shapes: 5000}\n", 8, "5000",
     "discover.max_shapes", "at most 1000 (each shape is a metric series), got 5000"),
    ("discover-max-shapes-float", MINIMAL + "discover: {max_shapes: 1.5}\n", 8, "1.5",
     "discover.max_shapes", "expected an integer, got float 1.5"),
    ("route-discover-header", _route("discover: {header: 1}"), 8, "1}",
     "routes[0].discover.header", "expected true or false, got int 1"),
    ("route-discover-unknown", _route("discover: {enable: false}"), 8, "enable",
     "routes[0].discover.enable", "(did you mean `enabled`?)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "fragment", "path", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in ERRORS],
)
def test_error_is_reported_with_path_and_line(
    text: str, line: int, fragment: str, path: str, message: str
) -> None:
    found = problems(text)
    assert len(found) == 1, [p.render() for p in found]
    (problem,) = found
    source_line = text.splitlines()[line - 1]
    assert fragment in source_line, "bad test row"
    col = source_line.index(fragment) + 1
    assert problem.render().startswith(f"{FILE}:{line}:{col}: {path}: "), problem.render()
    assert message in problem.message


def test_all_errors_reported_at_once() -> None:
    text = doc("""
        version: 1
        upstreams:
          app:
            url: http://127.0.0.1:3000
            timeouts: {connect: 5}
        routes:
          - name: main
            upstream: app
            match: {path_prefx: /api}
        inspect: {max_body_bytes: 1MB}
        """)
    assert rendered(text) == [
        "t.yaml:5:25: upstreams.app.timeouts.connect: expected a duration like 250ms, 2s or 1m,"
        " got int 5 (did you mean `5s`?)",
        "t.yaml:9:13: routes[0].match.path_prefx: unknown key `path_prefx` (did you mean"
        " `path_prefix`?); known keys: path_prefix, host",
        "t.yaml:10:27: inspect.max_body_bytes: expected a size like 64KiB or 1MiB, got '1MB'"
        " (did you mean `1MiB`?)",
    ]


def test_problems_are_sorted_by_position() -> None:
    # `tests` and `inspect` are walked after `routes`; output still reads top to bottom.
    text = doc("""
        inspect: {max_body_bytes: 1MB}
        version: 1
        upstreams: {app: {url: http://x}}
        routes: [{name: main, upstream: app, action: flop}]
        listen: nowhere
        """)
    lines = [p.line for p in problems(text)]
    assert lines == [1, 4, 5]


def test_errors_in_several_rules_are_all_reported() -> None:
    text = ROUTE_HEAD + doc("""
        rules:
          - name: a
            when: {path: x, exists: true}
            status: 200
            action: flop
          - name: b
            when: {path: /x, matches: '(a)\\1'}
            status: {from: /c, map: {X: 600}}
        """)
    assert [(p.line, p.path) for p in problems(text)] == [
        (10, "rules[0].when.path"),
        (11, "rules[0].status"),
        (12, "rules[0].action"),
        (14, "rules[1].when.matches"),
        (15, "rules[1].status.map.X"),
    ]


def test_broken_rule_is_not_also_an_unknown_reference() -> None:
    # the rule's own error is reported once, not again where a route or test names it
    text = MINIMAL + doc("""
            rules: [bad]
        rules:
          - name: bad
            when: {path: /m, matches: '(?=x)'}
            status: 502
        tests:
          - {name: t, rules: [bad], response: {}, expect: {}}
        """)
    assert [p.path for p in problems(text)] == ["rules[0].when.matches"]


def test_broken_upstream_is_not_also_an_unknown_reference() -> None:
    text = "version: 1\nupstreams: {app: 5}\nroutes: [{name: m, upstream: app}]\n"
    assert rendered(text) == ["t.yaml:2:18: upstreams.app: expected a mapping, got int 5"]


def test_missing_upstreams_is_reported_once() -> None:
    text = "version: 1\nroutes: [{name: m, upstream: app}]\n"
    assert rendered(text) == ["t.yaml:1:1: (document): missing required key `upstreams`"]


def test_broken_match_does_not_make_later_routes_unreachable() -> None:
    text = MINIMAL + "    match: {path_prefx: /api}\n  - {name: b, upstream: app}\n"
    assert [p.path for p in problems(text)] == ["routes[0].match.path_prefx"]


def test_routes_with_distinct_hosts_or_prefixes_are_reachable() -> None:
    text = doc("""
        version: 1
        upstreams: {app: {url: http://x}}
        routes:
          - {name: a, upstream: app, match: {host: a.example}}
          - {name: b, upstream: app, match: {path_prefix: /api}}
          - {name: c, upstream: app, match: {path_prefix: /apiv2}}
          - {name: d, upstream: app}
        """)
    assert [r.name for r in parse_text(text, FILE).routes] == ["a", "b", "c", "d"]


# --- property: nothing but ConfigError ------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "version", "listen", "admin", "upstreams", "routes", "rules", "tests", "inspect",
        "drain", "server", "action", "name", "url", "upstream", "match", "when", "status",
        "path", "equals", "in", "matches", "exists", "nonempty", "all", "any", "not", "from",
        "map", "ranges", "default", "timeouts", "retry", "on", "response", "expect", "body",
        "headers", "preset_options", "jsonrpc", "codes", "path_prefix", "host", "min", "max",
        "circuit_breaker", "statuses", "content_types", "max_body_bytes", "rule", "app",
    ]
)  # fmt: skip
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["/a", "1s", "1MiB", "200-299", "http://x", "slack", "(", "app", "1"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=8) | _VALUES)
def test_random_documents_raise_only_config_error(value: object) -> None:
    text = yaml.safe_dump(value, allow_unicode=True)
    try:
        config = parse_text(text, FILE)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.render().startswith(f"{FILE}:")
    else:
        assert isinstance(config, Config)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_config_error(text: str) -> None:
    try:
        parse_text(text, FILE)
    except ConfigError as exc:
        assert exc.problems


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        ("{failure_ratio: 0}", "circuit_breaker.failure_ratio: must be greater than 0"),
        ("{window: 500ms}", "circuit_breaker.window: must be at least 1s"),
    ],
)
def test_breaker_settings_that_cannot_work_are_rejected(breaker: str, message: str) -> None:
    text = (
        "version: 1\nupstreams:\n  u:\n    url: http://127.0.0.1:1\n"
        f"    circuit_breaker: {breaker}\nroutes:\n  - {{name: r, upstream: u}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_text(text, "b.yaml")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("listen: 'a:\u00b2'", "listen: expected HOST:PORT"),
        ("upstreams: {}", "upstreams: at least one upstream is needed"),
    ],
)
def test_odd_values_are_config_errors(fragment: str, message: str) -> None:
    base = {"listen": "listen: 127.0.0.1:8080", "upstreams": "upstreams: {u: {url: 'http://h'}}"}
    key = fragment.split(":", 1)[0]
    base[key] = fragment
    text = "version: 1\n" + "\n".join(base.values()) + "\nroutes: [{name: r, upstream: u}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_text(text, "o.yaml")
    assert message in str(caught.value)


def test_regexes_too_large_to_evaluate_quickly_are_rejected() -> None:
    """`(?s).{0,1000}z` took ~10 s on 1 MiB of CJK text (RE2's fallback engine); refused."""
    text = (
        "version: 1\nupstreams:\n  u: {url: 'http://127.0.0.1:1'}\n"
        "routes:\n  - {name: r, upstream: u, rules: [big]}\n"
        "rules:\n  - name: big\n    when: {path: /m, matches: '(?s).{0,1000}z'}\n    status: 502\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_text(text, "r.yaml")
    assert "too large to evaluate quickly" in str(caught.value)
    parse_text(text.replace("{0,1000}", "{0,100}"), "r.yaml")  # still fine


def test_discover_defaults_and_route_overrides_key_by_key() -> None:
    """SPEC 10: `discover: {enabled: true, max_shapes: 64, header: false}` at the top level
    and per route; a route's keys override the top level's one by one."""
    plain = parse_text(MINIMAL, FILE)
    assert plain.discover == DiscoverConfig(enabled=True, max_shapes=64, header=False)
    assert plain.routes[0].discover is None  # the top level's
    text = (
        MINIMAL
        + "    match: {path_prefix: /m}\n    discover: {header: true}\n"
        + "  - name: other\n    upstream: app\n    discover: {enabled: false}\n"
        + "discover: {max_shapes: 8, enabled: true}\n"
    )
    config = parse_text(text, FILE)
    assert config.discover == DiscoverConfig(enabled=True, max_shapes=8, header=False)
    assert config.routes[0].discover == DiscoverConfig(enabled=True, max_shapes=8, header=True)
    assert config.routes[1].discover == DiscoverConfig(enabled=False, max_shapes=8, header=False)
