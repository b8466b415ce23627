"""aiohttp's private attributes that tunnelguard reads or sets, each behind one function.

Checked against aiohttp 3.14.5 (`CHECKED_VERSION`); present since 3.9, the lower bound in
pyproject.toml.  tests/compat/test_aiohttp_private.py fails if an attribute disappears.
"""

from __future__ import annotations

from typing import Any

CHECKED_VERSION = "3.14.5"


def no_silent_retry(session: Any) -> None:
    """aiohttp silently re-sends an idempotent request once when a pooled connection drops
    before the response head.  Every attempt must be ours: counted, budgeted and bounded by
    retry.attempts (SPEC 6.3).  No public switch exists (aiohttp issue 10790); aiohttp's
    own TestClient sets the same attribute."""
    session._retry_connection = False


def handshake_response(websocket: Any) -> Any:
    """The `ClientResponse` of a client WebSocket's handshake (`_response`):
    `ClientWebSocketResponse` exposes no response headers of its own."""
    return websocket._response


def name_the_server(name: str) -> None:
    """aiohttp's server adds `Server: Python/3.x aiohttp/3.y` to every response that has no
    `Server` header, from the module global `web_response.SERVER_SOFTWARE` read at each
    response: a version disclosure on every answer tunnelguard generates (and on upstream
    answers that carry no `Server`).  Set it to `name`, without versions, for this process
    (the proxy listener's own server writes no `Server`; aiohttp serves the admin listener
    and the WebSocket handshakes)."""
    from aiohttp import web_response

    web_response.SERVER_SOFTWARE = name  # type: ignore[attr-defined]
