"""wire: the vocabulary every layer shares, pure and free of I/O.

HTTP header policy (SPEC 7), RFC 9457 problem bodies (SPEC 6.2), W3C trace context,
the cheap per-request deadline, RFC 6901 JSON pointers (the syntax config checks and
rules evaluate), and `jsondoc`, the simdjson views of a body those pointers and the rules
read (issue 18 point 3).

May import: nothing of tunnelguard's (it is the bottom layer).
"""
