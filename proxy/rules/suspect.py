"""The suspect-shape detector of SPEC 10: does a JSON body that no rule of its route matched
carry an error marker, and what is its shape?

`detect` reads one parsed document (orjson's `dict`, or a `jsondoc` view: it reads members
with `get` and iteration only, so a view builds only the members it looks at) and returns a
`Suspect`, or None.  It runs on the hot path for every clean inspected body, so a body with
no marker key costs one cached dictionary lookup per member read (`_kind_of`); everything
else (resource test, values, statuses, the shape id) runs only once a marker was found.

Markers (SPEC 10), in an object at the top level or one object level down (`/Response/Error`);
a key's name is compared lower-cased with `_` and `-` removed:
- a *name* marker (`error`, `errors`, `err`, `errcode`, `errorcode`, `fault`, `exception`,
  `failure`) whose value is not null, false, 0, "0", "", [] or {}, nor a string that reads as
  success (`ok`, `success`, `none`, ...: WeChat answers `{"errcode": 0, "errmsg": "ok"}`);
- a *message* marker (`errmsg`, `errormessage`), the same test, counted only when nothing else
  in its object is a marker and no code beside it is 0 (SPEC's own example lists `/errcode`,
  not `/errmsg`: the message is what the classifier reads);
- `ok`, `success`, `succeeded` equal to JSON false;
- `status`, `stat`, `state`, `result` equal, case-insensitively, to error, fail, failed or
  failure;
- an integer `status`, `statusCode`, `httpStatusCode`, `http_status` or `code` (also
  `status_code`, by the same normalisation) between 400 and 599.

A resource that describes a failure is never suspect (SPEC 3): the error-envelope preset's test
(`presets.resource_key`) on the top-level object, and on the object that holds a nested
marker, and beyond it a broader reading of the same idea that only the detector uses
(`_record_key`): identity keys in any case (`Id`, `Arn`), `identifier`, a commit's `sha`, a
key naming the record's own id (`task_id`, `dag-run-id`, `jobId`; never a request, trace or
log id), or a lifecycle time stamp (`created_at`, `StartedOn`, `end_date`).

Bounds (what a hostile body can cost): objects with more than `MAX_MEMBERS` members are data
maps, not envelopes, and are not read; at most `MAX_NESTED` objects are looked into one level
down; keys of more than `MAX_KEY_CHARS` characters, or with characters outside a name's, are
never markers and never descended into; a `Suspect` holds at most `MAX_MARKERS` markers and
lists at most `MAX_KEYS` keys.  The key-kind cache holds at most `KIND_CACHE_SIZE` keys, the
outline cache at most `OUTLINE_CACHE_SIZE` key sets of at most `OUTLINE_MAX_KEYS` keys.

Reference model: the plain rule, one branch per SPEC sentence over fully built objects, is
`reference_markers` in tests/rules/test_suspect.py; a property holds both to the same pointers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from proxy.rules.presets import (
    FALLBACK_STATUS,
    RESOURCE_IDENTITY_KEYS,
    keyword_status,
    resource_key,
)
from proxy.wire.jsondoc import ARRAY_TYPES, OBJECT_TYPES, Object, json_type
from proxy.wire.pointer import escape_token

MAX_MEMBERS: Final = 256
"""An object with more members is read as a data map, not an envelope: never suspect."""
MAX_NESTED: Final = 32
"""Objects looked into one level down, in document order."""
MAX_MARKERS: Final = 16
"""Markers kept per body (document order); the shape is made of these."""
MAX_KEYS: Final = 64
"""Top-level keys listed in `Suspect.keys` (the shape id covers every key)."""
MAX_KEY_CHARS: Final = 64
"""A longer key is data, not a name: never a marker, never descended into, never listed."""
MAX_CODE_CHARS: Final = 64
"""The longest code-like value kept (SPEC 10: tokens of at most 64 characters)."""
KIND_CACHE_SIZE: Final = 4096
"""Keys whose kind is remembered; once full, further keys are classified each time."""
OUTLINE_CACHE_SIZE: Final = 256
"""Key sets of suspect objects whose outline (record test, listed keys, hash) is remembered."""
OUTLINE_MAX_KEYS: Final = 32
"""Only key sets this small are remembered (the cache holds at most 256 x 32 short keys)."""

# marker kinds of a key (bit flags: `status` is a word and a numeric marker)
_NAME: Final = 1
_MESSAGE: Final = 2
_FLAG: Final = 4
_WORD: Final = 8
_NUMERIC: Final = 16

_NAMES: Final = frozenset(
    {"error", "errors", "err", "errcode", "errorcode", "fault", "exception", "failure"}
)
_MESSAGE_NAMES: Final = frozenset({"errmsg", "errormessage"})
_FLAGS: Final = frozenset({"ok", "success", "succeeded"})
_WORD_KEYS: Final = frozenset({"status", "stat", "state", "result"})
FAILED_WORDS: Final = frozenset({"error", "fail", "failed", "failure"})
_NUMERIC_KEYS: Final = frozenset({"status", "statuscode", "httpstatuscode", "httpstatus", "code"})
# strings that say "no error" where an error marker's value goes
SUCCESS_TEXT: Final = frozenset(
    {"ok", "success", "succeeded", "successful", "none", "null", "false", "no error", "noerror"}
)
# codes that say "no error" beside a message marker
ZERO_CODE_KEYS: Final = frozenset({"code", "errcode", "errorcode", "errno", "ret", "retcode"})

# a name, as keys and code-like values are: what may be listed or stored
_NAME_CHARS: Final = re.compile(r"[A-Za-z0-9_.:$@-]{1,64}")
_CODE_LIKE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# members read for an object marker's value (SPEC 10: "its `Code`-like member"), by rank
_CODE_MEMBERS: Final = {"code": 0, "errcode": 1, "errorcode": 2, "faultcode": 3, "type": 4}
# members read for the message the classifier reads, by rank
_MESSAGE_MEMBERS: Final = {
    name: rank
    for rank, name in enumerate(
        (
            "message", "msg", "errmsg", "errormessage", "errormsg", "errordescription",
            "description", "detail", "details", "errordetail", "reason", "info",
            "faultstring", "statusmessage", "errorsummary", "cause", "title",
        )
    )
}  # fmt: skip

# --- the detector-only reading of "a resource that describes a failure" -------------------
_IDENTITY: Final = frozenset({"id", "uid", "uuid", "sid", "object", "arn", "identifier", "sha"})
_ID_SUFFIXES: Final = ("_id", "-id", "Id", "ID")
# ids of the request, not of a record: error envelopes carry these (SPEC 4.4)
_NOT_OWN_IDS: Final = tuple(
    word + "id"
    for word in (
        "request", "trace", "debug", "log", "correlation", "span", "host", "session",
        "error", "err", "incident", "event", "message", "msg",
    )
)  # fmt: skip
_LIFECYCLE: Final = re.compile(
    r"(?:last)?(?:create|created|creation|start|started|finish|finished|complete|completed"
    r"|completion|end|ended|stop|stopped|update|updated|modified|submit|submitted|queue"
    r"|queued|execution|executed|logical|schedule|scheduled|fail|failed|cancel|cancelled"
    r"|canceled)(?:at|on|time|date|datetime|timestamp|when)"
)


@dataclass(frozen=True, slots=True)
class Marker:
    """One error marker of a suspect body.

    `pointer` (RFC 6901) and `type` (the JSON type: object, array, string, number, boolean)
    are structure.  `value` is the short code-like value, or None: an integer's text, a
    token of at most 64 characters of `[A-Za-z0-9_.:-]`; for an object marker its `code`
    (then `errcode`, `errorCode`, `faultcode`, `type`) member, for an array the first
    element's (or the first element itself), at `value_pointer` (`/Response/Error/Code`,
    `/errors/0/code`); never a message marker's text.  `status` is
    the marker's own number for a numeric status marker, else the keyword classifier on the
    message inside or beside it (then on the value), else 502.
    """

    pointer: str
    type: str
    value: str | None
    status: int
    value_pointer: str | None = None  # where `value` was read, when not at `pointer`


@dataclass(frozen=True, slots=True)
class Suspect:
    """A body with error markers: its `shape` id (`s-` and 8 hex digits, a hash of the
    sorted top-level keys and the markers' pointers and types, never of values), its sorted
    top-level `keys` (names only, at most `MAX_KEYS`), and its `markers` by pointer."""

    shape: str
    keys: tuple[str, ...]
    markers: tuple[Marker, ...]

    @property
    def status(self) -> int:
        """The status the body implies: a numeric status marker's, else the first status a
        message placed, else 502."""
        placed = FALLBACK_STATUS
        for marker in self.markers:
            if marker.type == "number" and marker.value == str(marker.status):
                return marker.status  # a numeric status marker says it outright
            if placed == FALLBACK_STATUS:
                placed = marker.status
        return placed


# --- the hot path -------------------------------------------------------------------------

_KINDS: dict[str, int] = {}


def _kind_of(key: str) -> int:
    kind = _KINDS.get(key)
    if kind is None:
        kind = _learn(key)
    return kind


def _learn(key: str) -> int:
    """The marker kinds of `key` (0: none), remembered while the cache has room."""
    kind = 0
    if len(key) <= MAX_KEY_CHARS and _NAME_CHARS.fullmatch(key):
        name = _normalised(key)
        if name in _NAMES:
            kind |= _NAME
        if name in _MESSAGE_NAMES:
            kind |= _MESSAGE
        if name in _FLAGS:
            kind |= _FLAG
        if name in _WORD_KEYS:
            kind |= _WORD
        if name in _NUMERIC_KEYS:
            kind |= _NUMERIC
    if len(_KINDS) < KIND_CACHE_SIZE and len(key) <= MAX_KEY_CHARS:
        _KINDS[key] = kind
    return kind


def _normalised(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def detect(doc: object) -> Suspect | None:
    """The suspect shape of one parsed JSON document, or None when it carries no error
    marker (or is a resource that describes a failure, or not an object).  Pure; never
    raises on any JSON value."""
    if not isinstance(doc, OBJECT_TYPES) or len(doc) > MAX_MEMBERS:
        return None
    found: list[tuple[Object, str, str, int, object]] = []  # (holder, prefix, key, kind, value)
    nested = 0
    kinds = _KINDS
    for key in doc:
        kind = kinds.get(key)
        if kind is None:
            kind = _learn(key)
        value = doc.get(key)
        if kind and _is_marker(kind, value):
            found.append((doc, "", key, kind, value))
        elif isinstance(value, OBJECT_TYPES) and nested < MAX_NESTED:
            nested += 1
            if len(value) <= MAX_MEMBERS and len(key) <= MAX_KEY_CHARS:
                _scan_nested(value, key, found)
    if not found:
        return None
    return _suspect(doc, found)


def _scan_nested(
    inner: Object, key: str, found: list[tuple[Object, str, str, int, object]]
) -> None:
    kinds = _KINDS
    for name in inner:
        kind = kinds.get(name)
        if kind is None:
            kind = _learn(name)
        if kind:
            value = inner.get(name)
            if _is_marker(kind, value):
                found.append((inner, key, name, kind, value))


def marker_role(key: str, json_type: str) -> str:
    """What makes `key` with a value of `json_type` a marker, as `_is_marker` tests it:
    `name` (a value that is not empty, zero, false or a success word), `message` (the
    same, and only alone in its object with no zero code beside it), `flag` (false),
    `word` (one of `FAILED_WORDS`, any case), `numeric` (an integer 400-599), or "" when
    it cannot be one.  For rules made from a shape (`tools.suggest_rules`)."""
    kind = _kind_of(key)
    if kind & _NAME:
        return "name"
    if kind & _MESSAGE:
        return "message"
    if kind & _FLAG and json_type == "boolean":
        return "flag"
    if kind & _WORD and json_type == "string":
        return "word"
    if kind & _NUMERIC and json_type == "number":
        return "numeric"
    return ""


def _is_marker(kind: int, value: object) -> bool:
    if kind & (_NAME | _MESSAGE):
        if value is None or value is False or value is True:
            return value is True
        if isinstance(value, str):
            return value != "0" and value != "" and value.lower() not in SUCCESS_TEXT
        if isinstance(value, int | float):
            return value != 0
        return len(value) > 0  # type: ignore[arg-type]  # an object or an array
    if kind & _FLAG and value is False:
        return True
    if kind & _WORD and isinstance(value, str) and value.lower() in FAILED_WORDS:
        return True
    return bool(kind & _NUMERIC and type(value) is int and 400 <= value <= 599)


# --- once a marker was found --------------------------------------------------------------


def _suspect(doc: Object, found: list[tuple[Object, str, str, int, object]]) -> Suspect | None:
    outline = _outline(doc)
    if outline.record:
        return None  # a resource that describes a failure (SPEC 3, 4.4)
    markers: list[Marker] = []
    for holder, prefix, key, kind, value in _without_lone_messages(found):
        if prefix and _outline(holder).record:
            continue
        markers.append(_marker(holder, prefix, key, kind, value))
        if len(markers) == MAX_MARKERS:
            break
    if not markers:
        return None
    markers.sort(key=lambda m: m.pointer)
    digest = outline.digest.copy()
    for marker in markers:
        digest.update(f"\x01{marker.pointer}\x00{marker.type}".encode("utf-8", "surrogatepass"))
    return Suspect("s-" + digest.hexdigest(), outline.listed, tuple(markers))


@dataclass(frozen=True, slots=True)
class _Outline:
    """What a key set says, whatever the values: is it a record (`resource_key` and
    `_record_key` read keys only), its keys as a `Suspect` lists them, and the shape hash
    of its sorted keys."""

    record: bool
    listed: tuple[str, ...]
    digest: hashlib.blake2b  # over the sorted keys; copied, never updated


_OUTLINES: dict[tuple[str, ...], _Outline] = {}


def _outline(obj: Object) -> _Outline:
    """`obj`'s outline, remembered for at most `OUTLINE_CACHE_SIZE` small key sets (the
    same few envelopes repeat: a cache hit saves ~5 µs a suspect body)."""
    names = tuple(obj)
    outline = _OUTLINES.get(names)
    if outline is not None:
        return outline
    keys = sorted(names)
    digest = hashlib.blake2b(digest_size=4)
    digest.update("\x00".join(keys).encode("utf-8", "surrogatepass"))
    outline = _Outline(
        record=resource_key(obj) is not None or _is_record(obj),
        listed=tuple(k for k in keys if _NAME_CHARS.fullmatch(k))[:MAX_KEYS],
        digest=digest,
    )
    if len(_OUTLINES) < OUTLINE_CACHE_SIZE and len(names) <= OUTLINE_MAX_KEYS:
        _OUTLINES[names] = outline
    return outline


def _without_lone_messages(
    found: list[tuple[Object, str, str, int, object]],
) -> list[tuple[Object, str, str, int, object]]:
    """A message marker counts only when nothing else in its object is a marker and no
    code beside it is zero (`{"errcode": 0, "errmsg": "..."}` is a success)."""
    if all(kind & ~_MESSAGE for _, _, _, kind, _ in found):
        return found
    others = {id(holder) for holder, _, _, kind, _ in found if kind & ~_MESSAGE}
    kept = []
    for entry in found:
        holder, _, _, kind, _ = entry
        if kind & ~_MESSAGE or (id(holder) not in others and not _zero_code_beside(holder)):
            kept.append(entry)
    return kept


def _zero_code_beside(holder: Object) -> bool:
    for key in holder:
        if _normalised(key) in ZERO_CODE_KEYS:
            value = holder.get(key)
            if value is None or value is False or value == 0 or value == "0" or value == "":
                return True
    return False


def _is_record(obj: Object) -> bool:
    return any(_record_key(key) for key in obj)


def _record_key(key: str) -> bool:
    """Does `key` say that its object is a record of something (the detector's broader
    reading of SPEC 4.4's resource identity; see the module doc)?"""
    if len(key) > MAX_KEY_CHARS or key in RESOURCE_IDENTITY_KEYS:
        return False  # `resource_key` decided on these (a JSON-RPC `id` is the request's)
    name = _normalised(key)
    if name in _IDENTITY:
        return True
    if key.endswith(_ID_SUFFIXES) and len(name) > 2 and not name.endswith(_NOT_OWN_IDS):
        return True
    return _LIFECYCLE.fullmatch(name) is not None


def _marker(holder: Object, prefix: str, key: str, kind: int, value: object) -> Marker:
    pointer = f"/{escape_token(prefix)}/{escape_token(key)}" if prefix else f"/{escape_token(key)}"
    kind_name = json_type(value)
    if kind & _NUMERIC and type(value) is int and 400 <= value <= 599:
        return Marker(pointer, kind_name, str(value), value)
    code: str | None = None
    inside: str | None = None  # a message within the marker's own value
    at: str | None = None  # where `code` is, below the marker
    if kind & _MESSAGE and not kind & _NAME:
        inside = value if isinstance(value, str) else None  # free text: never a value
    elif isinstance(value, str):
        code = _code_text(value)
        inside = value
    elif type(value) is int:
        code = _code_text(value)
    elif isinstance(value, OBJECT_TYPES):
        code, inside, member = _code_and_message(value)
        at = f"{pointer}/{escape_token(member)}" if member is not None else None
    elif isinstance(value, ARRAY_TYPES) and len(value) > 0:
        first = value[0]
        if isinstance(first, OBJECT_TYPES):
            code, inside, member = _code_and_message(first)
            at = f"{pointer}/0/{escape_token(member)}" if member is not None else None
        else:
            code = _code_text(first)
            inside = first if isinstance(first, str) else None
            at = f"{pointer}/0" if code is not None else None
    status = None
    for text in (inside, _message_beside(holder, key), code):
        if text:
            status = keyword_status(text)
            if status is not None:
                break
    return Marker(pointer, kind_name, code, status or FALLBACK_STATUS, at)


def _code_text(value: object) -> str | None:
    """`value` when it is code-like (SPEC 10): an integer, or a short token."""
    if type(value) is int:
        text = str(value)
        return text if len(text) <= MAX_CODE_CHARS else None
    if isinstance(value, str) and _CODE_LIKE.fullmatch(value):
        return value
    return None


def _code_and_message(obj: Object) -> tuple[str | None, str | None, str | None]:
    """An object marker's code-like member's value, its message, and the member's key,
    by rank; at most `MAX_MEMBERS` members are read."""
    code, code_rank, code_key = None, len(_CODE_MEMBERS), None
    message, message_rank = None, len(_MESSAGE_MEMBERS)
    for n, key in enumerate(obj):
        if n == MAX_MEMBERS:
            break
        name = _normalised(key)
        rank = _CODE_MEMBERS.get(name)
        if rank is not None and rank < code_rank:
            text = _code_text(obj.get(key))
            if text is not None:
                code, code_rank, code_key = text, rank, key
        rank = _MESSAGE_MEMBERS.get(name)
        if rank is not None and rank < message_rank:
            found = obj.get(key)
            if isinstance(found, str) and found:
                message, message_rank = found, rank
    return code, message, code_key


def _message_beside(holder: Object, marker_key: str) -> str | None:
    message, message_rank = None, len(_MESSAGE_MEMBERS)
    for n, key in enumerate(holder):
        if n == MAX_MEMBERS:
            break
        if key == marker_key:
            continue
        rank = _MESSAGE_MEMBERS.get(_normalised(key))
        if rank is not None and rank < message_rank:
            text = holder.get(key)
            if isinstance(text, str) and text:
                message, message_rank = text, rank
    return message
