"""W3C Trace Context: the trace id every log line and problem body carries (SPEC 6.2),
and the `traceparent` forwarded upstream so logs on both sides join."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

# version-traceid-parentid-flags; a later version may append "-..." fields (W3C Trace
# Context, "Versioning of traceparent": read what version 00 defines, keep the header)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def new_trace_id() -> str:
    """A random, non-zero trace id.  Trace ids need to be unique, not secret: Python's
    PRNG (seeded from the OS, reseeded in forked workers) costs no system call, where
    os.urandom costs one per id."""
    return "%032x" % (random.getrandbits(128) or 1)


def trace_context_of(fields: Sequence[str]) -> tuple[str, str]:
    """`trace_context` of a request's `traceparent` field lines: several are as invalid as
    a malformed one (W3C Trace Context 3.2)."""
    return trace_context(fields[0] if len(fields) == 1 else None)


def trace_context(traceparent: str | None) -> tuple[str, str]:
    """The trace id to report and the `traceparent` to send upstream (W3C Trace Context).

    A valid incoming header is forwarded unchanged; otherwise a new one is made.
    """
    if traceparent:
        value = traceparent.strip()
        m = _TRACEPARENT.fullmatch(value)
        if (
            m
            and m.group(1) != "ff"
            and (m.group(5) is None or m.group(1) != "00")  # version 00 is exactly 55 chars
            and m.group(2) != _ZERO_TRACE
            and m.group(3) != _ZERO_SPAN
        ):
            return m.group(2), value
    trace_id = new_trace_id()
    return trace_id, f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-00"
