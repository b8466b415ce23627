"""Tables for proxy.rules.presets: the keyword classifier and the four presets of SPEC 4.4.

Bodies are written as the real APIs send them (Slack Web API, Apollo Server, Hasura, Shopify,
GitHub GraphQL, Ethereum EIP-1474 nodes, Solana RPC, Stripe, JSend) and parsed as the proxy
parses them, so the presets see exactly what they see in production: with orjson (bodies under
2 KiB) and as simdjson views (larger ones); `_evaluate` checks both give the same hit.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest

from proxy.config.model import PRESET_NAMES
from proxy.rules.presets import (
    ENVELOPE_STATUSES,
    FALLBACK_STATUS,
    GRAPHQL_STATUS,
    JSONRPC_SERVER_ERROR_MAX,
    JSONRPC_SERVER_ERROR_MIN,
    JSONRPC_STATUS,
    SLACK_STATUS,
    Hit,
    Preset,
    build_preset,
    envelope_message,
    graphql_foreign_key,
    keyword_row,
    keyword_status,
    resource_key,
)
from proxy.wire import jsondoc
from proxy.wire.pointer import compile_pointer

GQL = "application/graphql-response+json"
JSON = "application/json"


def _parse(body: str) -> object:
    return orjson.loads(body)


def _evaluate(preset: Preset, body: str, media_type: str) -> Hit | None:
    """The preset's hit on `body` as orjson builds it, checked to be the hit on a simdjson
    view of it (proxy.wire.jsondoc), the form inspection reads large bodies in."""
    hit = preset.evaluate(_parse(body), media_type)
    assert preset.evaluate(jsondoc.parse(body.encode()), media_type) == hit
    return hit


# --- the keyword classifier ---------------------------------------------------------------

CLASSIFIER_ROWS = [
    # row 1: 504
    ("upstream timeout", 504),
    ("Request Timeout", 504),
    ("The operation timed out", 504),
    ("DEADLINE_EXCEEDED", 504),
    ("deadline-exceeded", 504),
    # row 2: 503
    ("Service Unavailable", 503),
    ("UNAVAILABLE", 503),
    ("Server overloaded, please retry", 503),
    ("Server is busy", 503),
    ("Down for maintenance", 503),
    ("Please try again later", 503),
    # row 3: 429
    ("Rate limit exceeded", 429),
    ("RATE_LIMITED", 429),
    ("rate-limited", 429),
    ("ratelimited", 429),
    ("Too Many Requests", 429),
    ("Throttled", 429),
    ("request throttling in effect", 429),
    ("Limit exceeded", 429),
    ("QuotaExceeded", 429),
    # row 4: 401
    ("UNAUTHENTICATED", 401),
    ("Unauthorized", 401),
    ("User is not authenticated", 401),
    ("Authentication failed", 401),
    ("invalid_token", 401),
    ("Invalid API key provided", 401),
    ("Bad credentials", 401),
    ("Token has expired", 401),
    # row 5: 403
    ("Forbidden", 403),
    ("You do not have permission to do that", 403),
    ("Access denied", 403),
    ("Operation not allowed", 403),
    # row 6: 404
    ("Not Found", 404),
    ("Not-Found", 404),
    ("user_not_found", 404),
    ("No such file or directory", 404),
    ("The resource does not exist", 404),
    # row 7: 400
    ("Invalid email address", 400),
    ("Bad Request", 400),
    ("Malformed JSON", 400),
    ("missing required field: name", 400),
    # no row
    ("", None),
    ("ok", None),
    ("Something went wrong", None),
]


@pytest.mark.parametrize(("message", "expected"), CLASSIFIER_ROWS)
def test_classifier_rows(message: str, expected: int | None) -> None:
    assert keyword_status(message) == expected


CLASSIFIER_ORDER = [
    # The timeout row comes first, so a timeout that left a service unavailable is a 504.
    ("Request timed out: service unavailable", 504),
    ("Service unavailable: rate limit reached", 503),
    ("Quota exceeded for API key", 429),
    # "invalid token", "credentials" and "expired" (401) come before "invalid" (400).
    ("Invalid token", 401),
    ("Invalid credentials", 401),
    ("invalid: session expired", 401),
    # "permission" (403) comes before "missing" (400).
    ("Missing permission: repo", 403),
    ("Permission denied: resource not found", 403),
    # "not found" (404) comes before "invalid" (400).
    ("Invalid request: customer not found", 404),
    # Keywords match inside identifiers once `_` reads as a space.
    ("ERR_SERVER_BUSY_RETRY", 503),
    # Surprising: plain substring search, so "quotation" contains "quota" (429), and that row
    # comes before "invalid" (400).
    ("Invalid quotation mark in JSON", 429),
    # Surprising: a declined expired card reads as an authentication problem.
    ("expired_card", 401),
    # Surprising: "not authorized" matches no 401 keyword ("unauthorized" is one word),
    # and no later row either.
    ("You are not authorized", None),
    # Surprising: "time-out" reads "time out", which is not the keyword "timeout".
    ("Gateway time-out", None),
    # Surprising: "invalidated" contains "invalid".
    ("Cache invalidated", 400),
]


@pytest.mark.parametrize(("message", "expected"), CLASSIFIER_ORDER)
def test_classifier_row_order(message: str, expected: int | None) -> None:
    assert keyword_status(message) == expected


# --- slack --------------------------------------------------------------------------------

SLACK_ERRORS = [
    ('{"ok": false, "error": "invalid_auth"}', 401, "invalid_auth"),
    ('{"ok": false, "error": "not_authed"}', 401, "not_authed"),
    ('{"ok": false, "error": "token_revoked"}', 401, "token_revoked"),
    ('{"ok": false, "error": "account_inactive"}', 401, "account_inactive"),
    (
        '{"ok": false, "error": "missing_scope", "needed": "chat:write",'
        ' "provided": "channels:read,users:read"}',
        403,
        "missing_scope",
    ),
    ('{"ok": false, "error": "not_allowed_token_type"}', 403, "not_allowed_token_type"),
    ('{"ok": false, "error": "channel_not_found"}', 404, "channel_not_found"),
    ('{"ok": false, "error": "user_not_found"}', 404, "user_not_found"),
    (
        '{"ok": false, "error": "invalid_arguments", "response_metadata":'
        ' {"messages": ["[ERROR] missing required field: channel"]}}',
        400,
        "invalid_arguments",
    ),
    ('{"ok": false, "error": "invalid_arg_name"}', 400, "invalid_arg_name"),
    ('{"ok": false, "error": "ratelimited"}', 429, "ratelimited"),
    ('{"ok": false, "error": "service_unavailable"}', 503, "service_unavailable"),
    ('{"ok": false, "error": "internal_error"}', 500, "internal_error"),
    ('{"ok": false, "error": "fatal_error"}', 500, "fatal_error"),
    # Unknown codes are 502: Slack's vocabulary is closed, the classifier is not used.
    ('{"ok": false, "error": "is_archived"}', 502, "is_archived"),
    ('{"ok": false, "error": "request_timeout"}', 502, "request_timeout"),
    # The table is case-sensitive, like Slack's codes.
    ('{"ok": false, "error": "INVALID_AUTH"}', 502, "INVALID_AUTH"),
    ('{"ok": false}', 502, None),
    ('{"ok": false, "error": null}', 502, None),
    ('{"ok": false, "error": 42}', 502, None),
    ('{"ok": false, "error": ["invalid_auth"]}', 502, None),
]


@pytest.mark.parametrize(("body", "status", "message"), SLACK_ERRORS)
def test_slack_errors(body: str, status: int, message: str | None) -> None:
    assert _evaluate(build_preset("slack"), body, JSON) == Hit(status, False, message)


SLACK_CLEAN = [
    '{"ok": true, "channel": "C123ABC456", "ts": "1503435956.000247",'
    ' "message": {"text": "Here\'s a message for you", "type": "message",'
    ' "bot_id": "B123ABC456", "ts": "1503435956.000247"}}',
    '{"ok": true, "warning": "missing_charset",'
    ' "response_metadata": {"warnings": ["missing_charset"]}}',
    # Only JSON false counts.
    '{"ok": "false", "error": "invalid_auth"}',
    '{"ok": 0, "error": "invalid_auth"}',
    '{"ok": null, "error": "invalid_auth"}',
    '{"error": "invalid_auth"}',
]


@pytest.mark.parametrize("body", SLACK_CLEAN)
def test_slack_clean(body: str) -> None:
    assert _evaluate(build_preset("slack"), body, JSON) is None


# --- graphql ------------------------------------------------------------------------------

APOLLO_UNAUTHENTICATED = """{
  "errors": [{"message": "You must be logged in to query this schema",
              "locations": [{"line": 2, "column": 3}], "path": ["me"],
              "extensions": {"code": "UNAUTHENTICATED"}}],
  "data": null}"""
APOLLO_BAD_USER_INPUT = """{
  "errors": [{"message": "Variable \\"$id\\" got invalid value \\"abc\\"; Int cannot represent non-integer value: \\"abc\\"",
              "locations": [{"line": 1, "column": 13}],
              "extensions": {"code": "BAD_USER_INPUT"}}]}"""  # noqa: E501
APOLLO_VALIDATION = """{
  "errors": [{"message": "Cannot query field \\"nme\\" on type \\"User\\". Did you mean \\"name\\"?",
              "locations": [{"line": 1, "column": 10}],
              "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}"""  # noqa: E501
APOLLO_PARSE = """{
  "errors": [{"message": "Syntax Error: Expected Name, found <EOF>.",
              "locations": [{"line": 1, "column": 8}],
              "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]}"""
APOLLO_INTERNAL = """{
  "errors": [{"message": "Cannot read properties of undefined (reading 'id')",
              "locations": [{"line": 2, "column": 3}], "path": ["user"],
              "extensions": {"code": "INTERNAL_SERVER_ERROR",
                "stacktrace": ["TypeError: Cannot read properties of undefined (reading 'id')",
                               "    at Object.user (/app/src/resolvers.js:12:20)"]}}],
  "data": null}"""
APOLLO_INTERNAL_PARTIAL = """{
  "errors": [{"message": "Cannot read properties of undefined (reading 'id')",
              "locations": [{"line": 3, "column": 5}], "path": ["user", "avatar"],
              "extensions": {"code": "INTERNAL_SERVER_ERROR",
                "stacktrace": ["TypeError: Cannot read properties of undefined (reading 'id')",
                               "    at Object.avatar (/app/src/resolvers.js:30:11)"]}}],
  "data": {"user": {"name": "Ada", "avatar": null}}}"""
HASURA_VALIDATION = """{
  "errors": [{"extensions": {"path": "$.selectionSet.users.selectionSet.nme",
                             "code": "validation-failed"},
              "message": "field 'nme' not found in type: 'users'"}]}"""
HASURA_ACCESS_DENIED = """{
  "errors": [{"extensions": {"path": "$", "code": "access-denied"},
              "message": "Authentication hook unauthorized this request"}]}"""
HASURA_INVALID_JWT = """{
  "errors": [{"extensions": {"path": "$", "code": "invalid-jwt"},
              "message": "Could not verify JWT: JWTExpired"}]}"""
SHOPIFY_THROTTLED = """{
  "errors": [{"message": "Throttled",
              "extensions": {"code": "THROTTLED",
                             "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
  "extensions": {"cost": {"requestedQueryCost": 752, "actualQueryCost": null,
    "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1,
                       "restoreRate": 100.0}}}}"""
SHOPIFY_ACCESS_DENIED = """{
  "errors": [{"message": "Access denied for orders field. Required access: `read_orders` access scope.",
              "locations": [{"line": 2, "column": 3}], "path": ["orders"],
              "extensions": {"code": "ACCESS_DENIED",
                             "documentation": "https://shopify.dev/api/usage/access-scopes",
                             "requiredAccess": "`read_orders` access scope."}}],
  "data": null}"""  # noqa: E501
GITHUB_NOT_FOUND_PARTIAL = """{
  "data": {"repository": null},
  "errors": [{"type": "NOT_FOUND", "path": ["repository"],
              "locations": [{"line": 1, "column": 3}],
              "message": "Could not resolve to a Repository with the name 'octocat/nope'."}]}"""
GITHUB_RATE_LIMITED = """{
  "errors": [{"type": "RATE_LIMITED",
              "message": "API rate limit exceeded for user ID 1."}]}"""

GRAPHQL_ERRORS = [
    # (id, body, media type, expected hit)
    (
        "apollo-unauthenticated",
        APOLLO_UNAUTHENTICATED,
        GQL,
        Hit(401, False, "You must be logged in to query this schema"),
    ),
    (
        "apollo-bad-user-input",
        APOLLO_BAD_USER_INPUT,
        GQL,
        Hit(
            400,
            False,
            'Variable "$id" got invalid value "abc"; Int cannot represent non-integer value: "abc"',
        ),
    ),
    (
        "apollo-validation",
        APOLLO_VALIDATION,
        GQL,
        Hit(400, False, 'Cannot query field "nme" on type "User". Did you mean "name"?'),
    ),
    (
        "apollo-parse",
        APOLLO_PARSE,
        GQL,
        Hit(400, False, "Syntax Error: Expected Name, found <EOF>."),
    ),
    (
        "apollo-internal",
        APOLLO_INTERNAL,
        GQL,
        Hit(500, False, "Cannot read properties of undefined (reading 'id')"),
    ),
    # Partial result: data is non-null, so the reply is only flagged.
    (
        "apollo-internal-partial",
        APOLLO_INTERNAL_PARTIAL,
        GQL,
        Hit(500, True, "Cannot read properties of undefined (reading 'id')"),
    ),
    (
        "hasura-validation",
        HASURA_VALIDATION,
        GQL,
        Hit(400, False, "field 'nme' not found in type: 'users'"),
    ),
    # Hasura answers application/json: a legacy reply, flagged only.
    (
        "hasura-validation-legacy",
        HASURA_VALIDATION,
        JSON,
        Hit(400, True, "field 'nme' not found in type: 'users'"),
    ),
    (
        "hasura-access-denied",
        HASURA_ACCESS_DENIED,
        GQL,
        Hit(401, False, "Authentication hook unauthorized this request"),
    ),
    (
        "hasura-invalid-jwt",
        HASURA_INVALID_JWT,
        GQL,
        Hit(401, False, "Could not verify JWT: JWTExpired"),
    ),
    ("shopify-throttled", SHOPIFY_THROTTLED, GQL, Hit(429, False, "Throttled")),
    # ACCESS_DENIED is not a table key ("access-denied" is, case-sensitive), and the graphql
    # preset does not use the keyword classifier: 502.
    (
        "shopify-access-denied",
        SHOPIFY_ACCESS_DENIED,
        GQL,
        Hit(
            502,
            False,
            "Access denied for orders field. Required access: `read_orders` access scope.",
        ),
    ),
    # `type` is used when there is no extensions.code; data is non-null -> flag only.
    (
        "github-not-found-partial",
        GITHUB_NOT_FOUND_PARTIAL,
        JSON,
        Hit(404, True, "Could not resolve to a Repository with the name 'octocat/nope'."),
    ),
    (
        "github-not-found-partial-gql",
        GITHUB_NOT_FOUND_PARTIAL,
        GQL,
        Hit(404, True, "Could not resolve to a Repository with the name 'octocat/nope'."),
    ),
    # Legacy application/json with no data at all: still flag only.
    (
        "github-rate-limited-legacy",
        GITHUB_RATE_LIMITED,
        JSON,
        Hit(429, True, "API rate limit exceeded for user ID 1."),
    ),
    (
        "legacy-null-data",
        '{"errors": [{"message": "boom", "extensions": {"code": "FORBIDDEN"}}], "data": null}',
        JSON,
        Hit(403, True, "boom"),
    ),
    (
        "gateway-timeout",
        '{"errors": [{"message": "upstream subgraph timed out",'
        ' "extensions": {"code": "GATEWAY_TIMEOUT"}}]}',
        GQL,
        Hit(504, False, "upstream subgraph timed out"),
    ),
    (
        "service-unavailable",
        '{"errors": [{"message": "down", "extensions": {"code": "SERVICE_UNAVAILABLE"}}]}',
        GQL,
        Hit(503, False, "down"),
    ),
    # extensions.code wins over type.
    (
        "code-over-type",
        '{"errors": [{"message": "m", "type": "NOT_FOUND", "extensions": {"code": "FORBIDDEN"}}]}',
        GQL,
        Hit(403, False, "m"),
    ),
    # A non-string extensions.code falls back to type.
    (
        "non-string-code-uses-type",
        '{"errors": [{"message": "m", "type": "NOT_FOUND", "extensions": {"code": 404}}]}',
        GQL,
        Hit(404, False, "m"),
    ),
    # No message: the code stands in for it.
    (
        "message-falls-back-to-code",
        '{"errors": [{"extensions": {"code": "UNAUTHENTICATED"}}]}',
        GQL,
        Hit(401, False, "UNAUTHENTICATED"),
    ),
    ("no-code-no-message", '{"errors": [{"message": 7}]}', GQL, Hit(502, False, None)),
    # Only errors[0] decides.
    (
        "first-error-decides",
        '{"errors": [{"message": "a", "extensions": {"code": "BAD_USER_INPUT"}},'
        ' {"message": "b", "extensions": {"code": "UNAUTHENTICATED"}}]}',
        GQL,
        Hit(400, False, "a"),
    ),
    # Decision: a non-empty `errors` whose first element is not an object is still an error
    # the table cannot place: 502.
    ("errors-of-scalars", '{"errors": [1]}', GQL, Hit(502, False, None)),
    ("errors-of-scalars-legacy", '{"errors": ["boom"]}', JSON, Hit(502, True, None)),
]


@pytest.mark.parametrize(
    ("body", "media_type", "expected"),
    [case[1:] for case in GRAPHQL_ERRORS],
    ids=[case[0] for case in GRAPHQL_ERRORS],
)
def test_graphql_errors(body: str, media_type: str, expected: Hit) -> None:
    assert _evaluate(build_preset("graphql"), body, media_type) == expected


GRAPHQL_CLEAN = [
    '{"data": {"viewer": {"login": "octocat", "name": "The Octocat"}}}',
    '{"data": {"user": null}}',
    '{"errors": [], "data": {"a": 1}}',
    '{"errors": []}',
    '{"errors": null, "data": null}',
    '{"errors": "boom"}',
    '{"errors": {"message": "not a list"}}',
    '{"data": null}',
]


@pytest.mark.parametrize("body", GRAPHQL_CLEAN)
@pytest.mark.parametrize("media_type", [GQL, JSON])
def test_graphql_clean(body: str, media_type: str) -> None:
    assert _evaluate(build_preset("graphql"), body, media_type) is None


# --- jsonrpc ------------------------------------------------------------------------------

JSONRPC_ERRORS = [
    # (id, body, expected status, expected message)
    # Ethereum (EIP-1474 codes, geth / Infura messages).
    # Surprising: -32000 is in the server-error range, but the classifier runs first and
    # "header not found" reads "not found" -> 404.
    (
        "eth-header-not-found",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "header not found"}}',
        404,
        "header not found",
    ),
    (
        "eth-execution-reverted",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": 3, "message": "execution reverted:'
        ' Ownable: caller is not the owner", "data": "0x08c379a0"}}',
        502,
        "execution reverted: Ownable: caller is not the owner",
    ),
    (
        "eth-nonce-too-low",
        '{"jsonrpc": "2.0", "id": 7, "error": {"code": -32000, "message": "nonce too low"}}',
        500,
        "nonce too low",
    ),
    (
        "eth-limit-exceeded",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}}',
        429,
        "limit exceeded",
    ),
    (
        "infura-daily-limit",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005,'
        ' "message": "daily request count exceeded, request rate limited",'
        ' "data": {"see": "https://infura.io/dashboard"}}}',
        429,
        "daily request count exceeded, request rate limited",
    ),
    (
        "eth-invalid-params",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "invalid argument 0:'
        ' hex string has length 3, want 40 for common.Address"}}',
        400,
        "invalid argument 0: hex string has length 3, want 40 for common.Address",
    ),
    (
        "eth-method-not-found",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32601,'
        ' "message": "the method eth_foo does not exist/is not available"}}',
        404,
        "the method eth_foo does not exist/is not available",
    ),
    (
        "eth-internal",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}}',
        500,
        "Internal error",
    ),
    (
        "parse-error",
        '{"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}',
        400,
        "Parse error",
    ),
    (
        "invalid-request",
        '{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid Request"}}',
        400,
        "Invalid Request",
    ),
    # Solana RPC.
    # Surprising: a failed simulation becomes 404, because "Blockhash not found" reads
    # "not found" and -32002 is not in the standard table.
    (
        "solana-simulation-failed",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32002, "message":'
        ' "Transaction simulation failed: Blockhash not found",'
        ' "data": {"accounts": null, "err": "BlockhashNotFound", "logs": [],'
        ' "unitsConsumed": 0}}}',
        404,
        "Transaction simulation failed: Blockhash not found",
    ),
    (
        "solana-node-behind",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005,'
        ' "message": "Node is behind by 42 slots", "data": {"numSlotsBehind": 42}}}',
        500,
        "Node is behind by 42 slots",
    ),
    # Surprising: a server-side ledger condition becomes 400, because the message contains
    # "missing" (the last classifier row) and the classifier runs before the -32099..-32000
    # range.
    (
        "solana-slot-skipped",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32007, "message":'
        ' "Slot 123 was skipped, or missing due to ledger jump to recent snapshot"}}',
        400,
        "Slot 123 was skipped, or missing due to ledger jump to recent snapshot",
    ),
    (
        "solana-429",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": 429,'
        ' "message": "Too many requests for a specific RPC call, contact your app developer'
        ' or support@rpcpool.com."}}',
        429,
        "Too many requests for a specific RPC call, contact your app developer"
        " or support@rpcpool.com.",
    ),
    # Range edges, with a message the classifier cannot place.
    (
        "range-low-edge",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32099, "message": "x"}}',
        500,
        "x",
    ),
    (
        "range-high-edge",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "x"}}',
        500,
        "x",
    ),
    (
        "below-range",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32100, "message": "x"}}',
        502,
        "x",
    ),
    (
        "above-range",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -31999, "message": "x"}}',
        502,
        "x",
    ),
    # The table wins over the classifier ("Rate limited" would be 429).
    (
        "table-beats-classifier",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "Rate limited"}}',
        500,
        "Rate limited",
    ),
    # No string message: the code's text stands in, and only the ranges decide.
    ("no-message", '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32010}}', 500, "-32010"),
    (
        "non-string-message",
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": ["timeout"]}}',
        502,
        "1",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in JSONRPC_ERRORS],
    ids=[case[0] for case in JSONRPC_ERRORS],
)
def test_jsonrpc_errors(body: str, status: int, message: str) -> None:
    assert _evaluate(build_preset("jsonrpc"), body, JSON) == Hit(status, False, message)


JSONRPC_OVERRIDES = [
    # The override beats the classifier ("limit exceeded" -> 429) ...
    ('{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "limit exceeded"}}', 503),
    # ... and the ranges (Solana's "Node is behind" -> 500) ...
    (
        '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005,'
        ' "message": "Node is behind by 42 slots", "data": {"numSlotsBehind": 42}}}',
        503,
    ),
    # ... and the standard table (-32603 -> 500).
    ('{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}}', 504),
    # Codes not overridden keep their usual status.
    ('{"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}}', 404),
]


@pytest.mark.parametrize(("body", "status"), JSONRPC_OVERRIDES)
def test_jsonrpc_route_override(body: str, status: int) -> None:
    preset = build_preset("jsonrpc", {-32005: 503, -32603: 504})
    hit = _evaluate(preset, body, JSON)
    assert hit is not None
    assert hit.status == status


def test_jsonrpc_override_is_copied() -> None:
    codes = {-32005: 503}
    preset = build_preset("jsonrpc", codes)
    codes[-32005] = 400
    body = _parse('{"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "x"}}')
    assert preset.evaluate(body, JSON) == Hit(503, False, "x")


JSONRPC_CLEAN = [
    '{"jsonrpc": "2.0", "id": 1, "result": "0x1"}',
    '{"jsonrpc": "2.0", "id": 1, "result": null}',
    '{"jsonrpc": "2.0", "id": 1, "result": "0x1", "error": null}',
    # Not JSON-RPC 2.0.
    '{"jsonrpc": "1.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}}',
    '{"jsonrpc": 2.0, "id": 1, "error": {"code": -32603, "message": "Internal error"}}',
    '{"id": 1, "error": {"code": -32603, "message": "Internal error"}}',
    # `code` must be an integer: not a bool, a float or a string.
    '{"jsonrpc": "2.0", "id": 1, "error": {"code": true, "message": "Internal error"}}',
    '{"jsonrpc": "2.0", "id": 1, "error": {"code": false}}',
    '{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603.0, "message": "Internal error"}}',
    '{"jsonrpc": "2.0", "id": 1, "error": {"code": "-32603", "message": "Internal error"}}',
    '{"jsonrpc": "2.0", "id": 1, "error": {"message": "Internal error"}}',
    '{"jsonrpc": "2.0", "id": 1, "error": "Internal error"}',
    '{"jsonrpc": "2.0", "id": 1, "error": [{"code": -32603}]}',
]


@pytest.mark.parametrize("body", JSONRPC_CLEAN)
def test_jsonrpc_clean(body: str) -> None:
    assert _evaluate(build_preset("jsonrpc"), body, JSON) is None


def test_jsonrpc_batch_elements_are_evaluated_one_by_one() -> None:
    batch = _parse(
        '[{"jsonrpc": "2.0", "id": 1, "result": "0x1"},'
        ' {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}}]'
    )
    preset = build_preset("jsonrpc")
    assert preset.evaluate(batch, JSON) is None  # the caller splits batches (SPEC 4.1)
    assert isinstance(batch, list)
    assert [preset.evaluate(element, JSON) for element in batch] == [
        None,
        Hit(404, False, "Method not found"),
    ]


# --- error-envelope -----------------------------------------------------------------------

ENVELOPE_ERRORS = [
    # (id, body, status, message)
    ("error-string", '{"error": "upstream timeout"}', 504, "upstream timeout"),
    (
        "error-object-message",
        '{"error": {"message": "Rate limit exceeded"}}',
        429,
        "Rate limit exceeded",
    ),
    # Stripe: "invalid_request_error" is not the message; "No such" (404) is found before
    # "invalid" (400) would be, and it is the row order, not the text order, that decides.
    (
        "stripe-no-such-customer",
        '{"error": {"code": "resource_missing", "doc_url":'
        ' "https://stripe.com/docs/error-codes/resource-missing",'
        ' "message": "No such customer: \'cus_123\'", "param": "id",'
        ' "request_log_url": "https://dashboard.stripe.com/test/logs/req_abc",'
        ' "type": "invalid_request_error"}}',
        404,
        "No such customer: 'cus_123'",
    ),
    (
        "stripe-card-declined",
        '{"error": {"charge": "ch_123", "code": "card_declined", "decline_code":'
        ' "insufficient_funds", "message": "Your card has insufficient funds.",'
        ' "type": "card_error"}}',
        502,
        "Your card has insufficient funds.",
    ),
    # JSend.
    (
        "jsend-fail",
        '{"status": "fail", "data": {"title": "A title is required"}}',
        400,
        None,
    ),
    (
        "jsend-fail-classified",
        '{"status": "fail", "data": {"email": "taken"}, "message": "Email does not exist"}',
        404,
        "Email does not exist",
    ),
    (
        "jsend-error",
        '{"status": "error", "message": "Database unavailable"}',
        503,
        "Database unavailable",
    ),
    (
        "jsend-error-code",
        '{"status": "error", "message": "Unable to communicate with database", "code": 500}',
        502,
        "Unable to communicate with database",
    ),
    ("status-failure", '{"status": "failure", "error_message": "quota"}', 429, "quota"),
    ("success-false", '{"success": false}', 502, None),
    (
        "success-false-message",
        '{"success": false, "message": "Invalid API key"}',
        401,
        "Invalid API key",
    ),
    # Message chain: error.info, then error.code.
    # apilayer style.  Surprising: 502, since "API Access Key" does not contain "api key",
    # "valid" is not "invalid", and `type` is not part of the message chain.
    (
        "error-info",
        '{"error": {"code": 101, "type": "invalid_access_key",'
        ' "info": "You have not supplied a valid API Access Key."}}',
        502,
        "You have not supplied a valid API Access Key.",
    ),
    ("error-code-string", '{"error": {"code": "RATE_LIMITED"}}', 429, "RATE_LIMITED"),
    # A non-string error.code is skipped; the top-level message is next.
    (
        "error-code-int-top-message",
        '{"error": {"code": 404}, "message": "Page not found"}',
        404,
        "Page not found",
    ),
    ("error-object-unplaced", '{"error": {"code": 17}}', 502, None),
    # First array element's message.
    (
        "error-array",
        '{"error": [{"message": "Permission denied", "field": "x"}, {"message": "Not found"}]}',
        403,
        "Permission denied",
    ),
    ("error-array-of-strings", '{"error": ["timeout"]}', 502, None),
    # error_message is the last resort.
    (
        "error-message-field",
        '{"error": true, "success": false, "error_message": "Service unavailable"}',
        503,
        "Service unavailable",
    ),
    # The error string wins over top-level message.
    (
        "error-string-first",
        '{"error": "forbidden", "message": "not found"}',
        403,
        "forbidden",
    ),
    # Decision: an empty string is no message, so the chain goes on.
    (
        "empty-message-skipped",
        '{"success": false, "error": "", "message": "Token expired"}',
        401,
        "Token expired",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [case[1:] for case in ENVELOPE_ERRORS],
    ids=[case[0] for case in ENVELOPE_ERRORS],
)
def test_envelope_errors(body: str, status: int, message: str | None) -> None:
    preset = build_preset("error-envelope")
    assert _evaluate(preset, body, JSON) == Hit(status, False, message)


ENVELOPE_CLEAN = [
    '{"error": null}',
    '{"error": ""}',
    '{"error": false}',
    '{"error": 0}',
    '{"error": {}}',
    '{"error": []}',
    # Only `error` counts, never `errors`.
    '{"errors": []}',
    '{"errors": [{"message": "Not found"}]}',
    '{"ok": true}',
    '{"ok": false}',
    '{"status": "ok"}',
    '{"status": "success", "data": {"post": {"id": 1}}}',
    '{"status": "ERROR"}',
    '{"status": 500}',
    '{"success": true}',
    '{"success": 0}',
    '{"success": "false"}',
    '{"message": "timeout"}',
]


@pytest.mark.parametrize("body", ENVELOPE_CLEAN)
def test_envelope_clean(body: str) -> None:
    assert _evaluate(build_preset("error-envelope"), body, JSON) is None


# --- odd JSON: never raise ----------------------------------------------------------------


def _nested(key: str, depth: int, leaf: object) -> object:
    doc = leaf
    for _ in range(depth):
        doc = {key: doc}
    return doc


_DEEP_DATA = _nested("data", 5000, None)
_DEEP_ERROR = _nested("error", 5000, "x")

# (id, doc, {preset name: expected hit}); presets not named expect None.
ODD_DOCS: list[tuple[str, object, dict[str, Hit]]] = [
    ("none", None, {}),
    ("int", 1, {}),
    ("float", 1.5, {}),
    ("bool", False, {}),
    ("str", "x", {}),
    ("empty-list", [], {}),
    ("int-list", [1, 2], {}),
    ("empty-dict", {}, {}),
    ("ok-string-false", {"ok": "false"}, {}),
    ("ok-zero", {"ok": 0}, {}),
    # An `error` object is an envelope error, whatever is inside it.
    (
        "jsonrpc-bool-code",
        {"jsonrpc": "2.0", "error": {"code": True}},
        {"error-envelope": Hit(502, False, None)},
    ),
    (
        "jsonrpc-string-code",
        {"jsonrpc": "2.0", "error": {"code": "x"}},
        {"error-envelope": Hit(502, False, "x")},
    ),
    ("errors-string", {"errors": "boom"}, {}),
    # Decision: `errors` is non-empty, so graphql reports it, with 502 (nothing to map).
    ("errors-of-int", {"errors": [1]}, {"graphql": Hit(502, True, None)}),
    ("errors-of-none", {"errors": [None]}, {"graphql": Hit(502, True, None)}),
    (
        "extensions-not-dict",
        {"errors": [{"extensions": "x", "type": 3}]},
        {"graphql": Hit(502, True, None)},
    ),
    (
        "non-string-keys-values",
        {"ok": [], "error": {"message": {}}, "status": ["error"]},
        {"error-envelope": Hit(502, False, None)},
    ),
    (
        "unhashable-slack-error",
        {"ok": False, "error": {"a": 1}},
        {"slack": Hit(502, False, None), "error-envelope": Hit(502, False, None)},
    ),
    ("deep-data", _DEEP_DATA, {}),
    ("deep-error", _DEEP_ERROR, {"error-envelope": Hit(502, False, None)}),
]


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize(
    ("doc", "expected"),
    [case[1:] for case in ODD_DOCS],
    ids=[case[0] for case in ODD_DOCS],
)
def test_odd_json(name: str, doc: object, expected: dict[str, Hit]) -> None:
    # Legacy media type: graphql can only flag; the GQL type is covered by the graphql tables.
    assert build_preset(name).evaluate(doc, JSON) == expected.get(name)


_ODD_VALUES: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    -32000,
    1.5,
    "",
    "error",
    "2.0",
    [],
    [None],
    [{"message": 1}],
    {},
    {"code": [], "message": None, "extensions": []},
)

# The keys each preset reads at the top level and one level down.
_TEMPLATE_KEYS: tuple[str, ...] = (
    "ok",
    "error",
    "errors",
    "data",
    "jsonrpc",
    "success",
    "status",
    "message",
)


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("media_type", [GQL, JSON])
def test_never_raises_on_any_pair_of_odd_values(name: str, media_type: str) -> None:
    preset = build_preset(name)
    for key_a, key_b in itertools.combinations(_TEMPLATE_KEYS, 2):
        for value_a, value_b in itertools.product(_ODD_VALUES, repeat=2):
            for doc in (
                {key_a: value_a, key_b: value_b},
                {"jsonrpc": "2.0", "error": {key_a: value_a, key_b: value_b}},
                {"errors": [{key_a: value_a, "extensions": {"code": value_b}}]},
            ):
                hit = preset.evaluate(doc, media_type)
                assert hit is None or 400 <= hit.status <= 599


# --- building -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_build_every_name(name: str) -> None:
    preset: Preset = build_preset(name)
    assert preset.name == name


@pytest.mark.parametrize("name", ["", "Slack", "json-rpc", "errors", "my-envelope"])
def test_build_unknown_name(name: str) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        build_preset(name)


@pytest.mark.parametrize(
    "codes",
    [{-32005: 200}, {-32005: 600}, {-32005: True}, {True: 503}, {"-32005": 503}],
)
def test_build_rejects_bad_jsonrpc_codes(codes: Any) -> None:
    with pytest.raises(ValueError, match="jsonrpc codes"):
        build_preset("jsonrpc", codes)


def test_other_presets_ignore_jsonrpc_codes() -> None:
    body = _parse('{"ok": false, "error": "ratelimited"}')
    assert build_preset("slack", {-32005: 503}).evaluate(body, JSON) == Hit(
        429, False, "ratelimited"
    )


# --- the public API for tracing (`proxy.tools.ruletrace`) agrees with `evaluate` ----------------


def _words(message: str) -> str:
    return message.lower().replace("_", " ").replace("-", " ")


@pytest.mark.parametrize(
    "message",
    [m for m, _ in CLASSIFIER_ROWS + CLASSIFIER_ORDER] + ["", "RATE_LIMITED", "all good"],
)
def test_classify_row_agrees_with_classify(message: str) -> None:
    hit = keyword_row(message)
    assert (None if hit is None else hit.status) == keyword_status(message)
    if hit is not None:
        assert hit.keyword in hit.row and hit.keyword in _words(message)


@pytest.mark.parametrize(("code", "status"), [*SLACK_STATUS.items(), ("something_new", None)])
def test_slack_table_agrees_with_evaluate(code: str, status: int | None) -> None:
    hit = build_preset("slack").evaluate({"ok": False, "error": code}, JSON)
    assert hit == Hit(FALLBACK_STATUS if status is None else status, False, code)


@pytest.mark.parametrize(("code", "status"), [*GRAPHQL_STATUS.items(), ("OTHER", None)])
def test_graphql_table_agrees_with_evaluate(code: str, status: int | None) -> None:
    expected = FALLBACK_STATUS if status is None else status
    for error in ({"extensions": {"code": code}}, {"type": code}):
        hit = build_preset("graphql").evaluate({"errors": [error]}, GQL)
        assert hit == Hit(expected, False, code)


@pytest.mark.parametrize(
    ("code", "status"),
    [*JSONRPC_STATUS.items(), (JSONRPC_SERVER_ERROR_MIN, 500), (JSONRPC_SERVER_ERROR_MAX, 500),
     (JSONRPC_SERVER_ERROR_MIN - 1, None), (JSONRPC_SERVER_ERROR_MAX + 1, None)],
)  # fmt: skip
def test_jsonrpc_table_and_range_agree_with_evaluate(code: int, status: int | None) -> None:
    doc = {"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": "odd"}}
    hit = build_preset("jsonrpc").evaluate(doc, JSON)
    assert hit == Hit(FALLBACK_STATUS if status is None else status, False, "odd")


@pytest.mark.parametrize("status", sorted(ENVELOPE_STATUSES))
def test_envelope_statuses_agree_with_evaluate(status: str) -> None:
    envelope = build_preset("error-envelope")
    assert envelope.evaluate({"status": status}, JSON) is not None
    assert envelope.evaluate({"status": status.upper()}, JSON) is None


ENVELOPE_MESSAGES = [
    ({"error": "boom"}, ("boom", "/error")),
    ({"error": "", "message": "top"}, ("top", "/message")),
    ({"error": {"info": "i", "code": "c"}}, ("i", "/error/info")),
    ({"error": {"message": "", "code": "c"}, "message": "top"}, ("c", "/error/code")),
    ({"error": [{"message": "first"}, {"message": "second"}]}, ("first", "/error/0/message")),
    ({"error": ["first"], "error_message": "em"}, ("em", "/error_message")),
    ({"success": False, "message": "m", "error_message": "em"}, ("m", "/message")),
    ({"success": False, "message": 5}, None),
    ({"error": {"message": 5}}, None),
    ({}, None),
    ([{"error": "in a batch"}], None),
    ("error", None),
]


@pytest.mark.parametrize(("doc", "expected"), ENVELOPE_MESSAGES)
def test_envelope_message_chain(doc: object, expected: tuple[str, str] | None) -> None:
    assert envelope_message(doc) == expected


@pytest.mark.parametrize(
    "body",
    [case[1] for case in ENVELOPE_ERRORS]
    + ENVELOPE_CLEAN
    + [json.dumps(doc) for doc, _ in ENVELOPE_MESSAGES],
)
def test_envelope_message_agrees_with_evaluate(body: str) -> None:
    doc = _parse(body)
    hit = build_preset("error-envelope").evaluate(doc, JSON)
    found = envelope_message(doc)
    if hit is not None:
        assert hit.message == (None if found is None else found[0])
    if found is not None:
        message, pointer = found
        assert compile_pointer(pointer).first(doc) == message


def test_public_tables_are_read_only() -> None:
    for table in (SLACK_STATUS, GRAPHQL_STATUS, JSONRPC_STATUS):
        with pytest.raises(TypeError):
            table["new"] = 500  # type: ignore[index]


# --- a resource that describes a failure is not a tunnelled error (SPEC 3, 4.4) -------------

RESOURCE_KEYS = [
    # (body, the key that makes it a resource, what it is)
    ({"id": 42, "error": "x"}, "id", "resource identity"),
    ({"id": 1, "error": {"code": -32603}}, "id", "resource identity"),  # no JSON-RPC shape
    ({"error": "x", "uid": "u1"}, "uid", "resource identity"),
    ({"uuid": "5f1c", "error": {"message": "x"}}, "uuid", "resource identity"),
    ({"sid": "SM1", "status": "failed", "error": "x"}, "sid", "resource identity"),
    ({"object": "fine_tuning.job", "error": {"message": "x"}}, "object", "resource identity"),
    ({"arn": "arn:aws:...", "error": "x"}, "arn", "resource identity"),
    ({"executionArn": "arn:aws:states:...", "error": "States.Timeout"}, "executionArn",
     "resource identity"),
    ({"job_arn": "arn:aws:...", "error": "x"}, "job_arn", "resource identity"),
    ({"name": "operations/1", "done": True, "error": {"code": 3}}, "done", "lifecycle field"),
    ({"conclusion": "failure", "error": "x"}, "conclusion", "lifecycle field"),
    ({"completed": True, "task": {}, "error": {"type": "x"}}, "completed", "lifecycle field"),
    ({"name": "projects/p/jobs/1", "startTime": "t", "error": {}}, "startTime",
     "lifecycle field"),
    ({"status": "failed", "createdDateTime": "t", "error": {}}, "createdDateTime",
     "lifecycle field"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "key", "what"), RESOURCE_KEYS)
def test_a_resource_is_told_by_its_identity_or_lifecycle(
    doc: dict[str, object], key: str, what: str
) -> None:
    assert resource_key(doc) == (key, what)
    assert build_preset("error-envelope").evaluate(doc, JSON) is None


NOT_RESOURCE_KEYS = [
    # request identifiers of an error envelope, and status codes, are not identity
    {"error": {"message": "Rate limit exceeded"}, "request_id": "req_1"},
    {"error": "x", "requestId": "r", "trace_id": "t", "debug_id": "d", "log_id": "l"},
    {"error_message": "The provided API key is invalid.", "status": "REQUEST_DENIED"},
    {"error": "x", "Id": 1, "ID": 2, "identifier": 3, "idx": 4},  # exactly `id`
    {"error": "x", "arnold": 1, "Arnold": 2, "name": "n", "timestamp": 1},
    # a JSON-RPC response's `id` echoes the request's (2.0 with `jsonrpc`; 1.0 with `result`)
    {"jsonrpc": "2.0", "id": 1, "error": "Internal error"},
    {"jsonrpc": "1.0", "id": 1, "error": {"code": -32603, "message": "Internal error"}},
    {"result": None, "error": {"code": 1, "message": "Internal error"}, "id": 1},
]


@pytest.mark.parametrize("doc", NOT_RESOURCE_KEYS)
def test_request_identifiers_are_not_resource_identity(doc: dict[str, object]) -> None:
    assert resource_key(doc) is None


@pytest.mark.parametrize(
    ("doc", "foreign"),
    [
        ({"data": None, "errors": [{}], "extensions": {}}, None),
        ({"errors": [{}]}, None),
        ({"id": 42, "state": "completed", "errors": [{"row": 12}]}, "id"),
        ({"errors": [{"code": "badtoken"}], "docref": "See ...", "servedby": "mw"}, "docref"),
    ],
)
def test_a_legacy_graphql_body_is_shaped_like_a_graphql_response(
    doc: dict[str, object], foreign: str | None
) -> None:
    assert graphql_foreign_key(doc) == foreign
    hit = build_preset("graphql").evaluate(doc, JSON)
    assert (hit is None) == (foreign is not None)
    # the media type says GraphQL: the shape is not asked
    assert build_preset("graphql").evaluate(doc, GQL) is not None
