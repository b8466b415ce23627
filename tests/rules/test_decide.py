"""Tables for proxy.rules.decide: a buffered body judged and the verdict applied, the one
pure step the handler, `check` and `explain` share (SPEC 4.3, 5)."""

from __future__ import annotations

import gzip
import json

import pytest

from proxy.config.model import InspectConfig
from proxy.rules.decide import Decision, decide
from proxy.rules.inspection import InspectPolicy
from proxy.rules.ruleset import compile_ruleset
from proxy.wire import headers as h

RULES = compile_ruleset(["slack", "error-envelope"], [])
POLICY = InspectPolicy.compile(InspectConfig())
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM: h.Headers = [
    ("Content-Type", "application/json"),
    ("ETag", '"v1"'),
    ("Cache-Control", "max-age=60"),
]


def _decide(raw: bytes, codings: tuple[str, ...] = (), status: int = 200) -> Decision:
    return decide(
        RULES, POLICY, status, UPSTREAM, raw, "application/json", codings,
        fallback_retry_after=7, trace_id=TRACE,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "result"),
    [
        (b'{"ok": true}', "clean"),
        (b'{"error": null}', "clean"),
        (b"", "clean"),
        (b'{"ok": tru', "invalid_json"),
    ],
)
def test_what_no_rule_matches_is_only_a_result(raw: bytes, result: str) -> None:
    assert _decide(raw) == Decision(result)


def test_a_match_is_rewritten_as_a_client_gets_it() -> None:
    decision = _decide(b'{"ok": false, "error": "ratelimited"}')
    assert decision.result == "matched"
    assert decision.verdict is not None and decision.verdict.rule == "slack"
    delivery = decision.delivery
    assert delivery is not None and delivery.status == 429
    names = [name.lower() for name, _ in delivery.headers]
    assert "etag" not in names  # SPEC 4.3: caching headers replaced on a rewrite
    assert h.get(delivery.headers, "cache-control") == "no-store"
    assert h.get(delivery.headers, "retry-after") == "7"  # a 429 always carries one
    assert h.get(delivery.headers, "tunnelguard-rule") == "slack"
    assert delivery.body is None  # body: keep


def test_a_compressed_body_is_judged_on_its_decoded_json() -> None:
    body = json.dumps({"error": "upstream timed out"}).encode()
    decision = _decide(gzip.compress(body), ("gzip",))
    assert decision.verdict is not None and decision.verdict.status == 504
    assert decision.delivery is not None and decision.delivery.status == 504
