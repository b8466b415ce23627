"""proxy.client, the upstream HTTP/1.1 client, at the protocol level: bytes fed in the
chunks a fast upstream delivers them, over a real socket pair.  (Everything else about it is
tested end to end through the proxy: tests/test_upstream.py, test_handler.py, test_fuzz.py.)"""

from __future__ import annotations

import asyncio
import socket

from proxy import client


async def _connected() -> tuple[client.Pool, client._Connection, socket.socket]:
    pool = client.Pool()
    ours, theirs = socket.socketpair()
    key = client.endpoint("http://127.0.0.1:1")
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: client._Connection(pool, key), sock=ours)
    return pool, conn, theirs


async def test_body_bytes_read_with_the_head_are_not_head_bytes() -> None:
    """Once a bug: one chunk holding a head and 400 KiB of body (a fast upstream's response)
    counted all of it against the head limit (64 KiB + HIGH_WATER): a 502."""
    _, conn, theirs = await _connected()
    head = conn.begin(head_only=False)
    body = b"x" * (400 << 10)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    response = await asyncio.wait_for(head, 1)
    assert response.status == 200
    assert b"".join(response.take_complete() or []) == body
    theirs.close()


async def test_a_head_still_incomplete_past_64_kib_fails() -> None:
    _, conn, theirs = await _connected()
    head = conn.begin(head_only=False)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * client.MAX_HEAD)
    try:
        await asyncio.wait_for(head, 1)
    except client.MalformedResponse as exc:
        assert "too large" in str(exc)
    else:
        raise AssertionError("a 64 KiB head without an end was accepted")
    theirs.close()


async def test_a_pooled_connection_reads_again_after_a_large_buffered_body() -> None:
    """Once a bug: a body that filled the buffer paused reading, and taking it whole left the
    connection paused in the pool, so the next response on it never arrived."""
    pool, conn, theirs = await _connected()
    head = conn.begin(head_only=False)
    body = b"y" * (client.HIGH_WATER * 3)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 16 << 10):
        conn.data_received(body[i : i + (16 << 10)])
    response = await asyncio.wait_for(head, 1)
    assert conn._paused  # the buffer passed HIGH_WATER
    assert b"".join(response.take_complete() or []) == body
    response.release()
    assert not conn._paused and pool._reuse(conn.key) is conn
    theirs.close()
