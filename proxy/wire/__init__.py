"""wire: the vocabulary every layer shares, pure and free of I/O.

HTTP header policy (SPEC 7), RFC 9457 problem bodies (SPEC 6.2), W3C trace context,
the cheap per-request deadline, and RFC 6901 JSON pointers (the syntax config checks and
rules evaluate).

May import: nothing of tunnelguard's (it is the bottom layer).
"""
