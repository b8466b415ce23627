"""proxy.upstream.connection, one upstream HTTP/1.1 connection, at the protocol level: bytes fed in
the chunks a fast upstream delivers them, over a real socket pair.  (Everything else about it
is tested end to end through the proxy: tests/upstream/test_failures.py, test_handler.py,
test_fuzz.py.)"""

from __future__ import annotations

import asyncio

from proxy.upstream import connection
from tests.conftest import connected


async def test_body_bytes_read_with_the_head_are_not_head_bytes() -> None:
    """Once a bug: one chunk holding a head and 400 KiB of body (a fast upstream's response)
    counted all of it against the head limit (64 KiB + HIGH_WATER): a 502."""
    _, conn, theirs = await connected()
    head = conn.begin(head_only=False)
    body = b"x" * (400 << 10)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response = await asyncio.wait_for(head, 1)
    assert response.status == 200
    assert b"".join(response.take_complete() or []) == body
    theirs.close()


async def test_a_head_still_incomplete_past_64_kib_fails() -> None:
    _, conn, theirs = await connected()
    head = conn.begin(head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * connection.MAX_HEAD)
    try:
        await asyncio.wait_for(head, 1)
    except connection.MalformedResponse as exc:
        assert "too large" in str(exc)
    else:
        raise AssertionError("a 64 KiB head without an end was accepted")
    theirs.close()
