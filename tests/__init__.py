"""tunnelguard's tests mirror the package: tests/<layer>/test_<module>.py for
proxy/<layer>/<module>.py, and tests/test_<module>.py for the request layer at the top
(handler, websocket; `exchange`, the handler's records, is covered by test_handler.py) and
the command line (test_main.py).  Each layer's __init__ says where a module without its own
file is covered.  test_layers.py holds the imports to the layers.  system/ runs real
processes under faults, fuzz and soak; deploy/ the container, Prometheus, Grafana and
manifests; docs/ the examples shown to users."""
