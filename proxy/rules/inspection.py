"""Deciding what to buffer, and decoding a buffered body into JSON, within fixed bounds.

Only responses that can carry a tunnelled error are buffered (SPEC section 5).  The
bounds protect the process: `max_body_bytes` caps the memory one in-flight response
can hold, `max_decoded_bytes` caps what a compressed body may expand to (a 1 MiB gzip
bomb can inflate to gigabytes; we stop at the cap and pass the body through).

`parse_for_rules` is a fast path (issue 18 point 3): a large body is read through a simdjson
view, built only where the rules look.  Its plain reference is `parse_json` (orjson, every
object built), and `reference_decide` in tests/rules/test_decide.py states the whole step as
it was before: a property holds both to the same decisions.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import brotli
import orjson
import zstandard

from proxy.config.model import InspectConfig
from proxy.rules.events import STREAM_TYPES
from proxy.rules.ruleset import RuleSet
from proxy.rules.suspect import Suspect, detect
from proxy.rules.verdict import Verdict
from proxy.wire import jsondoc

# inspections_total{result} values (SPEC section 8)
MATCHED = "matched"
CLEAN = "clean"
SKIPPED_SIZE = "skipped_size"
SKIPPED_CONTENT_TYPE = "skipped_content_type"
SKIPPED_ENCODING = "skipped_encoding"
INVALID_JSON = "invalid_json"
RESULTS = (MATCHED, CLEAN, SKIPPED_SIZE, SKIPPED_CONTENT_TYPE, SKIPPED_ENCODING, INVALID_JSON)

_BOM = b"\xef\xbb\xbf"
# Bodies from this size on are read through a simdjson view (`parse_for_rules`).  Below it a
# view saves nothing: a decide() of 1 KiB costs 5.0 µs with orjson, 5.4 viewed, and the
# 200 B bodies most errors are would cost 1.5 µs more.  Above it, a view saves what the
# rules do not read: a decide() of a 2 KiB clean body 8.1 -> 6.1 µs, 16 KiB 51 -> 13 µs;
# only a body that is mostly one long string pays up to 1.2 µs more, up to ~8 KiB
# (bench/decide.py; bench/results.md, "Inspection parser (issue 18 point 3)").
LAZY_FROM_BYTES = 2 << 10
# A top-level array is a batch (SPEC 4.1): the rules read every element, and a view costs
# twice what orjson does there (a 14 KiB JSON-RPC batch: 233 µs with orjson, 515 viewed).
_BATCH = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\n\r]*\[")
_NO_BODY = frozenset({204, 205, 304})
_DECODERS = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "identity"})
_GZIP_MAGIC = b"\x1f\x8b"
# brotli output asked for per call; a call may return up to about twice this, which is
# all a bomb can overshoot the cap by
_BR_STEP = 64 << 10
_ZSTD_STEP = 64 << 10  # zstd output per read while measuring a body's decoded size
# RFC 9659: encoders MUST NOT need a window over 8 MB for the "zstd" coding.  The frame
# header alone makes the decoder allocate the window, so a larger one is refused.
_ZSTD_MAX_WINDOW = 8 << 20


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def encodings(content_encoding: str | None) -> tuple[str, ...]:
    """Content codings in the order they were applied (RFC 9110 8.4)."""
    if not content_encoding:
        return ()
    return tuple(e.strip().lower() for e in content_encoding.split(",") if e.strip())


def compressed(codings: tuple[str, ...]) -> bool:
    """A content coding other than `identity` was applied: an event stream so coded is not
    held (SPEC 5.1)."""
    return any(c != "identity" for c in codings)


@dataclass(frozen=True, slots=True)
class InspectPolicy:
    """`InspectConfig` compiled for the per-response decision."""

    max_body_bytes: int
    max_decoded_bytes: int
    exact_types: frozenset[str]
    wildcard_types: tuple[tuple[str, str], ...]  # (type, subtype suffix); suffix "" = any
    statuses: frozenset[int]
    # SPEC 5.1: media type -> stream kind of the event streams held for their first event;
    # empty when `first_event_bytes` is 0, so one dict lookup says "not held"
    stream_types: Mapping[str, str]
    first_event_bytes: int
    first_event_timeout: float

    @classmethod
    def compile(cls, config: InspectConfig) -> InspectPolicy:
        exact, wild = set(), []
        for t in config.content_types:
            t = t.lower()  # `media_type()` lowercases what it is compared with
            major, _, minor = t.partition("/")
            if "*" in minor:
                wild.append((major, minor.replace("*", "", 1)))
            else:
                exact.add(t)
        statuses = frozenset(s for lo, hi in config.statuses for s in range(lo, hi + 1))
        return cls(
            config.max_body_bytes,
            config.max_decoded_bytes,
            frozenset(exact),
            tuple(wild),
            statuses,
            MappingProxyType(dict(STREAM_TYPES) if config.first_event_bytes else {}),
            config.first_event_bytes,
            config.first_event_timeout,
        )

    def wants_status(self, method: str, status: int) -> bool:
        """Could this response carry a tunnelled error at all?  (Not counted when not.)

        HEAD answers and 204/205/304 have no body (RFC 9110 6.4.1)."""
        return status in self.statuses and method != "HEAD" and status not in _NO_BODY

    def is_json(self, mtype: str) -> bool:
        if mtype in self.exact_types:
            return True
        major, _, minor = mtype.partition("/")
        return any(
            (major == m or m == "*") and minor.endswith(suffix) for m, suffix in self.wildcard_types
        )

    def skip_reason(
        self, mtype: str, codings: tuple[str, ...], content_length: int | None
    ) -> str | None:
        """Why a candidate response is streamed uninspected, or None to buffer it."""
        if not self.is_json(mtype):
            return SKIPPED_CONTENT_TYPE
        if any(c not in _DECODERS for c in codings):
            return SKIPPED_ENCODING
        if content_length is not None and content_length > self.max_body_bytes:
            return SKIPPED_SIZE
        return None


class Undecodable(Exception):
    """The body cannot be inspected; `result` is the inspections_total label."""

    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


def decode(body: bytes, codings: tuple[str, ...], cap: int) -> bytes:
    """Undo the content codings, never producing more than `cap` bytes."""
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = _DECODE.get(coding)
        if decoder is None:  # `skip_reason` screens these out; never a KeyError here
            raise Undecodable(SKIPPED_ENCODING)
        try:
            body = decoder(body, cap)
        except Undecodable:
            raise
        except (zlib.error, brotli.error, zstandard.ZstdError, ValueError):
            raise Undecodable(SKIPPED_ENCODING) from None
    return body


def _gzip(body: bytes, cap: int) -> bytes:
    # A gzip body may be several members back to back (RFC 1952 section 2.2); bytes
    # after the last member that do not start another one are ignored, as browsers do.
    parts: list[bytes] = []
    size = 0
    while True:
        out, body = _zlib(body, cap - size, 16 + zlib.MAX_WBITS)
        size += len(out)
        parts.append(out)
        if not body.startswith(_GZIP_MAGIC):
            return b"".join(parts)


def _deflate(body: bytes, cap: int) -> bytes:
    # "deflate" is meant to be zlib-wrapped (RFC 9110 8.4.1.2), but servers send raw too.
    try:
        return _zlib(body, cap, zlib.MAX_WBITS)[0]
    except zlib.error:
        return _zlib(body, cap, -zlib.MAX_WBITS)[0]


def _zlib(body: bytes, cap: int, wbits: int) -> tuple[bytes, bytes]:
    """One complete zlib/gzip/raw deflate stream: (output, the bytes after it)."""
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, cap + 1)  # max_length bounds the allocation, not just the result
    if len(out) > cap:
        raise Undecodable(SKIPPED_SIZE)
    if not d.eof:
        raise Undecodable(SKIPPED_ENCODING)  # truncated stream
    return out, d.unused_data


def _br(body: bytes, cap: int) -> bytes:
    # `output_buffer_limit` stops the buffer growing once it is reached, but a single
    # growth step can double it; small steps keep the overshoot past `cap` small too.
    d = brotli.Decompressor()
    parts: list[bytes] = []
    size = 0
    out: bytes = d.process(body, output_buffer_limit=_BR_STEP)
    while True:
        size += len(out)
        if size > cap:
            raise Undecodable(SKIPPED_SIZE)
        parts.append(out)
        if d.is_finished():
            return b"".join(parts)
        out = d.process(b"", output_buffer_limit=_BR_STEP)  # input it still holds
        if not out and not d.is_finished():  # every byte used, stream unfinished: truncated
            raise Undecodable(SKIPPED_ENCODING)


def _zstd(body: bytes, cap: int) -> bytes:
    dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
    # 1. Measure, in bounded steps, what the whole body expands to.
    with dctx.stream_reader(body, read_across_frames=True) as reader:
        size = 0
        while chunk := reader.read(_ZSTD_STEP):
            size += len(chunk)
            if size > cap:
                raise Undecodable(SKIPPED_SIZE)
    # 2. It fits: decode frame by frame (RFC 8878 section 3: one or more frames); a
    #    frame the body ends inside is a truncated body, which the reader above hides.
    parts: list[bytes] = []
    while True:
        frame = dctx.decompressobj()
        parts.append(frame.decompress(body))
        if not frame.eof:
            raise Undecodable(SKIPPED_ENCODING)
        body = frame.unused_data
        if not body:
            return b"".join(parts)


_DECODE = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _br, "zstd": _zstd}


def parse_json(data: bytes) -> object:
    """Parse a decoded body into plain Python values, every object built (orjson), as
    `explain` shows it; a UTF-8 BOM is tolerated (RFC 8259 section 8.1)."""
    if data.startswith(_BOM):
        data = data[3:]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Undecodable(INVALID_JSON) from None


def parse_for_rules(data: bytes) -> object:
    """Parse a decoded body as the rules read it: from `LAZY_FROM_BYTES` on, a `jsondoc`
    view whose values are built only where a rule reads them; else as `parse_json`.

    Valid and invalid exactly as `parse_json`: the whole text is validated, and orjson
    decides whenever simdjson refuses a text (it cannot hold integers beyond 64 bits, which
    orjson reads as floats, nor a scalar at depth 1024), at the cost of both parses."""
    if len(data) < LAZY_FROM_BYTES or _BATCH.match(data):
        return parse_json(data)
    try:
        return jsondoc.parse(data)  # skips one leading BOM itself, as `strip_bom` does
    except jsondoc.Refused:
        return parse_json(data)


def strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(_BOM) else data


@dataclass(frozen=True, slots=True)
class Examined:
    """The result of inspecting one complete buffered body."""

    result: str  # inspections_total{result}
    verdict: Verdict | None = None
    decoded: bytes = b""  # the JSON text (BOM removed), when it parsed
    suspect: Suspect | None = None  # a clean body's error markers (SPEC 10), when looked for


def examine(
    rules: RuleSet,
    policy: InspectPolicy,
    raw: bytes,
    mtype: str,
    codings: tuple[str, ...],
    discover: bool = False,
) -> Examined:
    """Decode, parse and evaluate a buffered body.  Pure; never raises on bad input.

    An empty body carries no error: it is clean, not invalid JSON.  With `discover`, a
    clean body goes through the suspect-shape detector (SPEC 10) while its parsed document
    is at hand."""
    if not raw:
        return Examined(CLEAN)
    try:
        decoded = decode(raw, codings, policy.max_decoded_bytes)
        doc = parse_for_rules(decoded)
    except Undecodable as why:
        return Examined(why.result)
    try:
        verdict = rules.evaluate(doc, mtype)
    except RecursionError:  # a pathological nesting depth: treat as not matching
        verdict = None
    if verdict is None:
        return Examined(CLEAN, suspect=detect(doc) if discover else None)
    return Examined(MATCHED, verdict, strip_bom(decoded))
