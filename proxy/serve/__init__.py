"""serve: one process and its supervisor.

`lifecycle` wires a serving process (proxy listener, admin listener, upstream pool,
metrics, log), starts it and drains it on SIGTERM (SPEC 6.3); `admin` answers /metrics,
/healthz, /readyz, /config and /shapes (SPEC 2); `reload` swaps in a new config on SIGHUP
or a file change (SPEC 4.6); `workers` is the master and its N worker processes
(`--workers`); `shapes` carries each worker's suspect shapes to the master (SPEC 10).

May import: wire, observe, config, rules, upstream, downstream, and the request layer
(`proxy.handler`, `proxy.exchange`, `proxy.websocket`).
"""
