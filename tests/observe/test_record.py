"""proxy.observe.record: one `RequestEnded` is one requests_total sample, one duration
observation and one access-log line, of the same shape for the handler and the server."""

from __future__ import annotations

import io
import json

from proxy.observe.logs import Log
from proxy.observe.metrics import Metrics
from proxy.observe.record import Recorder, RequestEnded

HANDLED = RequestEnded(
    route="api", method="GET", path="/users", code=200, true_code=503, source="flagged",
    total_seconds=0.0123456789, trace_id="ab" * 16, rule="slack", action="flag",
    upstream_seconds=0.01, attempts=1,
)  # fmt: skip
REFUSED = RequestEnded(
    route="(unmatched)", method=None, path=None, code=431, true_code=431, source="proxy",
    total_seconds=0.5, trace_id="cd" * 16, error="request_header_fields_too_large",
)  # fmt: skip


def _record(*ended: RequestEnded) -> tuple[Metrics, list[dict[str, object]]]:
    out = io.StringIO()
    log = Log("json", stream=out)
    metrics = Metrics()
    recorder = Recorder(metrics, log)
    for r in ended:
        recorder.ended(r)
    log.flush()
    return metrics, [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_request_is_one_sample_by_its_true_class() -> None:
    metrics, _ = _record(HANDLED, HANDLED)
    labels = {"route": "api", "method": "GET", "code": "200", "class": "5xx", "source": "flagged"}
    assert metrics.registry.get_sample_value("tunnelguard_requests_total", labels) == 2.0
    count = metrics.registry.get_sample_value(
        "tunnelguard_request_duration_seconds_count", {"route": "api", "class": "5xx"}
    )
    assert count == 2.0


def test_a_request_that_never_parsed_counts_as_method_other() -> None:
    metrics, _ = _record(REFUSED)
    labels = {
        "route": "(unmatched)", "method": "other", "code": "431", "class": "4xx",
        "source": "proxy",
    }  # fmt: skip
    assert metrics.registry.get_sample_value("tunnelguard_requests_total", labels) == 1.0


def test_handled_and_refused_lines_have_one_shape() -> None:
    _, (handled, refused) = _record(HANDLED, REFUSED)
    common = [
        "route", "method", "path", "code", "true_code", "source", "rule", "action",
        "upstream_time", "total_time", "failure", "attempts",
    ]  # fmt: skip
    assert [k for k in handled if k not in ("time", "event")] == [*common, "traceId", "pid"]
    assert [k for k in refused if k not in ("time", "event")] == [
        *common, "error", "traceId", "pid",
    ]  # fmt: skip
    assert handled["total_time"] == 0.012346 and handled["upstream_time"] == 0.01
    assert handled["true_code"] == 503 and handled["rule"] == "slack"
    assert refused["method"] is None and refused["path"] is None
    assert refused["error"] == "request_header_fields_too_large"


def test_a_suspect_line_carries_its_shape_id() -> None:
    """SPEC 9: `suspect` is in the access line when there is one, and only then."""
    suspect = RequestEnded(
        route="api", method="GET", path="/users", code=200, true_code=200, source="upstream",
        total_seconds=0.01, trace_id="ef" * 16, attempts=1, suspect="s-3f9a1c2e",
    )  # fmt: skip
    metrics, (line, handled) = _record(suspect, HANDLED)
    assert line["suspect"] == "s-3f9a1c2e" and "suspect" not in handled
    assert list(line)[-3:] == ["suspect", "traceId", "pid"]
    labels = {"route": "api", "method": "GET", "code": "200", "class": "2xx", "source": "upstream"}
    assert metrics.registry.get_sample_value("tunnelguard_requests_total", labels) == 1.0
