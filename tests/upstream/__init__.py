"""Tests of proxy/upstream/.

test_failures.py drives THE failure table (SPEC 6.1) through a real proxy in front of real
misbehaving upstreams, which is also where `forward` (send, body relay, request replay) is
covered; the others test their module directly on real sockets."""
