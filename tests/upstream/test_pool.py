"""proxy.upstream.pool, the upstream connection pool, at the protocol level over a real socket
pair.  (Everything else about it is tested end to end through the proxy:
tests/upstream/test_failures.py, tests/test_handler.py, tests/system/test_fuzz.py.)"""

from __future__ import annotations

import asyncio

from proxy.upstream import connection
from tests.conftest import connected


async def test_a_pooled_connection_reads_again_after_a_large_buffered_body() -> None:
    """Once a bug: a body that filled the buffer paused reading, and taking it whole left the
    connection paused in the pool, so the next response on it never arrived."""
    pool, conn, theirs = await connected()
    head = conn.begin(head_only=False)
    body = b"y" * (connection.HIGH_WATER * 3)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 16 << 10):
        conn.data_received(body[i : i + (16 << 10)])
    response = await asyncio.wait_for(head, 1)
    assert conn._paused  # the buffer passed HIGH_WATER
    assert b"".join(response.take_complete() or []) == body
    response.release()
    assert not conn._paused and pool._reuse(conn.key) is conn
    theirs.close()
