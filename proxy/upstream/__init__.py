"""upstream: our side as a client of the upstreams.

`connection` is one HTTP/1.1 connection (llhttp response parser, flow control); `pool`
keeps them alive per upstream; `forward` sends one request and reads its answer;
`failures` is THE table that turns what went wrong into a status, a Proxy-Status error
and a metric kind (SPEC 6.1); `guards` protect each upstream (concurrency limit, retry
budget, backoff, circuit breaker, SPEC 6.3).

May import: compat, wire, observe, config.
"""
