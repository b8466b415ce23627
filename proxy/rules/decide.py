"""`decide`: one complete buffered body judged, pure: decoded, parsed, evaluated by the
route's rules, and the verdict applied (SPEC 4.3, 5); `decide_event`: the first event of an
event stream judged the same way (5.1).

The handler, `tunnelguard check` (`ruletests.simulate`) and `tunnelguard explain` all judge
a body through it, so what a rule test asserts is what a client gets.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.rules.events import Event
from proxy.rules.inspection import Examined, InspectPolicy, examine
from proxy.rules.ruleset import RuleSet
from proxy.rules.streams import examine_event
from proxy.rules.suspect import Suspect
from proxy.rules.verdict import Delivery, Verdict, apply_verdict
from proxy.wire import headers as h


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one inspected body."""

    result: str  # inspections_total{result}
    verdict: Verdict | None = None  # the matching rule's, else None
    delivery: Delivery | None = None  # the answer with the verdict applied, when one matched
    suspect: Suspect | None = None  # no rule matched, but the body has error markers (SPEC 10)


def decide(
    rules: RuleSet,
    policy: InspectPolicy,
    status: int,
    headers: h.Headers,
    raw: bytes,
    mtype: str,
    codings: tuple[str, ...],
    *,
    fallback_retry_after: int,
    trace_id: str,
    discover: bool = False,
) -> Decision:
    """Judge `raw`, the complete body of a response with `status` and `headers` (already
    filtered for the client).  Never raises on bad input: undecodable or invalid bodies
    are a `result`, not an error.  With `discover`, a clean body is also looked at for
    error markers (`suspect`, SPEC 10)."""
    examined = examine(rules, policy, raw, mtype, codings, discover)
    return _applied(examined, status, headers, fallback_retry_after, trace_id)


def decide_event(
    rules: RuleSet,
    status: int,
    headers: h.Headers,
    event: Event,
    mtype: str,
    *,
    fallback_retry_after: int,
    trace_id: str,
    discover: bool = False,
) -> Decision:
    """Judge the first event of an event stream (SPEC 5.1) as `decide` judges a body: the
    delivery, when a rule (or the built-in `stream-error`) matched, is the stream's head
    rewritten or flagged (4.3); with `body: keep` its bytes follow unchanged.  With
    `discover`, a clean event is looked at for error markers (`suspect`, SPEC 10)."""
    examined = examine_event(rules, event, mtype, discover)
    return _applied(examined, status, headers, fallback_retry_after, trace_id)


def _applied(
    examined: Examined,
    status: int,
    headers: h.Headers,
    fallback_retry_after: int,
    trace_id: str,
) -> Decision:
    verdict = examined.verdict
    if verdict is None:
        return Decision(examined.result, suspect=examined.suspect)
    delivery = apply_verdict(
        verdict,
        status,
        headers,
        decoded_json=examined.decoded,
        fallback_retry_after=fallback_retry_after,
        trace_id=trace_id,
    )
    return Decision(examined.result, verdict, delivery)
