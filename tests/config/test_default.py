"""The embedded default (SPEC section 3): useful on day one, no false positives."""

from __future__ import annotations

import orjson
import pytest

from proxy.config.load import DEFAULT_CONFIG_PATH, load_default
from proxy.rules.ruletests import simulate
from proxy.rules.snapshot import build
from tests.conftest import ROOT

RUNTIME = build(load_default("http://127.0.0.1:3000"))
ROUTE = RUNTIME.routes[0]


def _deliver(body: object, content_type: str = "application/json") -> tuple[int, str | None]:
    from proxy.config.model import TestResponse

    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    sim = simulate(ROUTE.rules, RUNTIME, TestResponse(200, (("content-type", content_type),), raw))
    return sim.status, sim.rule


def test_default_is_the_shipped_yaml_file() -> None:
    # The package carries its own copy (a wheel or image built without config/ still has
    # it); it must be byte for byte the readable file users copy.
    assert not DEFAULT_CONFIG_PATH.is_symlink()
    assert DEFAULT_CONFIG_PATH.read_bytes() == (ROOT / "config" / "default.yaml").read_bytes()
    assert [r.name for r in RUNTIME.routes] == ["default"]
    assert ROUTE.rules.names == ("graphql", "jsonrpc", "slack", "error-envelope")
    assert ROUTE.prefix == "/" and ROUTE.host is None
    assert ROUTE.upstream.url == "http://127.0.0.1:3000"


# Ordinary JSON from real APIs: none of it may be touched.
CLEAN = [
    {"error": None},
    {"errors": []},
    {"ok": True},
    {"status": "ok"},
    {"error": ""},
    {"error": False},
    {"error": {}},
    {"success": True, "data": {"id": 1}},
    {"login": "octocat", "id": 1, "type": "User", "site_admin": False},  # GitHub REST
    {"id": "ch_1", "object": "charge", "status": "succeeded", "failure_code": None},  # Stripe
    {"data": {"viewer": {"login": "octocat"}}},  # GraphQL success
    {"jsonrpc": "2.0", "id": 1, "result": "0x4b7"},  # Ethereum
    {"jsonrpc": "2.0", "id": 1, "result": {"context": {"slot": 1}, "value": 5}},  # Solana
    {"ok": True, "channels": [], "response_metadata": {"next_cursor": ""}},  # Slack
    {"status": "success", "data": {"post": {"id": 1}}},  # JSend success
    {"results": [], "status": "OK"},  # Google Maps
    {"took": 30, "errors": False, "items": []},  # Elasticsearch _bulk
    [],
    [1, 2, 3],
    [{"id": 1, "name": "a"}],
    "just a string",
    12,
    None,
]


@pytest.mark.parametrize("body", CLEAN, ids=lambda b: orjson.dumps(b).decode()[:40])
def test_ordinary_json_is_clean(body: object) -> None:
    assert _deliver(body) == (200, None)


TUNNELLED = [
    ({"error": "upstream timeout"}, 504, "error-envelope"),
    ({"error": {"message": "Service Unavailable"}}, 503, "error-envelope"),
    ({"success": False, "message": "Invalid API key"}, 401, "error-envelope"),
    ({"status": "fail", "data": {"title": "A title is required"}}, 400, "error-envelope"),
    ({"ok": False, "error": "invalid_auth"}, 401, "slack"),
    ({"ok": False, "error": "channel_not_found"}, 404, "slack"),
    ({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}},
     404, "jsonrpc"),
    ([{"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "x"}}], 500, "jsonrpc"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "rule"), TUNNELLED)
def test_tunnelled_errors_are_found(body: object, status: int, rule: str) -> None:
    assert _deliver(body) == (status, rule)


def test_graphql_media_type_decides_rewrite() -> None:
    body = {"data": None, "errors": [{"message": "x", "extensions": {"code": "FORBIDDEN"}}]}
    assert _deliver(body, "application/graphql-response+json") == (403, "graphql")
    assert _deliver(body) == (200, "graphql")  # legacy application/json: flag only
