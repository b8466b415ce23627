"""compat: the only place that touches other libraries' private attributes.

One module per library (`aiohttp_private`, `prometheus_private`), each naming the version it
was checked against and the test that fails when the library changes under it.  Nothing
else in the package may read or set a private attribute of aiohttp or prometheus-client.

May import: nothing of tunnelguard's (it is the bottom layer, beside wire).
"""
