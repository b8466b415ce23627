"""Structured logs: one JSON object per line, or text for humans (SPEC section 9)."""

from __future__ import annotations

import io
import json

from proxy.observe.logs import Log


def test_json_lines() -> None:
    out = io.StringIO()
    log = Log("json", stream=out)
    log.event("request", route="r", code=401, rule=None, traceId="ab" * 16)
    log.event("shutdown")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "request" and first["route"] == "r" and first["code"] == 401
    assert first["rule"] is None
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["event"] == "shutdown"


def test_text_lines_for_humans() -> None:
    out = io.StringIO()
    Log("text", stream=out).event("request", route="r", code=504, rule=None, path="/a b")
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert " request route=r code=504 path=/a b" in line
    assert "rule=" not in line  # empty fields are left out


def test_a_closed_stream_never_raises() -> None:
    out = io.StringIO()
    out.close()
    Log("json", stream=out).event("request", route="r")  # must not raise


async def test_access_lines_are_flushed_soon_not_at_once() -> None:
    import asyncio

    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1
            super().flush()

    out = Counting()
    log = Log("json", stream=out)
    for i in range(100):
        log.access(route="r", code=200, n=i)
    assert Counting.flushes == 0  # one flush for the whole burst, a moment later
    await asyncio.sleep(0.2)
    assert Counting.flushes == 1
    assert len(out.getvalue().splitlines()) == 100
    log.event("shutdown")  # other events are flushed at once
    assert Counting.flushes == 2


async def test_an_unbuffered_stdout_gets_one_write_per_burst() -> None:
    """The image runs Python with PYTHONUNBUFFERED=1: stdout writes straight through, so the
    buffering must be the log's own (once a write system call per request)."""
    import asyncio

    class Unbuffered(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Unbuffered.writes += 1
            return super().write(text)

    out = Unbuffered()
    log = Log("json", stream=out)
    log.event("startup")
    assert Unbuffered.writes == 1
    for i in range(100):
        log.access(route="r", code=200, n=i)
    assert Unbuffered.writes == 1  # nothing written yet
    await asyncio.sleep(0.2)
    assert Unbuffered.writes == 2  # the 100 lines in one write
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["startup"] + ["request"] * 100
    assert [json.loads(line)["n"] for line in lines[1:]] == list(range(100))
    log.access(route="r", code=200, n=100)
    log.event("shutdown")  # an event writes the access lines before it, in order
    assert [json.loads(line).get("n") for line in out.getvalue().splitlines()[-2:]] == [100, None]


def test_time_stamps_are_consistent() -> None:
    out = io.StringIO()
    log = Log("json", stream=out)
    for _ in range(50):
        log.event("x")
    stamps = [json.loads(line)["time"] for line in out.getvalue().splitlines()]
    assert stamps == sorted(stamps)
    assert all(len(s) == len("2026-11-25T08:00:00.000Z") for s in stamps)


async def test_a_line_is_stamped_when_logged_not_when_written() -> None:
    import asyncio
    import datetime

    out = io.StringIO()
    log = Log("json", stream=out)
    logged = datetime.datetime.now(datetime.UTC)
    log.access(route="r", code=200)
    await asyncio.sleep(0.3)  # written by the flush timer, 100 ms later
    (line,) = out.getvalue().splitlines()
    stamp = datetime.datetime.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs((stamp - logged).total_seconds()) < 0.05


async def test_a_full_buffer_is_written_at_once() -> None:
    from proxy.observe.logs import FLUSH_LINES

    out = io.StringIO()
    log = Log("json", stream=out)
    for i in range(FLUSH_LINES - 1):
        log.access(route="r", n=i)
    assert out.getvalue() == ""
    log.access(route="r", n=FLUSH_LINES - 1)  # memory for waiting lines is bounded
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(FLUSH_LINES))


def test_json_lines_carry_the_millisecond_and_every_field_once() -> None:
    import datetime

    log = Log("json", stream=io.StringIO())
    for now in (1795612834.0, 1795612834.0415, 1795612834.9999, 1795612835.5):
        line = log._json(now, "request", {"route": "r", "time": "x", "event": "y", "n": 1})
        doc = json.loads(line)
        expected = datetime.datetime.fromtimestamp(now, datetime.UTC)
        assert (
            doc["time"] == expected.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(now % 1 * 1000):03d}Z"
        )
        assert doc == {"time": doc["time"], "event": "request", "route": "r", "n": 1}
        assert line.count(b'"time"') == 1 and line.count(b'"event"') == 1
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert log._line(now, "request", {"n": 1}).startswith(doc["time"] + " request n=1")
