"""downstream: the client's side of the proxy.

`listener` accepts connections while there is room (`max_connections`); `server` is the
HTTP/1.1 server protocol that enforces the client-side limits and request framing
(SPEC 4.7, 7) before the handler sees a request; `refusals` are the pure decisions behind
what it refuses; `writers` write every answer to the client: buffered, relayed from the
upstream as it arrives, or generated (problem+json).

May import: compat, wire, observe, config, rules, upstream (a relayed body is an upstream
`Response`).
"""
