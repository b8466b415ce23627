"""Tests of proxy/downstream/.

test_http1.py covers `http1` (the HTTP/1.1 server protocol: pipelining, HTTP/1.0, HEAD,
bodies, what a response head carries) and `request` (header lookups, the body buffer);
test_server.py covers `server` and `refusals` (client-side limits and framing, SPEC 4.7 and
7) and `listener` (max_connections) through real connections; `writers` is covered by every
response the handler tests read (tests/test_handler.py)."""
