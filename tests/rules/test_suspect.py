"""proxy.rules.suspect: the detector of SPEC 10, in tables, on both corpora of issue 20 and on
issue 17's (resources that describe a failure, ordinary JSON), on orjson's objects and on
simdjson views, and against `reference_markers`, the plain rule it is held to."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import model
from proxy.rules import suspect as sus
from proxy.rules.presets import keyword_status, resource_key
from proxy.rules.ruletests import simulate
from proxy.rules.suspect import Marker, Suspect, detect
from proxy.wire import jsondoc
from tests.rules import corpus
from tests.rules.corpus import discovery

CLEAN = discovery.clean()
TUNNELLED = discovery.tunnelled()


def _both(doc: object) -> Suspect | None:
    """`detect` on orjson's objects and on a simdjson view of the same text: one answer."""
    text = orjson.dumps(doc)
    built = detect(orjson.loads(text))
    assert detect(jsondoc.parse(text)) == built
    return built


def _pointers(doc: object) -> list[str] | None:
    found = _both(doc)
    return None if found is None else [m.pointer for m in found.markers]


# --- the markers, one SPEC sentence at a time -----------------------------------------------

MARKERS: list[tuple[object, list[str]]] = [
    # a name marker with a value that is not null, false, 0, "0", "", [] or {}
    ({"error": "invalid_auth"}, ["/error"]),
    ({"errors": [{"code": 1}]}, ["/errors"]),
    ({"err": True}, ["/err"]),
    ({"ErrCode": 40001}, ["/ErrCode"]),
    ({"error_code": "E1"}, ["/error_code"]),
    ({"Error-Code": 7}, ["/Error-Code"]),
    ({"fault": {"faultstring": "x"}}, ["/fault"]),
    ({"exception": "java.lang.IllegalStateException"}, ["/exception"]),
    ({"Failure": "x"}, ["/Failure"]),
    ({"error": 1.5}, ["/error"]),
    # message markers: only when alone in their object
    ({"errmsg": "boom"}, ["/errmsg"]),
    ({"errorMessage": "Task timed out"}, ["/errorMessage"]),
    ({"errcode": 40001, "errmsg": "invalid credential"}, ["/errcode"]),
    # ok / success / succeeded equal to false
    ({"ok": False}, ["/ok"]),
    ({"Success": False, "Message": "x"}, ["/Success"]),
    ({"succeeded": False}, ["/succeeded"]),
    # status / stat / state / result words, any case
    ({"status": "error"}, ["/status"]),
    ({"stat": "fail", "message": "x"}, ["/stat"]),
    ({"state": "FAILED"}, ["/state"]),
    ({"result": "Failure"}, ["/result"]),
    # numeric status markers, 400..599
    ({"status": 503}, ["/status"]),
    ({"statusCode": 404}, ["/statusCode"]),
    ({"httpStatusCode": 400}, ["/httpStatusCode"]),
    ({"http_status": 599}, ["/http_status"]),
    ({"code": 401, "message": "x"}, ["/code"]),
    # one object level down
    ({"Response": {"Error": {"Code": "AuthFailure"}, "RequestId": "r"}}, ["/Response/Error"]),
    ({"meta": {"code": 401}, "response": {}}, ["/meta/code"]),
    ({"data": {"ok": False}}, ["/data/ok"]),
    # several, sorted by pointer; RFC 6901 escapes
    ({"status": "fail", "code": 500}, ["/code", "/status"]),
    ({"a/b": {"error": "x"}}, ["/a~1b/error"]),
    ({"a~b": {"error": "x"}}, ["/a~0b/error"]),
]


@pytest.mark.parametrize(("doc", "pointers"), MARKERS, ids=lambda v: json.dumps(v)[:60])
def test_each_marker_is_found(doc: object, pointers: list[str]) -> None:
    assert _pointers(doc) == pointers


NOT_MARKERS: list[object] = [
    # SPEC 3's ordinary JSON, and issue 20's
    {"error": None},
    {"errors": []},
    {"ok": True},
    {"status": "ok"},
    {"error_rate": 0.02},
    {"code": 0, "message": "success"},
    {"status": 200},
    # the values SPEC 10 names as no error
    {"error": False},
    {"error": 0},
    {"error": "0"},
    {"error": ""},
    {"error": {}},
    {"errors": []},
    {"error": 0.0},
    # strings that read as success where an error goes (WeChat's own success reply)
    {"errcode": 0, "errmsg": "ok"},
    {"error": "none"},
    {"error": "OK"},
    {"errcode": 0, "errmsg": "请求成功"},  # a zero code beside the message
    {"error_code": "0", "errormessage": "done"},
    # flags: only JSON false
    {"ok": 0},
    {"ok": "false"},
    {"success": None},
    {"ok": True, "success": True},
    # words: only the four
    {"status": "FAILED_PRECONDITION_x"},
    {"state": "errored"},
    {"result": "created"},
    {"status": "ZERO_RESULTS", "results": []},
    # numbers: only integers 400..599 under the five names
    {"status": 399},
    {"status": 600},
    {"code": 404.0},
    {"code": "404"},
    {"status": True},
    {"status_code": 200},
    {"errno": 500},
    # two levels down is not looked at; arrays are not descended into
    {"a": {"b": {"error": "x"}}},
    {"items": [{"error": "x"}]},
    # not an object
    [{"error": "x"}],
    "error",
    42,
    None,
]


@pytest.mark.parametrize("doc", NOT_MARKERS, ids=lambda v: json.dumps(v, ensure_ascii=False)[:60])
def test_ordinary_json_is_not_suspect(doc: object) -> None:
    assert _pointers(doc) is None


# --- a resource that describes a failure ----------------------------------------------------

RESOURCES: list[object] = [
    # 4.4's test, at the top level
    {"id": 7, "status": "failed", "error": {"message": "x"}},
    {"name": "operations/1", "done": True, "error": {"code": 13}},
    {"executionArn": "arn:x", "status": "FAILED", "error": "States.Timeout"},
    # ... and on the object holding a nested marker
    {"Job": {"Arn": "arn:aws:x", "Status": "ERROR", "ErrorCode": 1434}},
    {"data": {"id": "x", "status": "errored", "errors": {"type": "invalid_input"}}},
    # the detector's broader reading: identity in any case, own ids, lifecycle time stamps
    {"Id": "abc", "State": {"Error": "exited"}},
    {"JobRun": {"Id": "jr_1", "ErrorMessage": "x"}},
    {"task-id": "t1", "state": "FAILURE", "traceback": "..."},
    {"dag_run_id": "r1", "state": "failed"},
    {"number": 1042, "status": "failed", "created_at": "2024-03-04T10:00:05Z"},
    {"ProgressEvent": {"Identifier": "x", "ErrorCode": "NotStabilized"}},
    {"state": "failure", "sha": "6dcb09b5", "statuses": []},
]


@pytest.mark.parametrize("doc", RESOURCES, ids=lambda v: json.dumps(v)[:60])
def test_a_resource_that_describes_a_failure_is_not_suspect(doc: object) -> None:
    assert _pointers(doc) is None


ENVELOPES_WITH_REQUEST_IDS: list[tuple[object, list[str]]] = [
    ({"errcode": 1, "errmsg": "x", "request_id": "r"}, ["/errcode"]),
    ({"Response": {"Error": {"Code": "X"}, "RequestId": "r"}}, ["/Response/Error"]),
    ({"error_code": 110, "error_msg": "x", "log_id": 3}, ["/error_code"]),
    ({"status": "error", "trace_id": "t", "debugId": "d", "x-correlation-id": "c"}, ["/status"]),
    ({"error_message": "x", "error_id": 502}, ["/error_message"]),
    ({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000}}, ["/error"]),
]


@pytest.mark.parametrize(("doc", "pointers"), ENVELOPES_WITH_REQUEST_IDS, ids=str)
def test_request_identifiers_are_not_resource_identity(doc: object, pointers: list[str]) -> None:
    assert _pointers(doc) == pointers


# --- values and statuses --------------------------------------------------------------------

VALUES: list[tuple[object, Marker]] = [
    (
        {"errcode": 40001, "errmsg": "invalid credential"},
        Marker("/errcode", "number", "40001", 400),
    ),
    ({"errcode": 45009, "errmsg": "api daily quota"}, Marker("/errcode", "number", "45009", 429)),
    ({"error": "ratelimited"}, Marker("/error", "string", "ratelimited", 429)),
    ({"error": "E_BOOM"}, Marker("/error", "string", "E_BOOM", 502)),
    ({"error": "rate_limited"}, Marker("/error", "string", "rate_limited", 429)),
    ({"error": "Request timed out"}, Marker("/error", "string", None, 504)),
    ({"status": 503}, Marker("/status", "number", "503", 503)),
    ({"status": "fail", "message": "Invalid API Key"}, Marker("/status", "string", "fail", 401)),
    ({"ok": False}, Marker("/ok", "boolean", None, 502)),
    ({"errors": True}, Marker("/errors", "boolean", None, 502)),
    # an object marker: its code-like member (code, errcode, errorCode, faultcode, type),
    # and where it is (`value_pointer`: what a suggested rule's `status.from` reads)
    (
        {"fault": {"Code": "Throttling.User", "Message": "x"}},
        Marker("/fault", "object", "Throttling.User", 429, "/fault/Code"),
    ),
    (
        {"error": {"type": "card_error", "code": "card_declined"}},
        Marker("/error", "object", "card_declined", 502, "/error/code"),
    ),
    (
        {"error": {"type": "overloaded_error"}},
        Marker("/error", "object", "overloaded_error", 503, "/error/type"),
    ),
    ({"error": {"code": "has spaces in it"}}, Marker("/error", "object", None, 502)),
    # an array marker: its first element's
    (
        {"errors": [{"code": 89, "message": "Invalid or expired token."}]},
        Marker("/errors", "array", "89", 401, "/errors/0/code"),
    ),
    ({"errors": ["NOT_FOUND"]}, Marker("/errors", "array", "NOT_FOUND", 404, "/errors/0")),
    # a message marker's text is never a value, even when it looks like a code
    ({"errmsg": "s3cr3t-t0k3n"}, Marker("/errmsg", "string", None, 502)),
    # code-like: at most 64 characters of [A-Za-z0-9_.:-]
    ({"error": "x" * 64}, Marker("/error", "string", "x" * 64, 502)),
    ({"error": "x" * 65}, Marker("/error", "string", None, 502)),
    ({"error": "a/b"}, Marker("/error", "string", None, 502)),
]


@pytest.mark.parametrize(
    ("doc", "marker"), VALUES, ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else ""
)
def test_values_and_statuses(doc: object, marker: Marker) -> None:
    found = _both(doc)
    assert found is not None and found.markers == (marker,)


def test_a_numeric_status_marker_decides_the_bodys_status() -> None:
    found = detect({"status": "error", "message": "timeout", "code": 503})
    assert found is not None
    assert [(m.pointer, m.status) for m in found.markers] == [("/code", 503), ("/status", 504)]
    assert found.status == 503
    assert detect({"errmsg": "x"}).status == 502  # type: ignore[union-attr]
    assert detect({"status": "fail", "message": "quota"}).status == 429  # type: ignore[union-attr]


# --- shapes ---------------------------------------------------------------------------------

WECHAT = {"errcode": 40001, "errmsg": "invalid credential"}


def test_a_shape_is_structure_not_values() -> None:
    a = detect(WECHAT)
    b = detect({"errmsg": "another message entirely", "errcode": 45009})
    assert a is not None and b is not None
    assert a.shape == b.shape and re.fullmatch(r"s-[0-9a-f]{8}", a.shape)
    assert a.keys == ("errcode", "errmsg")
    other_keys = detect({"errcode": 40001, "errmsg": "x", "rid": "1"})
    other_type = detect({"errcode": "40001", "errmsg": "x"})
    assert other_keys is not None and other_type is not None
    assert len({a.shape, other_keys.shape, other_type.shape}) == 3


def test_the_shape_id_is_the_same_in_every_process() -> None:
    """A hash of the structure (blake2b), not Python's salted `hash()`: pinned here, and the
    same in a fresh interpreter with another hash seed."""
    expected = "s-" + _pinned_wechat_id()
    assert detect(WECHAT).shape == expected  # type: ignore[union-attr]
    code = (
        "from proxy.rules.suspect import detect; print(detect({'errmsg': 'y', 'errcode': 2}).shape)"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": sys.path[0]},
        )  # fmt: skip
        assert out.stdout.strip() == expected


def _pinned_wechat_id() -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=4)
    digest.update(b"errcode\x00errmsg")
    digest.update(b"\x01/errcode\x00number")
    return digest.hexdigest()


def test_no_free_text_is_kept() -> None:
    secret = "SECRET-hunter2 do not store"
    found = detect(
        {"errcode": 1, "errmsg": secret, "meta": {"code": 500, "message": secret}, secret: 1}
    )
    assert found is not None
    assert "hunter2" not in repr(found)


# --- bounds ---------------------------------------------------------------------------------


def test_a_data_map_is_not_read() -> None:
    doc: dict[str, object] = {f"k{i}": i for i in range(sus.MAX_MEMBERS)}
    doc["error"] = "x"
    assert detect(doc) is None  # MAX_MEMBERS + 1 members
    del doc["k0"]
    assert _pointers(doc) == ["/error"]


def test_long_keys_are_neither_markers_nor_descended_into() -> None:
    long = "error" + "_" * sus.MAX_KEY_CHARS
    assert detect({long: "x"}) is None
    assert detect({"k" * (sus.MAX_KEY_CHARS + 1): {"error": "x"}}) is None
    assert _pointers({"k" * sus.MAX_KEY_CHARS: {"error": "x"}}) == [
        "/" + "k" * sus.MAX_KEY_CHARS + "/error"
    ]


def test_only_the_first_objects_are_looked_into() -> None:
    doc: dict[str, object] = {f"o{i:03d}": {"x": 1} for i in range(sus.MAX_NESTED)}
    doc["z"] = {"error": "x"}
    assert detect(doc) is None
    doc.pop("o000")
    assert _pointers(doc) == ["/z/error"]


def test_markers_and_listed_keys_are_capped() -> None:
    doc = {f"e{i:03d}": {"error": "x"} for i in range(sus.MAX_NESTED)}
    doc.update({f"k{i:03d}": 1 for i in range(100)})
    found = detect(doc)
    assert found is not None
    assert len(found.markers) == sus.MAX_MARKERS and len(found.keys) == sus.MAX_KEYS


def test_the_caches_are_bounded() -> None:
    rng = random.Random(20)
    for _ in range(100):
        detect({"".join(rng.choices("abcdefgh", k=12)): 1 for _ in range(100)} | {"error": "x"})
    assert len(sus._KINDS) <= sus.KIND_CACHE_SIZE
    for _ in range(2 * sus.OUTLINE_CACHE_SIZE):  # small suspect key sets: outlines cached
        detect({"".join(rng.choices("abcdefgh", k=12)): 1, "error": "x"})
    assert len(sus._OUTLINES) == sus.OUTLINE_CACHE_SIZE
    assert all(len(names) <= sus.OUTLINE_MAX_KEYS for names in sus._OUTLINES)


def test_deep_nesting_costs_nothing() -> None:
    deep: Any = {"error": "x"}
    for _ in range(5000):
        deep = {"a": deep}
    assert detect(deep) is None


# --- the corpora ----------------------------------------------------------------------------


def test_the_corpora_are_as_large_as_issue_20_asks() -> None:
    assert len(CLEAN) >= 40 and len(TUNNELLED) >= 15
    assert len({e.api.split(":")[0] for e in TUNNELLED}) >= 10


@pytest.mark.parametrize("entry", TUNNELLED, ids=lambda e: e.api)
def test_every_tunnelled_shape_is_suspect_with_its_markers(entry: discovery.Entry) -> None:
    found = _both(entry.body)
    assert found is not None
    assert [
        {"pointer": m.pointer, "type": m.type, "value": m.value, "status": m.status}
        for m in found.markers
    ] == entry.markers


@pytest.mark.parametrize("entry", TUNNELLED, ids=lambda e: e.api)
def test_no_preset_matches_a_tunnelled_shape(entry: discovery.Entry) -> None:
    """Why they need discovery: the embedded default passes every one of them as clean."""
    runtime = corpus._runtime()
    response = model.TestResponse(200, (("content-type", entry.content_type),), entry.raw)
    assert simulate(runtime.routes[0].rules, runtime, response).rule is None


@pytest.mark.parametrize("entry", CLEAN, ids=lambda e: e.api)
def test_no_clean_api_body_is_suspect(entry: discovery.Entry) -> None:
    assert _both(entry.body) is None


ISSUE_17_CLEAN = [e for e in corpus.entries() if e.corpus == "resources" or e.label == "clean"]


@pytest.mark.parametrize("entry", ISSUE_17_CLEAN, ids=lambda e: e.id)
def test_issue_17s_clean_bodies_are_not_suspect(entry: corpus.Entry) -> None:
    """Resources that describe a failure, and SPEC 3's ordinary JSON."""
    try:
        doc = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return  # not JSON: never inspected as such
    assert _both(doc) is None


# --- the reference model --------------------------------------------------------------------


def reference_markers(doc: object) -> list[str] | None:
    """The plain rule `detect` is held to: the pointers of a body's markers, one branch per
    sentence of SPEC 10 and of proxy/rules/suspect.py's module doc, over built objects."""
    if not isinstance(doc, dict) or len(doc) > sus.MAX_MEMBERS:
        return None

    def norm(key: str) -> str:
        return key.lower().replace("_", "").replace("-", "")

    def name_like(key: str) -> bool:
        return re.fullmatch(r"[A-Za-z0-9_.:$@-]{1,64}", key) is not None

    def marks(key: str, value: object) -> tuple[bool, bool]:
        """(is it a marker, is it a message marker)"""
        if not name_like(key):
            return False, False
        n = norm(key)
        named = n in {
            "error",
            "errors",
            "err",
            "errcode",
            "errorcode",
            "fault",
            "exception",
            "failure",
        }
        message = n in {"errmsg", "errormessage"}
        if named or message:
            empty = (
                value is None or value is False or value == "0" or value == ""
                or (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)
                or (isinstance(value, list | dict) and not value)
                or (isinstance(value, str) and value.lower() in sus.SUCCESS_TEXT)
            )  # fmt: skip
            return not empty, message and not named
        if n in {"ok", "success", "succeeded"} and value is False:
            return True, False
        word = n in {"status", "stat", "state", "result"}
        if (
            word
            and isinstance(value, str)
            and value.lower() in {"error", "fail", "failed", "failure"}
        ):
            return True, False
        numeric = n in {"status", "statuscode", "httpstatuscode", "httpstatus", "code"}
        return numeric and type(value) is int and 400 <= value <= 599, False

    def is_record(obj: dict[str, object]) -> bool:
        return resource_key(obj) is not None or any(sus._record_key(k) for k in obj)

    def zero_code(obj: dict[str, object]) -> bool:
        return any(
            norm(k) in sus.ZERO_CODE_KEYS and (v is None or v is False or v == 0 or v in ("0", ""))
            for k, v in obj.items()
        )

    def esc(key: str) -> str:
        return key.replace("~", "~0").replace("/", "~1")

    found: list[tuple[str, bool, int]] = []  # (pointer, message, holder number)
    holders: list[dict[str, object]] = [doc]
    nested = 0
    for key, value in doc.items():
        marker, message = marks(key, value)
        if marker:
            found.append((f"/{esc(key)}", message, 0))
        elif isinstance(value, dict) and nested < sus.MAX_NESTED:
            nested += 1
            if len(value) <= sus.MAX_MEMBERS and len(key) <= sus.MAX_KEY_CHARS:
                holders.append(value)
                for inner_key, inner in value.items():
                    marker, message = marks(inner_key, inner)
                    if marker:
                        found.append((f"/{esc(key)}/{esc(inner_key)}", message, len(holders) - 1))
    if not found or is_record(doc):
        return None
    full = {h for _, message, h in found if not message}
    kept = [
        (p, h) for p, message, h in found
        if not message or (h not in full and not zero_code(holders[h]))
    ]  # fmt: skip
    kept = [(p, h) for p, h in kept if h == 0 or not is_record(holders[h])]
    pointers = sorted(p for p, _ in kept[: sus.MAX_MARKERS])
    return pointers or None


def test_the_reference_agrees_on_every_table_and_corpus_body() -> None:
    bodies: list[object] = [d for d, _ in MARKERS] + NOT_MARKERS + RESOURCES
    bodies += [d for d, _ in ENVELOPES_WITH_REQUEST_IDS] + [d for d, _ in VALUES]
    bodies += [e.body for e in CLEAN + TUNNELLED]
    for doc in bodies:
        assert _pointers(doc) == reference_markers(doc), doc


_KEYS = st.sampled_from(
    [
        "error", "Errors", "err_code", "errmsg", "ErrorMessage", "fault", "exception", "ok",
        "success", "status", "State", "result", "code", "statusCode", "http_status", "id",
        "Id", "task_id", "request_id", "created_at", "message", "data", "meta", "Response",
        "name", "x",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 700), st.sampled_from([0.0, 1.5]),
    st.sampled_from(["", "0", "ok", "error", "FAILED", "fail", "x y", "E_1", "none"]),
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_the_reference_agrees_on_generated_bodies(doc: dict[str, object]) -> None:
    assert _pointers(doc) == reference_markers(doc)


def test_the_classifier_is_the_presets() -> None:
    """A marker's status comes from SPEC 4.4's keyword classifier, not a copy of it."""
    assert sus.keyword_status is keyword_status
