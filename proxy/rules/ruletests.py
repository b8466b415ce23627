"""Running the `tests:` a config embeds (SPEC 4.5), through the same pure steps the
handler takes: inspection policy -> decode/parse -> rules -> verdict applied."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.config.model import Config, RuleTest, TestResponse
from proxy.rules import inspection as ins
from proxy.rules.decide import Decision, decide, decide_event
from proxy.rules.ruleset import RuleSet, compile_ruleset
from proxy.rules.snapshot import Runtime, build
from proxy.rules.streams import first_event_of, stream_text
from proxy.rules.verdict import with_retry_after
from proxy.wire import headers as h
from proxy.wire.tracecontext import new_trace_id


@dataclass(frozen=True, slots=True)
class Simulation:
    """What a client would receive for one upstream response."""

    status: int
    rule: str | None
    action: str | None
    headers: h.Headers
    inspection: str | None  # inspections_total result, None when not a candidate
    body: bytes | None = None  # a replaced body (body: problem), else None


def simulate(
    rules: RuleSet,
    runtime: Runtime,
    response: TestResponse,
    method: str = "GET",
    fallback_retry_after: int = 5,
) -> Simulation:
    policy = runtime.inspect
    status = response.status
    headers = h.response_headers(
        (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
    )
    if not rules or not policy.wants_status(method, status):
        return _passed(status, headers, None, fallback_retry_after)
    mtype = ins.media_type(h.get(response.headers, "content-type"))
    codings = ins.encodings(h.get(response.headers, "content-encoding"))
    body = stream_text(mtype, response.events) if response.events else response.body
    kind = policy.stream_types.get(mtype)
    if kind is not None and 200 <= status < 300:  # an event stream (SPEC 5.1)
        return _stream(rules, policy, kind, status, headers, body, mtype, codings,
                       fallback_retry_after)  # fmt: skip
    reason = policy.skip_reason(mtype, codings, len(body))
    if reason is None and len(body) > policy.max_body_bytes:
        reason = ins.SKIPPED_SIZE
    if reason is not None:
        return _passed(status, headers, reason, fallback_retry_after)
    decision = decide(
        rules, policy, status, headers, body, mtype, codings,
        fallback_retry_after=fallback_retry_after, trace_id=new_trace_id(),
    )  # fmt: skip
    return _judged(decision, status, headers, fallback_retry_after)


def _stream(
    rules: RuleSet,
    policy: ins.InspectPolicy,
    kind: str,
    status: int,
    headers: h.Headers,
    body: bytes,
    mtype: str,
    codings: tuple[str, ...],
    fallback_retry_after: int,
) -> Simulation:
    """`body` is a whole event stream: its first event is judged as the proxy judges it once
    held (a compressed stream is not held, and one without a first event within
    `first_event_bytes` streams on unjudged)."""
    if ins.compressed(codings):
        return _passed(status, headers, ins.SKIPPED_ENCODING, fallback_retry_after)
    event, result = first_event_of(body, kind, policy.first_event_bytes)
    if event is None:
        return _passed(status, headers, result, fallback_retry_after)
    decision = decide_event(
        rules, status, headers, event, mtype,
        fallback_retry_after=fallback_retry_after, trace_id=new_trace_id(),
    )  # fmt: skip
    return _judged(decision, status, headers, fallback_retry_after)


def _judged(
    decision: Decision, status: int, headers: h.Headers, fallback_retry_after: int
) -> Simulation:
    verdict, delivery = decision.verdict, decision.delivery
    if verdict is None or delivery is None:
        return _passed(status, headers, decision.result, fallback_retry_after)
    return Simulation(
        delivery.status,
        verdict.rule,
        verdict.action,
        with_retry_after(delivery.status, delivery.headers, fallback_retry_after),
        decision.result,
        delivery.body,
    )


def _passed(
    status: int, headers: h.Headers, inspection: str | None, fallback_retry_after: int
) -> Simulation:
    """A response delivered as the upstream sent it (only Retry-After may be added)."""
    headers = with_retry_after(status, headers, fallback_retry_after)
    return Simulation(status, None, None, headers, inspection)


@dataclass(frozen=True, slots=True)
class TestOutcome:
    test: RuleTest
    actual: Simulation
    mismatches: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.mismatches


def run_test(test: RuleTest, config: Config, runtime: Runtime) -> TestOutcome:
    if test.route is not None:
        route = next(r for r in runtime.routes if r.name == test.route)
        rules, fallback = route.rules, route.fallback_retry_after
    else:
        rules = compile_ruleset(test.rules or (), config.rules, action=config.action)
        fallback = 5
    actual = simulate(rules, runtime, test.response, fallback_retry_after=fallback)
    expect = test.expect
    problems = []
    # Flagging (an `action: flag` override, shadow mode, or a rule's own `action: flag`, as
    # `tunnelguard suggest` writes them) must not invalidate a config's own tests: a flagged
    # response also meets the status it would have had (Tunnelguard-Status), so the same
    # tests pass before and after the switch to rewrite.  `expect.action` still tells them
    # apart.
    shadow = None
    if actual.action == "flag":
        shadow = h.get(actual.headers, "tunnelguard-status")
    if (
        expect.status is not None
        and actual.status != expect.status
        and shadow != str(expect.status)
    ):
        problems.append(f"status: expected {expect.status}, got {actual.status}")
    if expect.rule is not None and (actual.rule or "") != expect.rule:
        wanted = expect.rule or "no rule"
        problems.append(f"rule: expected {wanted}, got {actual.rule or 'no rule'}")
    if expect.action is not None and actual.action != expect.action:
        problems.append(f"action: expected {expect.action}, got {actual.action or 'none'}")
    for name, value in expect.headers:
        got = h.get(actual.headers, name)
        if value is None and got is not None:
            problems.append(f"header {name}: expected absent, got {got!r}")
        elif value is not None and got != value:
            problems.append(f"header {name}: expected {value!r}, got {got!r}")
    return TestOutcome(test, actual, tuple(problems))


def run_tests(config: Config) -> list[TestOutcome]:
    runtime = build(config)
    return [run_test(t, config, runtime) for t in config.tests]


def failure_report(config: Config) -> list[str]:
    """Lines describing every failing embedded test (empty when all pass)."""
    lines = []
    for outcome in run_tests(config):
        if not outcome.passed:
            where = f"{config.source}:{outcome.test.line}" if outcome.test.line else config.source
            lines.append(f"{where}: test {outcome.test.name!r} failed")
            lines.extend(f"    {m}" for m in outcome.mismatches)
    return lines
