"""observe: what the process tells operators: Prometheus metrics (an injected registry),
the JSON access and event log, and the batching that writes both cheaply.

May import: compat, wire.
"""
