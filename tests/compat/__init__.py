"""Tests of proxy/compat/: the private attributes of other libraries still exist and mean
what the shims assume (a new library version that changes them fails here first)."""
