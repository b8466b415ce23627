"""Tables for proxy.rules.inspection: what is buffered, how bodies are decoded (bounded) and parsed.

Compressed bodies are made with the same libraries real servers use (zlib, brotli,
zstandard); bombs are built in streaming fashion so that the test itself never holds the
expanded output either.
"""

from __future__ import annotations

import gzip
import re
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import brotli
import orjson
import pytest
import zstandard

from proxy.config.model import InspectConfig
from proxy.rules import inspection as ins
from proxy.rules.inspection import Examined, InspectPolicy, Undecodable
from proxy.rules.ruleset import compile_ruleset
from proxy.rules.verdict import Verdict
from proxy.wire import jsondoc

MiB = 1 << 20
CAP = 4 * MiB
BOM = b"\xef\xbb\xbf"
POLICY = InspectPolicy.compile(InspectConfig())
JSON = "application/json"

ERROR_BODY = b'{"error": "Rate limit exceeded", "ok": false}'


# -- encoders ----------------------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _zlib_deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _br(data: bytes) -> bytes:
    return bytes(brotli.compress(data))


def _zstd(data: bytes) -> bytes:
    return bytes(zstandard.ZstdCompressor().compress(data))


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _zlib_deflate,
    "br": _br,
    "zstd": _zstd,
}


def _zeros(total: int, step: int = MiB) -> Iterator[bytes]:
    chunk = b"\0" * step
    for _ in range(total // step):
        yield chunk


def _bomb(coding: str, total: int = 50 * MiB) -> bytes:
    """`total` zero bytes compressed with `coding`, without ever holding them all."""
    if coding in ("gzip", "deflate"):
        z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if coding == "gzip" else 15)
        return b"".join(z.compress(c) for c in _zeros(total)) + z.flush()
    if coding == "br":
        b = brotli.Compressor(quality=5)
        return b"".join(bytes(b.process(c)) for c in _zeros(total)) + bytes(b.finish())
    assert coding == "zstd"
    zc = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(zc.compress(c) for c in _zeros(total)) + zc.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {c: _bomb(c) for c in ("gzip", "deflate", "br", "zstd")}


# -- media_type / encodings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ""),
        ("", ""),
        ("application/json", "application/json"),
        ("Application/JSON; charset=UTF-8", "application/json"),
        ("  application/problem+json ;charset=utf-8", "application/problem+json"),
        ("text/html;charset=utf-8", "text/html"),
        ("application/vnd.api+json; ext=bulk; profile=x", "application/vnd.api+json"),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert ins.media_type(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, ()),
        ("", ()),
        ("gzip", ("gzip",)),
        ("gzip, br", ("gzip", "br")),  # applied in this order (RFC 9110 8.4)
        ("br,gzip", ("br", "gzip")),
        ("GZIP , Identity", ("gzip", "identity")),
        (" , zstd,, ", ("zstd",)),
    ],
)
def test_encodings(header: str | None, expected: tuple[str, ...]) -> None:
    assert ins.encodings(header) == expected


# -- the policy --------------------------------------------------------------------------------


def test_compile_defaults() -> None:
    policy = InspectPolicy.compile(InspectConfig())
    assert policy == InspectPolicy(
        max_body_bytes=MiB,
        max_decoded_bytes=CAP,
        exact_types=frozenset({"application/json"}),
        wildcard_types=(("application", "+json"),),
        statuses=frozenset(range(200, 300)),
        stream_types={  # SPEC 5.1: held for their first event, 16 KiB / 1 s at most
            "text/event-stream": "sse",
            "application/x-ndjson": "ndjson",
            "application/jsonl": "ndjson",
        },
        first_event_bytes=16 << 10,
        first_event_timeout=1.0,
    )
    off = InspectPolicy.compile(InspectConfig(first_event_bytes=0))
    assert off.stream_types == {}  # 5.1 off: no media type is held as a stream


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("GET", 200, True),
        ("GET", 201, True),
        ("POST", 204, False),  # 204/205/304 have no body to inspect
        ("GET", 205, False),
        ("GET", 206, True),
        ("PUT", 299, True),
        ("DELETE", 250, True),
        ("GET", 199, False),
        ("GET", 300, False),
        ("GET", 301, False),
        ("GET", 304, False),
        ("GET", 404, False),
        ("POST", 429, False),
        ("GET", 500, False),
        ("HEAD", 200, False),
        ("HEAD", 204, False),
        ("HEAD", 500, False),
    ],
)
def test_wants_status(method: str, status: int, expected: bool) -> None:
    assert POLICY.wants_status(method, status) is expected


def test_wants_status_custom_statuses() -> None:
    policy = InspectPolicy.compile(InspectConfig(statuses=((200, 200), (400, 404))))
    assert [s for s in range(100, 600) if policy.wants_status("GET", s)] == [
        200,
        400,
        401,
        402,
        403,
        404,
    ]
    assert policy.wants_status("HEAD", 200) is False


@pytest.mark.parametrize(
    ("mtype", "expected"),
    [
        ("application/json", True),
        ("application/graphql-response+json", True),
        ("application/problem+json", True),
        ("application/vnd.api+json", True),
        ("application/merge-patch+json", True),
        ("text/html", False),
        ("text/plain", False),
        ("text/event-stream", False),
        ("application/octet-stream", False),
        # RFC 7464 JSON text sequences are not one JSON text, and `json-seq` does not end
        # in the `+json` structured syntax suffix the pattern asks for
        ("application/json-seq", False),
        ("application/jsonx", False),
        ("application/x-ndjson", False),
        ("application/geo+json-seq", False),
        ("text/json", False),  # not in the list; `application/*+json` needs `application/`
        ("text/vnd.x+json", False),
        ("", False),
    ],
)
def test_is_json_defaults(mtype: str, expected: bool) -> None:
    assert POLICY.is_json(mtype) is expected


@pytest.mark.parametrize(
    ("types", "mtype", "expected"),
    [
        (("text/*",), "text/plain", True),
        (("text/*",), "text/event-stream", True),
        (("text/*",), "application/json", False),
        (("application/*+json",), "application/json", False),  # the exact type is separate
        (("application/json",), "application/problem+json", False),
        (("Application/JSON",), "application/json", True),  # compared case-insensitively
        (("application/*+JSON",), "application/vnd.api+json", True),
    ],
)
def test_is_json_configured(types: tuple[str, ...], mtype: str, expected: bool) -> None:
    policy = InspectPolicy.compile(InspectConfig(content_types=types))
    assert policy.is_json(mtype) is expected


@pytest.mark.parametrize(
    ("mtype", "codings", "length", "expected"),
    [
        ("application/json", (), None, None),
        ("application/json", (), 0, None),
        ("application/json", (), MiB, None),  # exactly the limit is inspected
        ("application/json", (), MiB + 1, ins.SKIPPED_SIZE),
        ("application/json", ("gzip",), 10, None),
        ("application/json", ("x-gzip",), 10, None),
        ("application/json", ("deflate",), 10, None),
        ("application/json", ("br",), 10, None),
        ("application/json", ("zstd",), 10, None),
        ("application/json", ("identity",), 10, None),
        ("application/json", ("gzip", "br"), 10, None),
        ("application/json", ("compress",), 10, ins.SKIPPED_ENCODING),
        ("application/json", ("gzip", "compress"), 10, ins.SKIPPED_ENCODING),
        ("application/json", ("aes128gcm",), None, ins.SKIPPED_ENCODING),
        ("application/json", ("compress",), MiB + 1, ins.SKIPPED_ENCODING),  # encoding first
        ("text/html", ("compress",), MiB + 1, ins.SKIPPED_CONTENT_TYPE),  # type first
        ("text/html", (), 10, ins.SKIPPED_CONTENT_TYPE),
        ("text/event-stream", (), None, ins.SKIPPED_CONTENT_TYPE),
        ("application/octet-stream", (), 10, ins.SKIPPED_CONTENT_TYPE),
        ("", (), 10, ins.SKIPPED_CONTENT_TYPE),
        ("application/problem+json", ("br",), MiB + 1, ins.SKIPPED_SIZE),
    ],
)
def test_skip_reason(
    mtype: str, codings: tuple[str, ...], length: int | None, expected: str | None
) -> None:
    assert POLICY.skip_reason(mtype, codings, length) == expected


def test_results_are_the_metric_labels() -> None:
    assert ins.RESULTS == (
        "matched",
        "clean",
        "skipped_size",
        "skipped_content_type",
        "skipped_encoding",
        "invalid_json",
    )


# -- decode ------------------------------------------------------------------------------------

PAYLOAD = b'{"error": {"message": "quota exceeded", "code": 429}, "data": null}'


@pytest.mark.parametrize(
    ("codings", "body"),
    [
        pytest.param((), PAYLOAD, id="none"),
        pytest.param(("identity",), PAYLOAD, id="identity"),
        pytest.param(("gzip",), _gzip(PAYLOAD), id="gzip"),
        pytest.param(("x-gzip",), _gzip(PAYLOAD), id="x-gzip"),
        pytest.param(("deflate",), _zlib_deflate(PAYLOAD), id="deflate-zlib"),
        # what some servers send as "deflate"
        pytest.param(("deflate",), _raw_deflate(PAYLOAD), id="deflate-raw"),
        pytest.param(("br",), _br(PAYLOAD), id="br"),
        pytest.param(("zstd",), _zstd(PAYLOAD), id="zstd"),
        # applied gzip then br, so br is undone first
        pytest.param(("gzip", "br"), _br(_gzip(PAYLOAD)), id="gzip,br"),
        pytest.param(("br", "gzip"), _gzip(_br(PAYLOAD)), id="br,gzip"),
        pytest.param(("gzip", "identity", "zstd"), _zstd(_gzip(PAYLOAD)), id="gzip,identity,zstd"),
        pytest.param(
            ("deflate", "gzip", "br", "zstd"),
            _zstd(_br(_gzip(_raw_deflate(PAYLOAD)))),
            id="four-codings",
        ),
        # several gzip members / zstd frames back to back are one body (RFC 1952, RFC 8878)
        pytest.param(("gzip",), _gzip(PAYLOAD[:20]) + _gzip(PAYLOAD[20:]), id="gzip-2-members"),
        pytest.param(("zstd",), _zstd(PAYLOAD[:20]) + _zstd(PAYLOAD[20:]), id="zstd-2-frames"),
        # bytes after the last gzip member are ignored, as browsers do
        pytest.param(("gzip",), _gzip(PAYLOAD) + b"\0\0\0\0", id="gzip-trailing-padding"),
    ],
)
def test_decode(codings: tuple[str, ...], body: bytes) -> None:
    assert ins.decode(body, codings, CAP) == PAYLOAD


def test_chained_codings_are_undone_in_reverse() -> None:
    body = _br(_gzip(PAYLOAD))
    with pytest.raises(Undecodable) as e:
        ins.decode(body, ("br", "gzip"), CAP)  # wrong order: gzip first sees brotli bytes
    assert e.value.result == ins.SKIPPED_ENCODING


def test_large_legitimate_bodies_decode() -> None:
    # bigger than one decoder step (64 KiB) and than zlib's window, below the cap
    doc = orjson.dumps([{"id": i, "name": f"user-{i}", "tags": ["a", "b"]} for i in range(60000)])
    assert 2 * MiB < len(doc) < CAP
    for coding, encode in ENCODERS.items():
        assert ins.decode(encode(doc), (coding,), CAP) == doc, coding


@pytest.mark.parametrize("coding", sorted(ENCODERS))
@pytest.mark.parametrize(
    ("size", "cap", "fits"),
    [(1000, 1000, True), (1001, 1000, False), (0, 0, True), (1, 0, False), (CAP, CAP, True)],
)
def test_decoded_size_cap(coding: str, size: int, cap: int, fits: bool) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    body = ENCODERS[coding](data)
    if fits:
        assert ins.decode(body, (coding,), cap) == data
    else:
        with pytest.raises(Undecodable) as e:
            ins.decode(body, (coding,), cap)
        assert e.value.result == ins.SKIPPED_SIZE


def test_cap_counts_every_gzip_member() -> None:
    body = _gzip(b"a" * 600) + _gzip(b"b" * 600)
    assert ins.decode(body, ("gzip",), 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(Undecodable) as e:
        ins.decode(body, ("gzip",), 1199)
    assert e.value.result == ins.SKIPPED_SIZE


def test_cap_counts_every_zstd_frame() -> None:
    body = _zstd(b"a" * 600) + _zstd(b"b" * 600)
    assert ins.decode(body, ("zstd",), 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(Undecodable) as e:
        ins.decode(body, ("zstd",), 1199)
    assert e.value.result == ins.SKIPPED_SIZE


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_bomb_stops_at_the_cap(coding: str, bombs: dict[str, bytes]) -> None:
    body = bombs[coding]
    assert len(body) < 200 * 1024  # 50 MiB of zeros, compressed
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(Undecodable) as e:
            ins.decode(body, (coding,), CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    assert e.value.result == ins.SKIPPED_SIZE
    assert peak < 16 * MiB, f"{coding}: peak {peak} bytes"
    assert elapsed < 2.0, f"{coding}: {elapsed:.2f}s"


def test_bomb_inside_a_chain(bombs: dict[str, bytes]) -> None:
    body = _br(bombs["gzip"])  # the outer layer is small; the inner one explodes
    tracemalloc.start()
    try:
        with pytest.raises(Undecodable) as e:
            ins.decode(body, ("gzip", "br"), CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.result == ins.SKIPPED_SIZE
    assert peak < 16 * MiB


def _zstd_with_window(window_log: int) -> bytes:
    params = zstandard.ZstdCompressionParameters(window_log=window_log)
    z = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return z.compress(PAYLOAD) + z.flush()  # streamed: no content size, the window stays


def test_zstd_window_limit() -> None:
    # RFC 9659: the "zstd" coding never needs more than an 8 MB window; a frame header
    # asking for more would make the decoder allocate it, so it is not inspected.
    assert zstandard.get_frame_parameters(_zstd_with_window(23)).window_size == 8 * MiB
    assert ins.decode(_zstd_with_window(23), ("zstd",), CAP) == PAYLOAD
    with pytest.raises(Undecodable) as e:
        ins.decode(_zstd_with_window(24), ("zstd",), CAP)
    assert e.value.result == ins.SKIPPED_ENCODING


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("codings", "body"),
    [
        pytest.param(("gzip",), _gzip(PAYLOAD)[:-5], id="gzip-truncated-trailer"),
        pytest.param(("gzip",), _gzip(PAYLOAD)[:15], id="gzip-truncated-data"),
        pytest.param(
            ("gzip",), _flip(_gzip(PAYLOAD), len(_gzip(PAYLOAD)) - 6), id="gzip-crc-mismatch"
        ),
        pytest.param(("gzip",), PAYLOAD, id="plain-json-labelled-gzip"),
        pytest.param(("gzip",), b"", id="gzip-empty"),
        pytest.param(
            ("gzip",), _gzip(PAYLOAD) + _gzip(PAYLOAD)[:12], id="gzip-second-member-truncated"
        ),
        pytest.param(("x-gzip",), b"\x1f\x8bgarbage", id="x-gzip-garbage"),
        pytest.param(("deflate",), PAYLOAD, id="plain-json-labelled-deflate"),
        pytest.param(("deflate",), _zlib_deflate(PAYLOAD)[:-3], id="deflate-truncated"),
        pytest.param(("br",), b"garbage!garbage", id="br-garbage"),
        pytest.param(("br",), _br(PAYLOAD)[:-2], id="br-truncated"),
        pytest.param(("br",), _br(PAYLOAD) + b"xx", id="br-trailing-bytes"),
        pytest.param(("br",), b"", id="br-empty"),
        pytest.param(("zstd",), PAYLOAD, id="plain-json-labelled-zstd"),
        pytest.param(("zstd",), _zstd(PAYLOAD)[:-3], id="zstd-truncated"),
        pytest.param(
            ("zstd",), _zstd(PAYLOAD) + _zstd(PAYLOAD)[:-3], id="zstd-last-frame-truncated"
        ),
        pytest.param(("zstd",), _zstd(PAYLOAD) + b"junk", id="zstd-trailing-junk"),
        pytest.param(("zstd",), b"", id="zstd-empty"),
        pytest.param(("gzip", "br"), _gzip(_br(PAYLOAD)), id="wrong-order"),
        pytest.param(("compress",), PAYLOAD, id="unknown-coding"),
        pytest.param(("gzip", "compress"), _gzip(PAYLOAD), id="unknown-outer-coding"),
    ],
)
def test_undecodable(codings: tuple[str, ...], body: bytes) -> None:
    with pytest.raises(Undecodable) as e:
        ins.decode(body, codings, CAP)
    assert e.value.result == ins.SKIPPED_ENCODING


# -- parse_json --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"ok": true}', {"ok": True}),
        (BOM + b'{"ok": true}', {"ok": True}),  # RFC 8259 8.1: may be ignored
        (b' \r\n\t[1, "\xc3\xa9", null] \n', [1, "\u00e9", None]),
        (b'"just a string"', "just a string"),
        (b"0", 0),
    ],
)
def test_parse_json(data: bytes, expected: object) -> None:
    assert ins.parse_json(data) == expected


@pytest.mark.parametrize("depth", [1, 1000, 1024])  # orjson's documented limit is 1024
def test_parse_json_deep(depth: int) -> None:
    doc = ins.parse_json(b"[" * depth + b"]" * depth)
    seen = 1
    while isinstance(doc, list) and doc:
        doc = doc[0]
        seen += 1
    assert (seen, doc) == (depth, [])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        BOM,
        b"{",
        b'{"ok": tru',  # truncated
        b'{"error": "x"',  # truncated
        b"{'single': 'quotes'}",
        b'{"a": 1,}',
        b'{"a": 1} {"b": 2}',  # two texts
        b"NaN",
        b"[1, Infinity]",
        b'"\xff\xfe"',  # not UTF-8
        b'"\\ud800"',  # lone surrogate: could never be re-encoded
        BOM + BOM + b"{}",
        b"\xff\xfe{\x00}\x00",  # UTF-16
        b"<html>502 Bad Gateway</html>",
        # too deep for orjson: an error, never a RecursionError
        pytest.param(b"[" * 1025 + b"]" * 1025, id="1025-deep-arrays"),
        pytest.param(b"[" * 2000 + b"]" * 2000, id="2000-deep-arrays"),
        pytest.param(b'{"a":' * 2000 + b"1" + b"}" * 2000, id="2000-deep-objects"),
        pytest.param(b"[" * 100_000, id="100000-open-brackets"),
    ],
)
def test_parse_json_invalid(data: bytes) -> None:
    with pytest.raises(Undecodable) as e:
        ins.parse_json(data)
    assert e.value.result == ins.INVALID_JSON


@pytest.mark.parametrize(
    ("data", "expected"),
    [(BOM + b"{}", b"{}"), (b"{}", b"{}"), (BOM, b""), (b"\xef\xbb{}", b"\xef\xbb{}")],
)
def test_strip_bom(data: bytes, expected: bytes) -> None:
    assert ins.strip_bom(data) == expected


# -- parse_for_rules: simdjson views, valid and invalid as orjson judges ------------------------

PAD = b" " * ins.LAZY_FROM_BYTES  # trailing whitespace: the same JSON text, large enough for a view


@pytest.fixture
def always_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every body, however small and batch or not, is parsed into a view."""
    monkeypatch.setattr(ins, "LAZY_FROM_BYTES", 0)
    monkeypatch.setattr(ins, "_BATCH", re.compile(rb"(?!)"))


def _outcome(parse: Callable[[bytes], object], data: bytes) -> object:
    """What `parse` made of `data`: the value as orjson builds it, or the inspection result."""
    try:
        return jsondoc.plain(parse(data))
    except Undecodable as why:
        return why.result


INVALID = ins.INVALID_JSON
SAME, REFUSED = "simdjson reads the same", "simdjson refuses it: orjson decides"

# Inputs where two JSON parsers may part ways.  `expected` is what orjson (the reference,
# and the product before issue 18 point 3) makes of them; the third column says what
# simdjson alone does: reads the same value, or refuses the text, which then goes to orjson.
# The differences are the valid texts simdjson refuses (integers beyond 64 bits, the
# deepest nesting); no text orjson refuses is read by simdjson (the property in
# tests/rules/test_decide.py mangles documents to look for one).
AWKWARD = [
    # pysimdjson's own lookup finds the first of repeated keys; the view keeps the last
    pytest.param(b'{"a": 1, "a": 2}', {"a": 2}, SAME, id="duplicate-keys-last-wins"),
    pytest.param(b'{"e": {"c": 1, "c": 2}}', {"e": {"c": 2}}, SAME, id="duplicate-keys-nested"),
    pytest.param(b"18446744073709551615", 2**64 - 1, SAME, id="2**64-1"),
    pytest.param(b"18446744073709551616", float(2**64), REFUSED, id="2**64-is-a-float"),
    pytest.param(b"-9223372036854775808", -(2**63), SAME, id="-2**63"),
    pytest.param(b"-9223372036854775809", float(-(2**63) - 1), REFUSED, id="-2**63-1-is-a-float"),
    pytest.param(b'{"code": 1' + b"0" * 30 + b"}", {"code": 1e30}, REFUSED, id="31-digits"),
    pytest.param(b"-0", 0, SAME, id="-0-is-an-int"),
    pytest.param(b"-0.0", -0.0, SAME, id="-0.0"),
    pytest.param(b"1e2", 100.0, SAME, id="1e2-is-a-float"),
    pytest.param(b"1e-400", 0.0, SAME, id="1e-400-underflows"),
    pytest.param(b"1e400", INVALID, REFUSED, id="1e400"),
    pytest.param(b"-1e400", INVALID, REFUSED, id="-1e400"),
    pytest.param(b"NaN", INVALID, REFUSED, id="NaN"),
    pytest.param(b"[Infinity]", INVALID, REFUSED, id="Infinity"),
    pytest.param(b"01", INVALID, REFUSED, id="leading-zero"),
    pytest.param(b"1.", INVALID, REFUSED, id="1."),
    pytest.param(b'"\\ud800"', INVALID, REFUSED, id="lone-high-surrogate"),
    pytest.param(b'"\\udc00"', INVALID, REFUSED, id="lone-low-surrogate"),
    pytest.param(b'"\\ud800\\u0041"', INVALID, REFUSED, id="high-surrogate-then-A"),
    pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", SAME, id="surrogate-pair"),
    pytest.param(b'"\xed\xa0\x80"', INVALID, REFUSED, id="utf8-encoded-surrogate"),
    pytest.param(b'"\xc0\xaf"', INVALID, REFUSED, id="overlong-utf8"),
    pytest.param(b'"\xff"', INVALID, REFUSED, id="not-utf8"),
    pytest.param(b'"\x01"', INVALID, REFUSED, id="raw-control-character"),
    pytest.param(b'{"\\u0000": "\\u0000"}', {"\x00": "\x00"}, SAME, id="escaped-nul"),
    pytest.param(BOM + b'{"a": 1}', {"a": 1}, SAME, id="bom"),
    pytest.param(BOM + BOM + b"{}", INVALID, REFUSED, id="two-boms"),
    pytest.param(BOM, INVALID, REFUSED, id="bom-alone"),
    pytest.param(b" " + BOM + b"{}", INVALID, REFUSED, id="bom-after-whitespace"),
    pytest.param(b'{"a": 1} x', INVALID, REFUSED, id="trailing-garbage"),
    pytest.param(b"{}{}", INVALID, REFUSED, id="two-texts"),
    pytest.param(b"{}\x00", INVALID, REFUSED, id="trailing-nul"),
    pytest.param(b"", INVALID, REFUSED, id="empty"),  # examine() calls an empty body clean first
    pytest.param(b" \t\r\n", INVALID, REFUSED, id="whitespace-only"),
    pytest.param(b"[" * 1025 + b"]" * 1025, INVALID, REFUSED, id="1025-deep"),
    pytest.param(b'{"a":' * 1025 + b"1" + b"}" * 1025, INVALID, REFUSED, id="1025-deep-objects"),
    pytest.param(b"[" * 10000 + b"]" * 10000, INVALID, REFUSED, id="10000-deep"),
]


@pytest.mark.parametrize(("data", "expected", "simdjson_alone"), AWKWARD)
def test_awkward_inputs_are_judged_as_orjson_judges(
    data: bytes, expected: object, simdjson_alone: str, always_lazy: None
) -> None:
    # repr: -0.0 is not 0.0, and 0 is not 0.0, though they compare equal
    assert repr(_outcome(ins.parse_json, data)) == repr(expected)
    assert repr(_outcome(ins.parse_for_rules, data)) == repr(expected)
    try:
        alone = repr(jsondoc.plain(jsondoc.parse(data)))
    except jsondoc.Refused:
        alone = REFUSED
    assert alone == (repr(expected) if simdjson_alone == SAME else REFUSED)


@pytest.mark.parametrize(("data", "expected", "simdjson_alone"), AWKWARD)
def test_awkward_inputs_as_routed(data: bytes, expected: object, simdjson_alone: str) -> None:
    """The same, as bodies arrive: small, or made large with trailing whitespace."""
    for body in (data, data + PAD):
        assert repr(_outcome(ins.parse_for_rules, body)) == repr(_outcome(ins.parse_json, body))


def _innermost(doc: object) -> tuple[int, object]:
    """(depth, innermost value) of a chain of one-element arrays or {"a": ...} objects,
    walked without recursion (comparing 1024-deep values would exceed Python's limit)."""
    depth = 1
    while True:
        if isinstance(doc, jsondoc.ARRAY_TYPES) and len(doc) == 1:
            doc = doc[0]
        elif isinstance(doc, jsondoc.OBJECT_TYPES) and "a" in doc:
            doc = doc["a"]
        else:
            return depth, jsondoc.plain(doc)
        depth += 1


@pytest.mark.parametrize(
    ("data", "simdjson_alone"),
    [
        pytest.param(b"[" * 1024 + b"]" * 1024, SAME, id="1024-deep-empty"),
        # orjson's limit is a nesting of 1024; simdjson's stops a scalar at depth 1024
        pytest.param(b"[" * 1024 + b"1" + b"]" * 1024, REFUSED, id="1024-deep-scalar"),
        pytest.param(b'{"a":' * 1024 + b"1" + b"}" * 1024, REFUSED, id="1024-deep-objects"),
    ],
)
def test_deepest_valid_nesting(data: bytes, simdjson_alone: str, always_lazy: None) -> None:
    expected = _innermost(ins.parse_json(data))
    assert expected[0] in (1024, 1025)
    assert _innermost(ins.parse_for_rules(data)) == expected
    try:
        jsondoc.parse(data)
        alone = SAME
    except jsondoc.Refused:
        alone = REFUSED
    assert alone == simdjson_alone


def test_duplicate_keys_decide_as_before() -> None:
    rules = compile_ruleset(["slack"], [])
    body = b'{"ok": true, "ok": false, "error": "ratelimited"}' + PAD
    assert ins.examine(rules, POLICY, body, JSON, ()).result == "matched"  # the last "ok"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"ok": true}', dict),  # small: orjson, every object built
        (b'{"ok": true}' + PAD, jsondoc.LazyObject),
        (BOM + b'{"ok": true}' + PAD, jsondoc.LazyObject),
        (b'"' + b"s" * ins.LAZY_FROM_BYTES + b'"', str),
        (b"[1, 2]" + PAD, list),  # a batch: the rules read every element
        (PAD + BOM + b"[1]", INVALID),
        (b" \r\n\t[1]" + PAD, list),
        (BOM + b" [1]" + PAD, list),
        (b'{"code": 18446744073709551616}' + PAD, dict),  # simdjson refuses it: orjson's
    ],
)
def test_what_rules_get(data: bytes, kind: type | str) -> None:
    try:
        doc = ins.parse_for_rules(data)
    except Undecodable as why:
        assert why.result == kind
    else:
        assert type(doc) is kind


# -- examine -----------------------------------------------------------------------------------

RULES = compile_ruleset(["error-envelope"], [])
RATE_LIMITED = Verdict("error-envelope", 429, "rewrite", "keep", None, "Rate limit exceeded")


@pytest.mark.parametrize(
    ("raw", "codings", "expected"),
    [
        pytest.param(b'{"ok": true}', (), Examined("clean"), id="clean-ok"),
        pytest.param(b'{"error": null}', (), Examined("clean"), id="clean-error-null"),
        pytest.param(b'{"errors": []}', (), Examined("clean"), id="clean-errors-empty"),
        pytest.param(b'{"status": "ok"}', (), Examined("clean"), id="clean-status-ok"),
        pytest.param(_gzip(b'{"ok": true}'), ("gzip",), Examined("clean"), id="clean-gzip"),
        pytest.param(ERROR_BODY, (), Examined("matched", RATE_LIMITED, ERROR_BODY), id="matched"),
        pytest.param(
            BOM + ERROR_BODY, (), Examined("matched", RATE_LIMITED, ERROR_BODY), id="matched-bom"
        ),
        pytest.param(
            _gzip(BOM + ERROR_BODY),
            ("gzip",),
            Examined("matched", RATE_LIMITED, ERROR_BODY),
            id="matched-gzip-bom",
        ),
        pytest.param(
            _br(_gzip(ERROR_BODY)),
            ("gzip", "br"),
            Examined("matched", RATE_LIMITED, ERROR_BODY),
            id="matched-gzip,br",
        ),
        pytest.param(
            _zstd(ERROR_BODY),
            ("zstd",),
            Examined("matched", RATE_LIMITED, ERROR_BODY),
            id="matched-zstd",
        ),
        pytest.param(
            b' {"error": "boom"}\n',
            (),
            Examined(
                "matched",
                Verdict("error-envelope", 502, "rewrite", "keep", None, "boom"),
                b' {"error": "boom"}\n',  # as sent: splicing it later keeps it verbatim
            ),
            id="matched-whitespace",
        ),
        pytest.param(
            b'[{"error": "busy"}, {"result": 1}]',  # some of a batch: flag only
            (),
            Examined(
                "matched",
                Verdict("error-envelope", 503, "flag", "keep", None, "busy", True),
                b'[{"error": "busy"}, {"result": 1}]',
            ),
            id="matched-partial-batch",
        ),
        pytest.param(b'{"error": "x"', (), Examined("invalid_json"), id="truncated-json"),
        pytest.param(b"<html></html>", (), Examined("invalid_json"), id="html"),
        pytest.param(_gzip(b"not json"), ("gzip",), Examined("invalid_json"), id="gzip-not-json"),
        pytest.param(ERROR_BODY, ("gzip",), Examined("skipped_encoding"), id="not-gzip"),
        pytest.param(
            _gzip(ERROR_BODY)[:-4], ("gzip",), Examined("skipped_encoding"), id="gzip-truncated"
        ),
        pytest.param(ERROR_BODY, ("compress",), Examined("skipped_encoding"), id="compress"),
        pytest.param(b"[" * 2000 + b"]" * 2000, (), Examined("invalid_json"), id="2000-deep"),
        pytest.param(
            b'{"a":' * 1000 + b'{"error": "x"}' + b"}" * 1000,
            (),
            Examined("clean"),  # the presets look at the top level only
            id="1000-deep",
        ),
    ],
)
def test_examine(raw: bytes, codings: tuple[str, ...], expected: Examined) -> None:
    assert ins.examine(RULES, POLICY, raw, JSON, codings) == expected


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_examine_bomb(coding: str, bombs: dict[str, bytes]) -> None:
    assert ins.examine(RULES, POLICY, bombs[coding], JSON, (coding,)) == Examined("skipped_size")


def test_examine_uses_the_policy_cap() -> None:
    small = InspectPolicy.compile(InspectConfig(max_decoded_bytes=len(ERROR_BODY) - 1))
    assert ins.examine(RULES, small, _gzip(ERROR_BODY), JSON, ("gzip",)) == Examined("skipped_size")
    exact = InspectPolicy.compile(InspectConfig(max_decoded_bytes=len(ERROR_BODY)))
    assert ins.examine(RULES, exact, _gzip(ERROR_BODY), JSON, ("gzip",)).result == "matched"


def test_examine_passes_the_media_type() -> None:
    seen: list[tuple[object, str]] = []

    class Recorder:
        def evaluate(self, doc: object, media_type: str) -> Verdict | None:
            seen.append((doc, media_type))
            return None

    result = ins.examine(Recorder(), POLICY, b'{"a": 1}', "application/graphql-response+json", ())
    assert result == Examined("clean")
    assert seen == [({"a": 1}, "application/graphql-response+json")]


def test_examine_recursion_in_rules_is_clean() -> None:
    class Deep:
        def evaluate(self, doc: object, media_type: str) -> Verdict | None:
            raise RecursionError

    assert ins.examine(Deep(), POLICY, b"{}", JSON, ()) == Examined("clean")
