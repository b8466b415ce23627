"""Tests of proxy/downstream/.

test_server.py covers `server` and `refusals` (client-side limits and framing, SPEC 4.7 and 7)
and `listener` (max_connections) through real connections; `writers` is covered by every
response the handler tests read (tests/test_handler.py)."""
