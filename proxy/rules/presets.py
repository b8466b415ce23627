"""The built-in presets of SPEC 4.4: `slack`, `graphql`, `jsonrpc`, `error-envelope`.

A preset looks at ONE parsed JSON value (orjson's plain values, or a simdjson view of them:
`proxy.wire.jsondoc`) and says whether it is a tunnelled error and which honest status it
stands for.  Top-level arrays (JSON-RPC batches) are split by the caller (SPEC 4.1), so a
preset handed anything but an object finds nothing.

Every table is built at import or at `build_preset` time; `evaluate` only does lookups, and
never raises on any JSON value: a value of the wrong type is treated as absent.  The status
tables (read-only), `keyword_row` and `envelope_message` are public for `ruletrace`, which
explains a preset's verdict from the very tables and lookups the preset uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol

from proxy.config.model import PRESET_NAMES
from proxy.wire.jsondoc import ARRAY_TYPES, OBJECT_TYPES, SIZED_TYPES, Object

GRAPHQL_RESPONSE_JSON: Final = "application/graphql-response+json"
"""The GraphQL-over-HTTP media type; only replies of this type are rewritten."""

FALLBACK_STATUS: Final = 502
"""Status for an error the tables cannot place: the upstream failed, we do not know how."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A tunnelled error found in a body.

    `status` is the honest 4xx/5xx status.  `flag_only` is True when the SPEC says the reply
    must only be flagged (GraphQL legacy `application/json` replies and partial results).
    `message` is the error message or code found, for problem bodies and `explain`.
    """

    status: int
    flag_only: bool
    message: str | None


class Preset(Protocol):
    """A compiled preset.  `evaluate` is pure, allocation-light and never raises."""

    @property
    def name(self) -> str: ...

    def evaluate(self, doc: object, media_type: str) -> Hit | None:
        """The hit for one JSON value, or None when it is not an error.

        `media_type` is lowercased, without parameters.
        """
        ...


# --- the keyword classifier ---------------------------------------------------------------

# Rows in the SPEC's order; the first row with a keyword in the message wins, so the order is
# the contract ("Request timed out: service unavailable" is a 504, not a 503).
KEYWORD_ROWS: Final[tuple[tuple[tuple[str, ...], int], ...]] = (
    (("timeout", "timed out", "deadline exceeded"), 504),
    (("unavailable", "overloaded", "busy", "maintenance", "try again later"), 503),
    (
        ("rate limit", "ratelimit", "too many requests", "throttl", "limit exceeded", "quota"),
        429,
    ),
    (
        (
            "unauthenticated",
            "unauthorized",
            "not authenticated",
            "authentication",
            "invalid token",
            "api key",
            "credentials",
            "expired",
        ),
        401,
    ),
    (("forbidden", "permission", "denied", "not allowed"), 403),
    (("not found", "no such", "does not exist"), 404),
    (("invalid", "bad request", "malformed", "missing"), 400),
)


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """The classifier row that placed a message: the `keyword` found, the whole `row`."""

    keyword: str
    row: tuple[str, ...]
    status: int


def keyword_row(message: str) -> KeywordHit | None:
    """The SPEC 4.4 keyword classifier, saying which keyword of which row matched.

    Case-insensitive substring search after `_` and `-` are read as spaces (so `RATE_LIMITED`
    reads "rate limited"); the first matching row wins.  None: no row matches.
    """
    text = message.lower().replace("_", " ").replace("-", " ")
    for keywords, status in KEYWORD_ROWS:
        for keyword in keywords:
            if keyword in text:
                return KeywordHit(keyword, keywords, status)
    return None


def keyword_status(message: str) -> int | None:
    """The SPEC 4.4 keyword classifier: the status for an error message, or None."""
    hit = keyword_row(message)
    return None if hit is None else hit.status


def _classify_any(message: str | None) -> int | None:
    return None if message is None else keyword_status(message)


# --- slack --------------------------------------------------------------------------------

SLACK_STATUS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "invalid_auth": 401,
        "not_authed": 401,
        "token_revoked": 401,
        "account_inactive": 401,
        "missing_scope": 403,
        "not_allowed_token_type": 403,
        "channel_not_found": 404,
        "user_not_found": 404,
        "invalid_arguments": 400,
        "invalid_arg_name": 400,
        "ratelimited": 429,
        "service_unavailable": 503,
        "internal_error": 500,
        "fatal_error": 500,
    }
)


@dataclass(frozen=True, slots=True)
class SlackPreset:
    """Slack Web API: `ok: false` (exactly JSON false) → status from the `error` code table.

    Slack's codes are a closed vocabulary, so an unknown code is a 502, not a guess by keyword.
    """

    name: str = field(default="slack", init=False)

    def evaluate(self, doc: object, media_type: str) -> Hit | None:
        # `is False`: 0 and "false" are not JSON false (orjson and simdjson give the singleton).
        if not isinstance(doc, OBJECT_TYPES) or doc.get("ok") is not False:
            return None
        error = doc.get("error")
        if not isinstance(error, str):
            return Hit(FALLBACK_STATUS, False, None)
        return Hit(SLACK_STATUS.get(error, FALLBACK_STATUS), False, error)


# --- graphql ------------------------------------------------------------------------------

# Case-sensitive: these are the codes servers emit (Apollo, Hasura, GitHub, Shopify).
GRAPHQL_STATUS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "UNAUTHENTICATED": 401,
        "invalid-jwt": 401,
        "access-denied": 401,
        "FORBIDDEN": 403,
        "BAD_USER_INPUT": 400,
        "GRAPHQL_PARSE_FAILED": 400,
        "GRAPHQL_VALIDATION_FAILED": 400,
        "validation-failed": 400,
        "THROTTLED": 429,
        "RATE_LIMITED": 429,
        "GATEWAY_TIMEOUT": 504,
        "SERVICE_UNAVAILABLE": 503,
        "INTERNAL_SERVER_ERROR": 500,
        "NOT_FOUND": 404,
    }
)


GRAPHQL_RESPONSE_KEYS: Final = frozenset({"data", "errors", "extensions"})


def graphql_foreign_key(doc: Object) -> str | None:
    """The first top-level key a GraphQL response cannot have, or None when every key is
    among `data`, `errors` and `extensions`."""
    for key in doc:
        if key not in GRAPHQL_RESPONSE_KEYS:
            return key
    return None


def _graphql_code(error: object) -> str | None:
    """`extensions.code` when it is a string, else `type` when it is a string."""
    if not isinstance(error, OBJECT_TYPES):
        return None
    extensions = error.get("extensions")
    if isinstance(extensions, OBJECT_TYPES):
        code = extensions.get("code")
        if isinstance(code, str):
            return code
    kind = error.get("type")
    return kind if isinstance(kind, str) else None


@dataclass(frozen=True, slots=True)
class GraphQLPreset:
    """GraphQL over HTTP: a non-empty `errors` list is an error.

    Only an `application/graphql-response+json` reply without `data` (absent or null) is
    rewritten.  Legacy `application/json` replies and partial results (non-null `data`) are
    flagged only: GraphQL-over-HTTP clients expect a 200 there, and rewriting would break them.
    A legacy reply is read as GraphQL only when its top-level keys are among `data`, `errors`
    and `extensions` (GraphQL spec, "Response Format"): `{"id": 42, "state": "completed",
    "errors": [...]}` is a batch import's result, not GraphQL.
    The status comes from `errors[0]`; an `errors[0]` that is not an object is a 502.
    """

    name: str = field(default="graphql", init=False)

    def evaluate(self, doc: object, media_type: str) -> Hit | None:
        if not isinstance(doc, OBJECT_TYPES):
            return None
        errors = doc.get("errors")
        if not isinstance(errors, ARRAY_TYPES) or not errors:
            return None
        if media_type != GRAPHQL_RESPONSE_JSON and graphql_foreign_key(doc) is not None:
            return None  # a legacy body not shaped like a GraphQL response (SPEC 4.4)
        first = errors[0]
        code = _graphql_code(first)
        status = FALLBACK_STATUS if code is None else GRAPHQL_STATUS.get(code, FALLBACK_STATUS)
        message = first.get("message") if isinstance(first, OBJECT_TYPES) else None
        if not isinstance(message, str):
            message = code
        flag_only = media_type != GRAPHQL_RESPONSE_JSON or doc.get("data") is not None
        return Hit(status, flag_only, message)


# --- jsonrpc ------------------------------------------------------------------------------

JSONRPC_STATUS: Final[Mapping[int, int]] = MappingProxyType(
    {
        -32700: 400,  # parse error
        -32600: 400,  # invalid request
        -32602: 400,  # invalid params
        -32601: 404,  # method not found
        -32603: 500,  # internal error
    }
)
JSONRPC_SERVER_ERROR_MIN: Final = -32099
JSONRPC_SERVER_ERROR_MAX: Final = -32000
"""JSON-RPC 2.0 reserves -32099..-32000 for implementation-defined server errors."""

_NO_CODES: Final[Mapping[int, int]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class JsonRpcPreset:
    """JSON-RPC 2.0: `"jsonrpc": "2.0"` with an `error` object whose `code` is an integer.

    Precedence: the route's `codes` override, then the standard code table, then the keyword
    classifier on `error.message`, then 500 for the server-error range, then 502.  An override
    wins because the same code means different things to different servers.
    """

    codes: Mapping[int, int] = field(hash=False)
    name: str = field(default="jsonrpc", init=False)

    def evaluate(self, doc: object, media_type: str) -> Hit | None:
        if not isinstance(doc, OBJECT_TYPES) or doc.get("jsonrpc") != "2.0":
            return None
        error = doc.get("error")
        if not isinstance(error, OBJECT_TYPES):
            return None
        code = error.get("code")
        # `type(...) is int`: JSON true/false are bools (an int subclass), -32603.0 is a float.
        if type(code) is not int:
            return None
        raw = error.get("message")
        message = raw if isinstance(raw, str) else str(code)
        status = self.codes.get(code)
        if status is None:
            status = JSONRPC_STATUS.get(code)
        if status is None:
            status = _classify_any(raw if isinstance(raw, str) else None)
        if status is None:
            server_error = JSONRPC_SERVER_ERROR_MIN <= code <= JSONRPC_SERVER_ERROR_MAX
            status = 500 if server_error else FALLBACK_STATUS
        return Hit(status, False, message)


# --- error-envelope -----------------------------------------------------------------------

ENVELOPE_STATUSES: Final = frozenset({"error", "fail", "failure"})
# A resource that describes a failure (SPEC 3, 4.4) carries, beside its error marker, its
# own identity or its lifecycle: the client asked about an operation, a job or a delivery and
# got it.  Request identifiers of an error envelope (request_id, trace_id, ...) are not here.
RESOURCE_IDENTITY_KEYS: Final = frozenset({"id", "uid", "uuid", "sid", "object", "arn"})
RESOURCE_IDENTITY_SUFFIXES: Final = ("Arn", "_arn")
LIFECYCLE_KEYS: Final = frozenset(
    {
        "done",  # Google AIP-151 operations (SPEC 4.4)
        "conclusion",  # CI runs (SPEC 4.4)
        # Beyond SPEC 4.4's list, decided with the corpus (docs/presets.md, "What is not a
        # tunnelled error"): operation records that name themselves only by a `name`, an
        # `operationId` or not at all still carry their own lifecycle.
        "completed",  # Elasticsearch task API
        "createTime",
        "startTime",
        "endTime",
        "updateTime",  # Google resources (AIP-148)
        "createdDateTime",
        "lastUpdatedDateTime",  # Azure long-running operations
    }
)
_ERROR_FIELDS: Final = ("message", "info", "code")
_TOP_FIELDS: Final = ("message", "error_message")


def resource_key(doc: Object) -> tuple[str, str] | None:
    """(the first top-level key that makes `doc` a resource, "resource identity" or
    "lifecycle field"), or None: the SPEC 4.4 test that keeps `error-envelope` (and the
    suspect-shape detector) off a resource that describes a failure."""
    for key in doc:
        if key == "id" and _jsonrpc_response(doc):
            continue  # a JSON-RPC `id` echoes the request's: a request identifier
        if key in RESOURCE_IDENTITY_KEYS or key.endswith(RESOURCE_IDENTITY_SUFFIXES):
            return key, "resource identity"
        if key in LIFECYCLE_KEYS:
            return key, "lifecycle field"
    return None


def _jsonrpc_response(doc: Object) -> bool:
    """Shaped like a JSON-RPC response, whose `id` is the request's: a `jsonrpc` member (2.0,
    section 5), or `result` and `error` side by side (1.0)."""
    return "jsonrpc" in doc or ("result" in doc and "error" in doc)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def envelope_message(doc: object) -> tuple[str, str] | None:
    """The SPEC 4.4 message chain of an envelope: the first non-empty string found, and the
    JSON pointer it was found at; None when there is none or `doc` is not an object.

    The error-envelope preset's `Hit.message` is exactly this message.
    """
    if not isinstance(doc, OBJECT_TYPES):
        return None
    error = doc.get("error")
    if isinstance(error, str):
        if error:
            return error, "/error"
    elif isinstance(error, OBJECT_TYPES):
        for key in _ERROR_FIELDS:
            found = _text(error.get(key))
            if found is not None:
                return found, f"/error/{key}"
    elif isinstance(error, ARRAY_TYPES) and error and isinstance(error[0], OBJECT_TYPES):
        found = _text(error[0].get("message"))
        if found is not None:
            return found, "/error/0/message"
    for key in _TOP_FIELDS:
        found = _text(doc.get(key))
        if found is not None:
            return found, f"/{key}"
    return None


@dataclass(frozen=True, slots=True)
class ErrorEnvelopePreset:
    """Generic envelopes: a non-empty top-level `error`, `success: false`, or a JSend-style
    `status` of error/fail/failure.

    Status: the keyword classifier on the message, else 400 for `status: fail` (JSend: the
    client's data was rejected), else 502.  Only `error` is looked at, never `errors`.
    A body that also carries a top-level resource identity or lifecycle field
    (`resource_key`) is a resource that describes a failure and does not match.
    """

    name: str = field(default="error-envelope", init=False)

    def evaluate(self, doc: object, media_type: str) -> Hit | None:
        if not isinstance(doc, OBJECT_TYPES):
            return None
        error = doc.get("error")
        status_field = doc.get("status")
        is_status = isinstance(status_field, str) and status_field in ENVELOPE_STATUSES
        has_error = isinstance(error, SIZED_TYPES) and len(error) > 0
        if not (has_error or is_status or doc.get("success") is False):
            return None
        if resource_key(doc) is not None:
            return None  # a resource that describes a failure is not a tunnelled error
        found = envelope_message(doc)
        message = None if found is None else found[0]
        status = _classify_any(message)
        if status is None:
            status = 400 if status_field == "fail" else FALLBACK_STATUS
        return Hit(status, False, message)


# --- building -----------------------------------------------------------------------------

_SLACK: Final = SlackPreset()
_GRAPHQL: Final = GraphQLPreset()
_ENVELOPE: Final = ErrorEnvelopePreset()
_JSONRPC: Final = JsonRpcPreset(codes=_NO_CODES)


def _checked_codes(codes: Mapping[int, int]) -> Mapping[int, int]:
    checked: dict[int, int] = {}
    for code, status in codes.items():
        if type(code) is not int:
            raise ValueError(f"jsonrpc codes: expected an integer code, got {code!r}")
        if type(status) is not int or not 400 <= status <= 599:
            raise ValueError(f"jsonrpc codes[{code}]: expected a 4xx or 5xx status, got {status!r}")
        checked[code] = status
    return MappingProxyType(checked)


def build_preset(name: str, jsonrpc_codes: Mapping[int, int] | None = None) -> Preset:
    """The preset called `name`, compiled.

    `jsonrpc_codes` (a route's `preset_options.jsonrpc.codes`) is copied; other presets ignore
    it.  Raises ValueError for an unknown name, a non-integer code or a status outside 4xx/5xx.
    """
    if name == "slack":
        return _SLACK
    if name == "graphql":
        return _GRAPHQL
    if name == "error-envelope":
        return _ENVELOPE
    if name == "jsonrpc":
        if not jsonrpc_codes:
            return _JSONRPC
        return JsonRpcPreset(codes=_checked_codes(jsonrpc_codes))
    raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
