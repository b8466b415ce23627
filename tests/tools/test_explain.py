"""`tunnelguard explain`: the real CLI on the shipped configs, text and JSON output.

The tracing behind the reasons is tested on its own in test_ruletrace.py."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config.load import load_file
from tests.conftest import ROOT

PY = [sys.executable, "-m", "proxy", "explain"]
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
ALL_CONFIGS = [ROOT / "config" / "default.yaml", *EXAMPLES]


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [*PY, *args], cwd=ROOT, input=stdin, capture_output=True, timeout=60, check=False
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def body_file(tmp_path: Path, body: object, name: str = "body.json") -> str:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return str(path)


def lines_of(out: str) -> list[str]:
    return out.splitlines()


def assert_lines(out: str, *expected: str) -> None:
    """Each expected line is a whole line of the output, in this order."""
    got = lines_of(out)
    at = 0
    for line in expected:
        assert line in got[at:], f"missing or out of order: {line!r}\n---\n{out}"
        at = got.index(line, at) + 1


# -- the CLI on real configs -------------------------------------------------------------------


def test_slack_invalid_auth_is_rewritten_to_401(tmp_path: Path) -> None:
    code, out, err = run(
        "--config",
        "config/default.yaml",
        body_file(tmp_path, {"ok": False, "error": "invalid_auth"}),
    )
    assert (code, err) == (0, "")
    assert_lines(
        out,
        "config: config/default.yaml",
        "route: default (the first route)",
        "  rules, tried in order (first match wins):",
        "    1. graphql (preset)",
        "    2. jsonrpc (preset)",
        "    3. slack (preset)",
        "    4. error-envelope (preset)",
        "  action override: none (each rule's own action)",
        "response: 200, Content-Type: application/json, 38 bytes",
        "inspection: matched (buffered)",
        "  1. graphql (preset): no match",
        "       why: no non-empty /errors list (/errors is missing)",
        "  2. jsonrpc (preset): no match",
        '       why: /jsonrpc is missing, not "2.0"',
        "  3. slack (preset): MATCH -> status 401 (table), action rewrite",
        "       why: /ok is false; 'invalid_auth' is in Slack's table",
        "       /ok: false",
        '       /error: "invalid_auth"',
        "  4. error-envelope (preset): not tried (a rule above matched)",
        "verdict: rule slack, action rewrite, mapped status 401",
        "  delivered status: 401 (the upstream sent 200)",
        "  headers added:",
        "    Via: 1.1 tunnelguard",
        "    Cache-Control: no-store",
        "    Tunnelguard-Rule: slack",
        '    Proxy-Status: tunnelguard; received-status=200; details="rule slack"',
        "  headers removed: none",
        "  Retry-After: none",
        "  body: the upstream's bytes, unchanged",
        "metrics (each +1):",
        '  tunnelguard_requests_total{route="default",method="GET",code="401",class="4xx",'
        'source="rewritten"}',
        '  tunnelguard_tunnelled_errors_total{route="default",rule="slack",action="rewrite",'
        'status="401"}',
        '  tunnelguard_inspections_total{route="default",result="matched"}',
    )


def test_slack_ratelimited_gets_the_upstreams_retry_after(tmp_path: Path) -> None:
    code, out, _ = run(
        "-c",
        "config/examples/slack.yaml",
        body_file(tmp_path, {"ok": False, "error": "ratelimited"}),
    )
    assert code == 0
    assert_lines(
        out,
        "  1. slack (preset): MATCH -> status 429 (table), action rewrite",
        "    Retry-After: 30",
        "  Retry-After: 30 (the upstream's retry_after setting: a 429 or 503 always carries one)",
    )


def test_graphql_legacy_reply_is_only_flagged(tmp_path: Path) -> None:
    body = {"errors": [{"message": "Not signed in", "extensions": {"code": "UNAUTHENTICATED"}}]}
    code, out, _ = run("-c", "config/examples/graphql.yaml", body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "route: graphql (the first route)",
        "  1. graphql (preset): MATCH -> status 401 (table), action flag",
        "       why: /errors/0/extensions/code 'UNAUTHENTICATED' is in the GraphQL table; "
        "legacy media type 'application/json': flag only",
        '       media type: "application/json"',
        "       /data: missing",
        '       /errors/0/extensions/code: "UNAUTHENTICATED"',
        '       /errors/0/message: "Not signed in"',
        "verdict: rule graphql, action flag, mapped status 401",
        "  delivered status: 200 (the upstream sent 200)",
        "    Tunnelguard-Rule: graphql",
        "    Tunnelguard-Status: 401",
        '  tunnelguard_requests_total{route="graphql",method="GET",code="200",class="4xx",'
        'source="flagged"}',
        '  tunnelguard_tunnelled_errors_total{route="graphql",rule="graphql",action="flag",'
        'status="401"}',
    )


def test_graphql_response_media_type_without_data_is_rewritten(tmp_path: Path) -> None:
    body = {"data": None, "errors": [{"message": "x", "type": "NOT_FOUND"}]}
    code, out, _ = run(
        "-c",
        "config/examples/graphql.yaml",
        "--content-type",
        "application/graphql-response+json; charset=utf-8",
        body_file(tmp_path, body),
    )
    assert code == 0
    assert_lines(
        out,
        "  1. graphql (preset): MATCH -> status 404 (table), action rewrite",
        "       why: /errors/0/type 'NOT_FOUND' is in the GraphQL table; no data: rewritable",
        '       media type: "application/graphql-response+json"',
        "       /data: null",
        "       /errors/0/extensions/code: missing",
        '       /errors/0/type: "NOT_FOUND"',
        "  delivered status: 404 (the upstream sent 200)",
    )


def test_clean_body_gives_each_presets_reason(tmp_path: Path) -> None:
    body = {"error": None, "errors": [], "ok": True, "status": "ok"}
    code, out, _ = run("-c", "config/default.yaml", body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "inspection: clean (buffered)",
        "  no rule matched",
        "rules on the object:",
        "  1. graphql (preset): no match",
        "       why: no non-empty /errors list (/errors is [])",
        "  2. jsonrpc (preset): no match",
        '       why: /jsonrpc is missing, not "2.0"',
        "  3. slack (preset): no match",
        "       why: /ok is true, not false",
        "       /ok: true",
        "       /error: null",
        "  4. error-envelope (preset): no match",
        "       why: no trigger: /error is not a non-empty string, object or array; "
        "/success is not false; /status is not error, fail or failure",
        "       /error: null",
        "       /success: missing",
        '       /status: "ok"',
        "verdict: none; the response is delivered as the upstream sent it",
        "  delivered status: 200 (the upstream sent 200)",
        "metrics (each +1):",
        '  tunnelguard_requests_total{route="default",method="GET",code="200",class="2xx",'
        'source="upstream"}',
        '  tunnelguard_inspections_total{route="default",result="clean"}',
    )
    assert "tunnelled_errors_total" not in out


def test_error_envelope_shows_the_keyword_row(tmp_path: Path) -> None:
    body = {"error": {"type": "x", "message": "Request timed out, try again later"}}
    code, out, _ = run("-c", "config/examples/error-envelope.yaml", body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "  1. my-envelope (rule): no match",
        "       why: the `when` condition does not hold",
        "       all: does not hold",
        '         /status equals: "error" -> found nothing (missing) -> does not hold',
        "         /code exists: true -> found nothing (missing) -> does not hold",
        "  2. error-envelope (preset): MATCH -> status 504 (keyword), action rewrite",
        "       why: /error is non-empty; message classified by keyword",
        '       message: "Request timed out, try again later"',
        '       message from: "/error/message"',
        "       keyword 'timed out' (row: timeout / timed out / deadline exceeded -> 504)",
    )


def test_jsend_fail_without_keyword_is_400(tmp_path: Path) -> None:
    body = {"status": "fail", "data": {"email": "taken"}}
    code, out, _ = run("-c", "config/examples/error-envelope.yaml", body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "  2. error-envelope (preset): MATCH -> status 400 (jsend-fail), action rewrite",
        "       why: /status is 'fail'; message unclassified, JSend fail",
        "       message: missing",
    )


def test_user_rule_with_problem_body_and_retry_after_from(tmp_path: Path) -> None:
    body = {"status": "error", "code": "BUSY", "retry_in_seconds": 11.2}
    code, out, _ = run("-c", "config/examples/error-envelope.yaml", body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "    1. my-envelope (rule, action rewrite, body problem)",
        "    2. error-envelope (preset)",
        "  1. my-envelope (rule): MATCH -> status 503 (map), action rewrite",
        "       why: the `when` condition holds",
        "       all: held",
        '         /status equals: "error" -> found "error" -> held',
        '         /code exists: true -> found "BUSY" -> held',
        "       status: from /code = \"BUSY\" -> map 'BUSY' -> 503",
        "       retry_after_from /retry_in_seconds = 11.2 -> 12 s",
        "  2. error-envelope (preset): not tried (a rule above matched)",
        "verdict: rule my-envelope, action rewrite, mapped status 503",
        "    Retry-After: 12",
        "    Content-Type: application/problem+json",
        "  headers removed:",
        "    Content-Type: application/json",
        "  Retry-After: 12 (the rule's retry_after_from)",
        "  body: replaced by application/problem+json:",
    )
    problem = json.loads(
        lines_of(out)[lines_of(out).index("  body: replaced by application/problem+json:") + 1]
    )
    assert problem["status"] == 503 and problem["upstream"] == body


TREE_CONFIG = """\
version: 1
upstreams:
  app: {url: http://127.0.0.1:3000}
routes:
  - name: app
    upstream: app
    rules: [soft-fail, error-envelope]
rules:
  - name: soft-fail
    when:
      all:
        - {path: /result, equals: false}
        - any:
            - {path: /data, nonempty: false}
            - {path: /errors/*/code, in: [E1, E2]}
        - not: {path: /warning, exists: true}
    status:
      from: /errors/0/code
      map: {E1: 409}
      ranges: [{min: 1000, max: 1999, status: 429}]
      default: 502
"""


def test_user_rule_tree_shows_every_condition(tmp_path: Path) -> None:
    config = tmp_path / "tree.yaml"
    config.write_text(TREE_CONFIG)
    body = {"result": False, "data": [1], "errors": [{"code": "1500"}, {"code": "E2"}]}
    code, out, _ = run("-c", str(config), body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "    1. soft-fail (rule, action rewrite, body keep)",
        "  1. soft-fail (rule): MATCH -> status 429 (range), action rewrite",
        "       all: held",
        "         /result equals: false -> found false -> held",
        "         any: held",
        "           /data nonempty: false -> found [1] -> does not hold",
        '           /errors/*/code in: ["E1", "E2"] -> found "1500", "E2" -> held',
        "         not: held",
        "           /warning exists: true -> found nothing (missing) -> does not hold",
        '       status: from /errors/0/code = "1500" -> ranges -> 429',
        "  2. error-envelope (preset): not tried (a rule above matched)",
    )
    body = {"result": False, "data": [], "warning": "partial"}
    code, out, _ = run("-c", str(config), body_file(tmp_path, body))
    assert code == 0
    assert_lines(
        out,
        "inspection: clean (buffered)",
        "  1. soft-fail (rule): no match",
        "       why: the `when` condition does not hold",
        "       all: does not hold",
        "         /result equals: false -> found false -> held",
        "         any: held",
        "           /data nonempty: false -> found [] -> held",
        '           /errors/*/code in: ["E1", "E2"] -> found nothing (missing) -> does not hold',
        "         not: does not hold",
        '           /warning exists: true -> found "partial" -> held',
        "  2. error-envelope (preset): no match",
    )


OVERRIDE_CONFIG = """\
version: 1
action: flag
upstreams:
  app: {url: http://127.0.0.1:3000}
routes:
  - name: payments
    match: {path_prefix: /payments}
    upstream: app
    rules: [error-envelope]
    action: rewrite
  - name: rest
    upstream: app
    rules: [error-envelope]
"""


def test_route_pick_and_action_override(tmp_path: Path) -> None:
    config = tmp_path / "override.yaml"
    config.write_text(OVERRIDE_CONFIG)
    body = body_file(tmp_path, {"error": "card expired"})
    code, out, _ = run("-c", str(config), "--route", "rest", body)
    assert code == 0
    assert_lines(
        out,
        "route: rest",
        "  action override: flag (from the top-level `action`; applies to every rule)",
        "  1. error-envelope (preset): MATCH -> status 401 (keyword), action flag",
        "       keyword 'expired' (row: unauthenticated / unauthorized / not authenticated / "
        "authentication / invalid token / api key / credentials / expired -> 401)",
        "verdict: rule error-envelope, action flag, mapped status 401",
        "  delivered status: 200 (the upstream sent 200)",
        "    Tunnelguard-Status: 401",
        '  tunnelguard_requests_total{route="rest",method="GET",code="200",class="4xx",'
        'source="flagged"}',
    )
    code, out, _ = run("-c", str(config), body)
    assert code == 0
    assert_lines(
        out,
        "route: payments (the first route)",
        "  action override: rewrite (from the route's `action`; applies to every rule)",
        "  delivered status: 401 (the upstream sent 200)",
    )


def test_status_500_is_not_inspected(tmp_path: Path) -> None:
    body = body_file(tmp_path, {"ok": False, "error": "invalid_auth"})
    code, out, _ = run("-c", "config/default.yaml", "--status", "500", body)
    assert code == 0
    assert_lines(
        out,
        "response: 500, Content-Type: application/json, 38 bytes",
        "inspection: not inspected (streamed through): "
        "status 500 is not in inspect.statuses (200-299)",
        "verdict: none; the response is delivered as the upstream sent it",
        "  delivered status: 500 (the upstream sent 500)",
        '  tunnelguard_requests_total{route="default",method="GET",code="500",class="5xx",'
        'source="upstream"}',
    )
    assert "rules on the" not in out and "inspections_total" not in out


def test_503_passed_through_gets_retry_after(tmp_path: Path) -> None:
    code, out, _ = run("-c", "config/default.yaml", "--status", "503", body_file(tmp_path, {}))
    assert code == 0
    assert_lines(
        out,
        "    Retry-After: 5",
        "  Retry-After: 5 (the upstream's retry_after setting: a 429 or 503 always carries one)",
    )


def test_html_is_skipped_by_content_type(tmp_path: Path) -> None:
    body = body_file(tmp_path, b"<html>oops</html>", "page.html")
    code, out, _ = run("-c", "config/default.yaml", "--content-type", "text/html", body)
    assert code == 0
    assert_lines(
        out,
        "response: 200, Content-Type: text/html, 17 bytes",
        "inspection: skipped_content_type (not buffered, streamed through)",
        "  media type text/html is not in inspect.content_types "
        "(application/json, application/*+json)",
        "verdict: none; the response is delivered as the upstream sent it",
        '  tunnelguard_inspections_total{route="default",result="skipped_content_type"}',
    )
    code, out, _ = run("-c", "config/default.yaml", "--content-type", "", body)
    assert code == 0
    assert_lines(
        out,
        "response: 200, Content-Type: (none), 17 bytes",
        "  media type (none) is not in inspect.content_types "
        "(application/json, application/*+json)",
    )


def test_invalid_json_is_explained_not_an_error(tmp_path: Path) -> None:
    code, out, _ = run("-c", "config/default.yaml", body_file(tmp_path, b'{"ok": false,'))
    assert code == 0
    assert_lines(
        out,
        "inspection: invalid_json (buffered)",
        "  the body is not valid JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 14 (char 13))",
        '  tunnelguard_inspections_total{route="default",result="invalid_json"}',
    )


def test_gzip_body_with_content_encoding_header(tmp_path: Path) -> None:
    raw = gzip.compress(json.dumps({"ok": False, "error": "missing_scope"}).encode())
    body = body_file(tmp_path, raw, "body.json.gz")
    code, out, _ = run(
        "-c", "config/default.yaml", "--header", "Content-Encoding: gzip", "--header",
        "ETag: \"v1\"", body,
    )  # fmt: skip
    assert code == 0
    assert_lines(
        out,
        f"response: 200, Content-Type: application/json, Content-Encoding: gzip, {len(raw)} bytes",
        "inspection: matched (buffered)",
        "  3. slack (preset): MATCH -> status 403 (table), action rewrite",
        "  delivered status: 403 (the upstream sent 200)",
        "  headers removed:",
        '    ETag: "v1"',
        "  body: the upstream's bytes, unchanged",
    )
    code, out, _ = run(
        "-c",
        "config/default.yaml",
        "--header",
        "Content-Encoding: gzip",
        body_file(tmp_path, b"{}"),
    )
    assert code == 0
    assert_lines(
        out, "inspection: skipped_encoding (buffered)", "  the body is not valid gzip data"
    )
    code, out, _ = run("-c", "config/default.yaml", "--header", "Content-Encoding: compress", body)
    assert_lines(
        out,
        "inspection: skipped_encoding (not buffered, streamed through)",
        "  content coding 'compress' is not decoded for inspection",
    )


def test_body_from_stdin() -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "header not found"}}
    )
    code, out, _ = run("-c", "config/examples/jsonrpc.yaml", "-", stdin=body.encode())
    assert code == 0
    assert_lines(
        out,
        "route: ethereum (the first route)",
        "  1. jsonrpc (preset): MATCH -> status 404 (keyword), action rewrite",
        "       why: code -32000 is not standard; /error/message classified by keyword",
        '       /jsonrpc: "2.0"',
        "       /error/code: -32000",
        '       /error/message: "header not found"',
        "       keyword 'not found' (row: not found / no such / does not exist -> 404)",
    )


def test_jsonrpc_route_override_and_partial_batch() -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "result": "0x1"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32005, "message": "request rate exceeded"}},
    ]
    code, out, _ = run("-c", "config/examples/jsonrpc.yaml", "-", stdin=json.dumps(batch).encode())
    assert code == 0
    assert_lines(
        out,
        "  1 of 2 elements of the batch match: flag only, Tunnelguard-Status from element 1",
        "batch: a top-level array of 2; each element is judged alone",
        "  element 0: no match",
        "    1. jsonrpc (preset): no match",
        "         why: /error is missing, not an object",
        "  element 1: jsonrpc -> 429, rewrite",
        "    1. jsonrpc (preset): MATCH -> status 429 (override), action rewrite",
        "         why: route override for code -32005",
        "  batch rule: 1 of 2 elements of the batch match: flag only, "
        "Tunnelguard-Status from element 1",
        "verdict: rule jsonrpc, action flag, mapped status 429",
        "  only some batch elements matched: flagged, never rewritten",
        "    Tunnelguard-Status: 429",
    )
    both = [batch[1], {"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "no"}}]
    code, out, _ = run("-c", "config/examples/jsonrpc.yaml", "-", stdin=json.dumps(both).encode())
    assert_lines(
        out,
        "  batch rule: all 2 elements of the batch match: the first element's verdict applies",
        "verdict: rule jsonrpc, action rewrite, mapped status 429",
        "  delivered status: 429 (the upstream sent 200)",
    )


def test_json_output_has_stable_keys(tmp_path: Path) -> None:
    body = body_file(tmp_path, {"status": "error", "code": "NO_SUCH_USER"})
    code, out, _ = run("-c", "config/examples/error-envelope.yaml", "--json", body)
    assert code == 0
    doc = json.loads(out)
    assert list(doc) == [
        "config", "route", "response", "inspection", "document", "rules", "batch", "verdict",
        "delivered", "metrics",
    ]  # fmt: skip
    assert doc["route"] == {
        "name": "app",
        "rules": [
            {"name": "my-envelope", "kind": "rule", "action": "rewrite"},
            {"name": "error-envelope", "kind": "preset", "action": None},
        ],
        "action_override": None,
        "action_override_from": None,
    }
    assert doc["response"]["headers"] == [["Content-Type", "application/json"]]
    assert doc["inspection"] == {
        "inspected": True, "buffered": True, "result": "matched",
        "reason": "rule 'my-envelope' matched", "stream": None, "first_event": None,
    }  # fmt: skip
    first, second = doc["rules"]
    assert list(first) == [
        "rule", "kind", "outcome", "reason", "status", "action", "step", "facts", "keyword",
        "when", "status_from",
    ]  # fmt: skip
    assert (first["outcome"], first["status"], first["step"]) == ("matched", 404, "map")
    assert first["when"]["op"] == "all" and first["when"]["held"] is True
    assert first["when"]["children"][0] == {
        "op": "equals", "held": True, "path": "/status", "expected": "error",
        "found": ["error"], "found_count": 1, "children": [],
    }  # fmt: skip
    assert first["status_from"]["found"] == {"value": "NO_SUCH_USER", "missing": False}
    assert first["status_from"]["retry_found"] == {"value": None, "missing": True}
    assert second["outcome"] == "not_tried"
    assert doc["verdict"] == {
        "rule": "my-envelope", "action": "rewrite", "status": 404, "body": "problem",
        "message": "NO_SUCH_USER", "partial_batch": False,
    }  # fmt: skip
    delivered = doc["delivered"]
    assert delivered["status"] == 404 and delivered["body"] == "problem"
    assert delivered["problem"]["upstream"] == {"status": "error", "code": "NO_SUCH_USER"}
    assert ["Tunnelguard-Rule", "my-envelope"] in delivered["headers_added"]
    assert delivered["headers_removed"] == [["Content-Type", "application/json"]]
    assert delivered["retry_after"] is None
    assert doc["metrics"] == [
        {
            "name": "tunnelguard_requests_total",
            "labels": {"route": "app", "method": "GET", "code": "404", "class": "4xx",
                       "source": "rewritten"},
        },
        {
            "name": "tunnelguard_tunnelled_errors_total",
            "labels": {"route": "app", "rule": "my-envelope", "action": "rewrite", "status": "404"},
        },
        {"name": "tunnelguard_inspections_total", "labels": {"route": "app", "result": "matched"}},
    ]  # fmt: skip


def test_json_output_for_a_batch_and_for_facts(tmp_path: Path) -> None:
    batch = [{"jsonrpc": "2.0", "id": 1, "result": 1}]
    code, out, _ = run(
        "-c", "config/examples/jsonrpc.yaml", "--json", "-", stdin=json.dumps(batch).encode()
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["document"] == "array" and doc["rules"] is None and doc["verdict"] is None
    assert doc["batch"]["total"] == 1 and doc["batch"]["matched"] == 0
    element = doc["batch"]["elements"][0]
    assert (element["index"], element["rule"], element["status"]) == (0, None, None)
    assert element["rules"][0]["facts"] == [
        {"name": "/jsonrpc", "value": "2.0", "missing": False},
        {"name": "/error/code", "value": None, "missing": True},
        {"name": "/error/message", "value": None, "missing": True},
    ]


def test_no_body_is_empty_and_clean() -> None:
    code, out, _ = run("-c", "config/default.yaml")
    assert code == 0
    assert_lines(out, "inspection: clean (buffered)", "  the body is empty: nothing to inspect")


SMALL_CONFIG = """\
version: 1
upstreams:
  app: {url: http://127.0.0.1:3000}
routes:
  - {name: api, upstream: app, match: {path_prefix: /api}, rules: [slack]}
  - {name: plain, upstream: app}
inspect: {max_body_bytes: 120, max_decoded_bytes: 100}
"""


def test_size_limits_no_rules_and_bodiless_statuses(tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_CONFIG)
    big = {"ok": False, "error": "invalid_auth", "pad": "x" * 100}
    code, out, _ = run("-c", str(config), body_file(tmp_path, big))
    assert code == 0
    assert_lines(
        out,
        "inspection: skipped_size (not buffered, streamed through)",
        "  the body is 149 bytes, more than inspect.max_body_bytes (120)",
        '  tunnelguard_inspections_total{route="api",result="skipped_size"}',
    )
    bomb = body_file(tmp_path, gzip.compress(json.dumps(big).encode()), "bomb.gz")
    code, out, _ = run("-c", str(config), "--header", "Content-Encoding: gzip", bomb)
    assert_lines(
        out,
        "inspection: skipped_size (buffered)",
        "  the body decodes to more than inspect.max_decoded_bytes (100)",
    )
    code, out, _ = run("-c", str(config), "--route", "plain", body_file(tmp_path, big))
    assert_lines(
        out,
        "route: plain",
        "  rules: none (nothing is inspected)",
        "inspection: not inspected (streamed through): the route has no rules",
    )
    code, out, _ = run("-c", "config/default.yaml", "--status", "204")
    assert_lines(
        out,
        "inspection: not inspected (streamed through): a 204 response has no body (RFC 9110 6.4.1)",
    )


def test_deeply_nested_body_is_shown_clipped(tmp_path: Path) -> None:
    depth = 1000
    body = body_file(tmp_path, b'{"ok": false, "error": ' + b"[" * depth + b"]" * depth + b"}")
    code, out, err = run("-c", "config/default.yaml", body)
    assert (code, err) == (0, "")
    assert_lines(
        out,
        "  3. slack (preset): MATCH -> status 502 (fallback), action rewrite",
        '       /error: [[[[[[[["..."]]]]]]]]',
    )
    code, out, err = run("-c", "config/default.yaml", "--json", body)
    assert (code, err) == (0, "")
    fact = json.loads(out)["rules"][2]["facts"][1]
    value = fact["value"]
    for _ in range(64):
        value = value[0]
    assert value == "..."


# -- usage errors: exit 2 ----------------------------------------------------------------------


def test_unknown_route_lists_routes() -> None:
    code, out, err = run("-c", "config/default.yaml", "--route", "nope")
    assert (code, out) == (2, "")
    assert err == "tunnelguard explain: unknown route 'nope'; routes: default\n"


def test_invalid_config_prints_errors_like_check(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("version: 1\nupstreams:\n  app: {url: http://127.0.0.1:3000}\nroutes:\n"
                      "  - {name: a, upstream: ap, rules: [slak]}\n")  # fmt: skip
    code, out, err = run("-c", str(config))
    assert (code, out) == (2, "")
    assert f"{config}:5:25: routes[0].upstream: unknown upstream 'ap'; defined: app" in err
    assert f"{config}:5:37: routes[0].rules[0]: unknown rule or preset 'slak'" in err
    code, _, err = run("-c", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read file" in err


def test_unreadable_body_file(tmp_path: Path) -> None:
    code, out, err = run("-c", "config/default.yaml", str(tmp_path / "nope.json"))
    assert (code, out) == (2, "")
    assert err.startswith(f"tunnelguard explain: cannot read body file {tmp_path / 'nope.json'}:")


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "abc"],
        ["--status", "99"],
        ["--header", "no colon"],
        ["--content-type", "text/html", "--header", "content-type: text/plain"],
        [],  # no --config
    ],
)
def test_bad_flags_are_usage_errors(args: list[str]) -> None:
    config = [] if not args else ["-c", "config/default.yaml"]
    code, out, err = run(*config, *args)
    assert (code, out) == (2, "") and err


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[p.name for p in ALL_CONFIGS])
def test_every_shipped_config_explains_every_route(path: Path) -> None:
    for route in load_file(path).routes:
        code, out, _ = run("-c", str(path), "--route", route.name, "--json", "-", stdin=b"{}")
        assert code == 0 and json.loads(out)["route"]["name"] == route.name


# -- event streams (SPEC 5.1): the verdict on the first event --------------------------------

LLM = "config/examples/llm-streams.yaml"
OVERLOADED = (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "Overloaded"}}\n\ndata: [DONE]\n\n'
)


def test_a_stream_body_is_explained_by_its_first_event(tmp_path: Path) -> None:
    body = body_file(tmp_path, OVERLOADED, "stream.sse")
    code, out, err = run("-c", LLM, "--content-type", "text/event-stream", body)
    assert (code, err) == (0, "")
    assert_lines(
        out,
        "inspection: matched (sse event stream, held until its first event)",
        "  first event: 'error', 81 bytes of data, complete at byte 102 of 116; "
        "the rest follows byte for byte",
        "  rule 'error-envelope' matched",
        "rules on the first event's object:",
        "verdict: rule error-envelope, action rewrite, mapped status 503",
        "  delivered status: 503 (the upstream sent 200)",
        "  body: the upstream's bytes, unchanged",
    )
    code, out, _ = run("-c", LLM, "--content-type", "text/event-stream", "--json", body)
    doc = json.loads(out)
    assert doc["inspection"]["stream"] == "sse"
    assert doc["inspection"]["first_event"] == {"name": "error", "data_bytes": 81, "end": 102}
    assert doc["verdict"]["status"] == 503 and doc["delivered"]["retry_after"] == "10"


@pytest.mark.parametrize(
    ("ctype", "body", "lines"),
    [
        (
            "text/event-stream",
            b"event: error\ndata: Service busy\n\n",
            [
                "  its data is not JSON, and it is an SSE `error` event: the built-in rule "
                "stream-error (keyword 'busy' in its message -> 503)",
                "verdict: rule stream-error, action rewrite, mapped status 503",
            ],
        ),
        (
            "text/event-stream",
            b'event: error\ndata: {"detail": "x"}\n\n',
            [
                "  no rule matched, and it is an SSE `error` event: the built-in rule "
                "stream-error (no keyword in its message -> 502)",
                "verdict: rule stream-error, action rewrite, mapped status 502",
            ],
        ),
        (
            "application/x-ndjson",
            b'{"error": "quota exceeded"}\n{"n": 1}\n',
            [
                "inspection: matched (ndjson event stream, held until its first event)",
                "  first event: (an NDJSON line), 27 bytes of data, complete at byte 28 of 37; "
                "the rest follows byte for byte",
                "verdict: rule error-envelope, action rewrite, mapped status 429",
            ],
        ),
        (
            "text/event-stream",
            b"data: " + b"x" * 20000 + b"\n\n",
            [
                "inspection: skipped_size (sse event stream, held until its first event)",
                "  no complete first event within inspect.first_event_bytes (16384): "
                "the stream goes on unjudged",
                "verdict: none; the response is delivered as the upstream sent it",
            ],
        ),
        (
            "text/event-stream",
            b"data: [DONE]\n\n",
            [
                "inspection: invalid_json (sse event stream, held until its first event)",
                "  the first event's data is not JSON",
            ],
        ),
    ],
)
def test_stream_verdicts(tmp_path: Path, ctype: str, body: bytes, lines: list[str]) -> None:
    code, out, err = run("-c", LLM, "--content-type", ctype, body_file(tmp_path, body, "s"))
    assert (code, err) == (0, "")
    assert_lines(out, *lines)


def test_a_compressed_stream_is_not_held(tmp_path: Path) -> None:
    body = body_file(tmp_path, gzip.compress(OVERLOADED), "s.gz")
    code, out, _ = run(
        "-c", LLM, "--content-type", "text/event-stream", "--header", "Content-Encoding: gzip", body
    )
    assert code == 0
    assert_lines(
        out,
        "inspection: skipped_encoding (sse event stream, not held, streamed through)",
        "  a compressed event stream is not held: it streams through",
        "verdict: none; the response is delivered as the upstream sent it",
    )
