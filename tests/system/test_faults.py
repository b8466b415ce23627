"""Nothing lost (issue 5): a real proxy process in front of a misbehaving upstream.

The upstream is a raw asyncio TCP server so the test controls every byte.  Each request
it reads gets one behaviour, drawn from `random.Random(f"{SEED}/{request id}/{nth read}")`,
so a request meets the same faults in the same order on every run; a fresh connection
may also be closed before anything is read (drawn from the connection order).  A bounded
burst of GETs, unkeyed POSTs and keyed POSTs then checks SPEC 6.1-6.3 end to end:
exactly one outcome per request, the outcome the table gives for what its last attempt
met, no non-idempotent request sent twice, no file descriptor or memory left behind,
and metrics that add up.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RawServer, run_tunnelguard

SEED = 5
REQUESTS = 2000
CONCURRENCY = 50
WARMUP = 50
ATTEMPTS = 2
RETRY_AFTER = "5"  # the upstream's `retry_after` default
CLIENT_TIMEOUT = 10.0
BURST_BOUND = 120.0  # seconds for the whole burst
STALL_CAP = 3.0  # a stalled answer waits this long at most for the proxy to give up
SETTLE = 10.0  # seconds for the proxy's fds to come back after the burst
POOL_DRAIN = 15.0  # idle pooled upstream connections: 4 s keep-alive + a cleanup tick
FD_SLACK = 5
RSS_GROWTH_MIB = 40
TRACE_ID = re.compile(r"[0-9a-f]{32}")

# What one read request gets, and how often.
BEHAVIOURS = {
    "good_keepalive": 40,  # 200 + small JSON, the connection stays open
    "good_close": 10,  # 200 + small JSON + Connection: close
    "hangup": 8,  # the request is read, then the connection is closed
    "garbage": 8,  # `HELLO\r\n\r\n`; the proxy must then close the connection
    "stall": 5,  # no answer until the proxy gives up (timeouts.response), then close
    "midbody_json": 6,  # JSON head with Content-Length 1000, 10 bytes, close (inspected)
    "midbody_stream": 6,  # the same as octet-stream: relayed, so the head is already sent
}
UNREAD_SHARE = 0.03  # fresh connections closed before the request is read

# The outcome the failure table (SPEC 6.1) gives for what the last attempt met.
EXPECTED_STATUS = {
    "good_keepalive": 200,
    "good_close": 200,
    "hangup": 502,  # so is a connection closed before the request was read
    "garbage": 502,
    "midbody_json": 502,
    "stall": 504,
    "midbody_stream": None,  # the client connection is aborted
}
PROXY_ERRORS = {502: "http_protocol_error", 504: "http_response_timeout"}
ABORTED = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


# -- the misbehaving upstream ----------------------------------------------------------------


@dataclass(slots=True)
class Read:
    """One request as the upstream read it."""

    behaviour: str
    method: str
    target: str
    traceparent: str | None
    idempotency_key: str | None
    body: bytes


@dataclass
class FaultyUpstream(RawServer):
    """A raw HTTP/1.1 server on 127.0.0.1 that misbehaves per request (see BEHAVIOURS)."""

    faulty: bool = False  # off during warm-up: every answer is good and kept alive
    reads: dict[str, list[Read]] = field(default_factory=dict)  # by X-Req-Id
    unread: int = 0  # connections closed before reading anything
    anomalies: list[str] = field(default_factory=list)
    _conn_rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    _idle: set[asyncio.StreamWriter] = field(default_factory=set)

    def close_idle(self) -> None:
        """Hang up on kept-alive connections waiting for their next request."""
        for writer in self._idle:
            writer.close()

    def count(self, behaviour: str) -> int:
        return sum(r.behaviour == behaviour for reads in self.reads.values() for r in reads)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.faulty and self._conn_rng.random() < UNREAD_SHARE:
                self.unread += 1
                return  # close without reading: whatever the proxy sent is never read
            while await self._one(reader, writer):
                pass
        finally:
            self._idle.discard(writer)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        self._idle.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the proxy closed a pooled connection
        finally:
            self._idle.discard(writer)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self.anomalies.append(f"{target}: body sent chunked")
            return False
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        rid = headers.get("x-req-id", "")
        earlier = self.reads.setdefault(rid, [])
        behaviour = "good_keepalive"
        if self.faulty:
            rng = random.Random(f"{SEED}/{rid}/{len(earlier)}")
            behaviour = rng.choices(list(BEHAVIOURS), list(BEHAVIOURS.values()))[0]
        earlier.append(
            Read(
                behaviour,
                method,
                target,
                headers.get("traceparent"),
                headers.get("idempotency-key"),
                body,
            )
        )
        return await self._answer(behaviour, rid, reader, writer)

    async def _answer(
        self,
        behaviour: str,
        rid: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if behaviour in ("good_keepalive", "good_close"):
            body = json.dumps({"ok": True, "req": rid}).encode()
            close = b"Connection: close\r\n" if behaviour == "good_close" else b""
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + close
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            return behaviour == "good_keepalive"
        if behaviour in ("garbage", "stall"):
            if behaviour == "garbage":
                writer.write(b"HELLO\r\n\r\n")
                await writer.drain()
            try:  # the proxy must drop a connection it cannot use: wait for it to close
                await asyncio.wait_for(reader.read(1), STALL_CAP)
            except TimeoutError:
                self.anomalies.append(f"{rid}: {behaviour} connection kept for {STALL_CAP} s")
        elif behaviour in ("midbody_json", "midbody_stream"):
            json_body = behaviour == "midbody_json"
            ctype = b"application/json" if json_body else b"application/octet-stream"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: 1000\r\n\r\n"
                b'{"ok":true'
            )
            await writer.drain()
        return False  # hangup, and every fault above, ends with a close


# -- the proxy process ---------------------------------------------------------------------


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    listen: str = ""
    admin: str = ""

    def records(self, event: str = "request") -> list[dict[str, object]]:
        lines = self.out.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("event") == event]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str], ProxyProcess]]:
    """`tunnelguard run` as a real process; stdout (one line per request) goes to a file."""
    started: list[ProxyProcess] = []

    def start(config: str) -> ProxyProcess:
        path = tmp_path / "faults.yaml"
        path.write_text(config)
        out, err = tmp_path / "proxy.out", tmp_path / "proxy.err"
        args = ["--config", str(path), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        proc = run_tunnelguard(args, out, err)
        started.append(ProxyProcess(proc, out, err))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


async def _poll(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Bounded polling: True as soon as `check()` holds, False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def _started(proxy: ProxyProcess) -> None:
    def ready() -> bool:
        if proxy.proc.poll() is not None:
            raise AssertionError(f"proxy exited {proxy.proc.returncode}: {proxy.err.read_text()}")
        startup = proxy.records("startup")
        if startup:
            proxy.listen, proxy.admin = str(startup[0]["listen"]), str(startup[0]["admin"])
        return bool(startup)

    assert await _poll(ready, 15), f"no startup line: {proxy.err.read_text()}"


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _settled_fds(pid: int, upstream: FaultyUpstream) -> int:
    """The proxy's fd count once its upstream and client connections are gone."""
    upstream.close_idle()
    assert await _poll(lambda: upstream.open == 0, SETTLE), f"{upstream.open} conns still open"
    seen: list[int] = []

    def steady() -> bool:
        seen.append(_fds(pid))
        return len(seen) >= 5 and len(set(seen[-5:])) == 1

    assert await _poll(steady, SETTLE, 0.1), f"fd count never settled: {seen[-10:]}"
    return seen[-1]


# -- the client side -----------------------------------------------------------------------


@dataclass(slots=True)
class Sent:
    rid: str
    method: str
    keyed: bool
    trace_id: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # "aborted", or what else went wrong

    @property
    def retry_safe(self) -> bool:
        return self.method == "GET" or self.keyed

    def request_body(self) -> bytes | None:
        return json.dumps({"rid": self.rid}).encode() if self.method == "POST" else None


def _plan(count: int, prefix: str, rng: random.Random) -> list[Sent]:
    """Half GET, a quarter POST without Idempotency-Key, a quarter POST with one."""
    shapes = (("GET", False), ("POST", False), ("GET", False), ("POST", True))
    return [
        Sent(f"{prefix}{i:05d}", *shapes[i % 4], f"{rng.getrandbits(128) | 1:032x}")
        for i in range(count)
    ]


async def _send(session: aiohttp.ClientSession, url: str, sent: Sent) -> None:
    headers = {"X-Req-Id": sent.rid, "traceparent": f"00-{sent.trace_id}-00f067aa0ba902b7-01"}
    if sent.keyed:
        headers["Idempotency-Key"] = f"key-{sent.rid}"
    if sent.method == "POST":
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(
            sent.method, f"{url}/faults/{sent.rid}", headers=headers, data=sent.request_body()
        ) as resp:
            sent.status = resp.status
            sent.headers = dict(resp.headers)
            sent.body = await resp.read()
    except ABORTED:
        sent.error = "aborted"
    except Exception as exc:  # every request must end with exactly one recorded outcome
        sent.error = f"{type(exc).__name__}: {exc}"


async def _burst(url: str, plan: list[Sent], timeout: float) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        # aiohttp silently resends an idempotent request once when the connection drops
        # before the head; here that would send one X-Req-Id twice.  Its own TestClient
        # turns this off the same way.
        session._retry_connection = False

        async def one(sent: Sent) -> None:
            async with limit:
                await _send(session, url, sent)

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(one(sent) for sent in plan))


# -- the checks ----------------------------------------------------------------------------


def _check_problem(sent: Sent, bad: Callable[[str], None]) -> None:
    """A generated 502/504: RFC 9457 body (SPEC 6.2) and Retry-After (SPEC 6.1)."""
    ctype = sent.headers.get("Content-Type", "")
    if not ctype.startswith("application/problem+json"):
        return bad(f"content type {ctype!r}")
    doc = json.loads(sent.body)
    error = PROXY_ERRORS[sent.status or 0]
    if doc.get("status") != sent.status or doc.get("error") != error:
        bad(f"problem {doc}")
    if sent.headers.get("Proxy-Status") != f"tunnelguard; error={error}":
        bad(f"Proxy-Status {sent.headers.get('Proxy-Status')!r}")
    trace_id = doc.get("traceId")
    if not isinstance(trace_id, str) or not TRACE_ID.fullmatch(trace_id):
        bad(f"traceId {trace_id!r} is not 32 hex digits")
    elif trace_id != sent.trace_id:
        bad(f"traceId {trace_id} is not the traceparent's {sent.trace_id}")
    retry_after = sent.headers.get("Retry-After")
    if doc.get("retryable") is not (retry_after is not None):
        bad(f"retryable={doc.get('retryable')} with Retry-After {retry_after!r}")
    if retry_after != (RETRY_AFTER if sent.retry_safe else None):
        bad(f"Retry-After {retry_after!r} (retry-safe: {sent.retry_safe})")


def _check_reads(sent: Sent, reads: list[Read], bad: Callable[[str], None]) -> None:
    """What reached the upstream: how often, and unchanged."""
    most = ATTEMPTS if sent.retry_safe else 1  # RFC 9110 9.2.2
    if len(reads) > most:
        bad(f"reached the upstream {len(reads)} times: {[r.behaviour for r in reads]}")
    for read in reads:
        key = f"key-{sent.rid}" if sent.keyed else None
        if (read.method, read.target, read.idempotency_key, read.body) != (
            sent.method, f"/faults/{sent.rid}", key, sent.request_body() or b"",
        ):  # fmt: skip
            bad(f"upstream read {read.method} {read.target} key={read.idempotency_key!r}")
        if read.traceparent is None or sent.trace_id not in read.traceparent:
            bad(f"upstream got traceparent {read.traceparent!r}")


def _check_outcome(sent: Sent, reads: list[Read], bad: Callable[[str], None]) -> bool:
    """The client saw what the table gives for the last attempt.  True when only a
    connection closed before its request was read (unattributable) explains it."""
    last = reads[-1].behaviour if reads else None
    if sent.error == "aborted":
        if last != "midbody_stream":
            bad(f"connection aborted, but the last attempt met {last}")
        return False
    if sent.error is not None:
        bad(f"no response: {sent.error}")
        return False
    if last == "midbody_stream":
        bad(f"got a complete {sent.status} for a body cut after the head was sent")
        return False
    if last is not None and sent.status == EXPECTED_STATUS[last]:
        if sent.status == 200 and json.loads(sent.body) != {"ok": True, "req": sent.rid}:
            bad(f"got someone else's body {sent.body[:80]!r}")
        elif sent.status != 200:
            _check_problem(sent, bad)
        return False
    # The last try may have gone to a connection closed before reading: that happens to a
    # request never read, or after a failure that is retried (retry-safe requests only).
    retried_after = last is None or (sent.retry_safe and EXPECTED_STATUS[last] != 200)
    if sent.status == 502 and retried_after:
        _check_problem(sent, bad)
        return True
    bad(f"status {sent.status} after the last attempt met {last}")
    return False


def _digest(problems: list[str], per_kind: int = 5) -> str:
    """Each kind of problem (its text up to the first number or quote), with examples."""
    kinds: dict[str, list[str]] = {}
    for problem in problems:
        what = problem.split(": ", 1)[-1]
        kinds.setdefault(re.split(r"[\d'\[{(]", what, maxsplit=1)[0], []).append(problem)
    lines = []
    for kind, items in kinds.items():
        lines.append(f"{len(items)} x {kind.strip()} ...")
        lines += [f"    {item}" for item in items[:per_kind]]
    return "\n".join(lines)


def _series(method: str, code: int) -> tuple[str, str, str, str]:
    """The requests_total labels (method, code, class, source) for what a client got."""
    return method, str(code), f"{code // 100}xx", "upstream" if code == 200 else "proxy"


def _metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


# -- the test ------------------------------------------------------------------------------


@pytest.mark.timeout(240)
async def test_nothing_lost_under_upstream_faults(
    spawn: Callable[[str], ProxyProcess],
) -> None:
    began = time.monotonic()
    upstream = FaultyUpstream()
    port = await upstream.start()
    try:
        await _nothing_lost(spawn, upstream, port, began)
    finally:
        await upstream.stop()


async def _nothing_lost(
    spawn: Callable[[str], ProxyProcess], upstream: FaultyUpstream, port: int, began: float
) -> None:
    proxy = spawn(
        "version: 1\n"
        "upstreams:\n"
        "  u:\n"
        f"    url: http://127.0.0.1:{port}\n"
        "    timeouts: {connect: 1s, response: 1s}\n"
        "    retry: {attempts: 2, on: [connect_error, timeout, 502, 503, 504]}\n"
        "    max_concurrency: 1000\n"
        "routes:\n"
        "  - name: r\n"
        "    upstream: u\n"
        "    rules: [graphql, jsonrpc, slack, error-envelope]\n"
    )
    await _started(proxy)
    pid = proxy.proc.pid
    rng = random.Random(SEED)

    warmup = _plan(WARMUP, "warm-", rng)
    await _burst(proxy.listen, warmup, 30)
    assert all(s.status == 200 for s in warmup), [(s.status, s.error) for s in warmup]
    fds_before, rss_before = await _settled_fds(pid, upstream), _rss_kib(pid)

    upstream.faulty = True
    plan = _plan(REQUESTS, "r", rng)
    burst_began = time.monotonic()
    await _burst(proxy.listen, plan, BURST_BOUND)
    burst_seconds = time.monotonic() - burst_began
    upstream.faulty = False

    # Pooled upstream connections expire on the proxy's own 4 s keep-alive timer.
    fds_peak, settle_began = _fds(pid), time.monotonic()
    settled = await _poll(lambda: _fds(pid) <= fds_before + FD_SLACK, SETTLE, 0.1)
    fds_after, rss_after = _fds(pid), _rss_kib(pid)
    settle_seconds = time.monotonic() - settle_began
    drained = await _poll(lambda: upstream.open == 0, POOL_DRAIN - settle_seconds, 0.1)
    drain_seconds, fds_drained = time.monotonic() - settle_began, _fds(pid)

    problems: list[str] = []
    unexplained_502 = 0
    for sent in plan:

        def bad(what: str, sent: Sent = sent) -> None:
            problems.append(f"{sent.rid} {sent.method}{' keyed' if sent.keyed else ''}: {what}")

        reads = upstream.reads.get(sent.rid, [])
        _check_reads(sent, reads, bad)
        unexplained_502 += _check_outcome(sent, reads, bad)
    if unexplained_502 > upstream.unread:
        problems.append(
            f"{unexplained_502} 502s only a connection closed before reading explains, "
            f"but only {upstream.unread} such connections were closed"
        )
    problems += upstream.anomalies

    # The access log: exactly one line per request, with the code the client saw.  A line is
    # written when its handler ends, up to 100 ms later (batched), and a client that saw an
    # abort may be ahead of the handler: wait (bounded) until every request has its line.
    expected = {sent.trace_id for sent in plan}
    await _poll(lambda: expected <= {str(r["traceId"]) for r in proxy.records()}, 5.0, 0.1)
    logged = Counter(str(r["traceId"]) for r in proxy.records())
    codes = {str(r["traceId"]): r["code"] for r in proxy.records()}
    for sent in plan:
        if logged[sent.trace_id] != 1:
            problems.append(f"{sent.rid}: logged {logged[sent.trace_id]} times")
        elif codes[sent.trace_id] != (sent.status or 200):
            problems.append(f"{sent.rid}: logged {codes[sent.trace_id]}, client saw {sent.status}")

    async with aiohttp.ClientSession() as session, session.get(f"{proxy.admin}/metrics") as resp:
        metrics = await resp.text()
    # An aborted relay keeps the code its head carried, 200 from the upstream (docs/metrics.md).
    expected_series = Counter(
        _series(s.method, s.status or 200) for s in warmup + plan if s.error in (None, "aborted")
    )
    counted: Counter[tuple[str, str, str, str]] = Counter()
    for labels, value in _metric(metrics, "tunnelguard_requests_total"):
        key = (labels["method"], labels["code"], labels["class"], labels["source"])
        counted[key] += int(value)
    failures = {
        labels["kind"]: int(value)
        for labels, value in _metric(metrics, "tunnelguard_upstream_failures_total")
    }
    # Every failed attempt counts (SPEC 6.3), whether or not it was retried.
    reset = sum(upstream.count(b) for b in ("hangup", "midbody_json", "midbody_stream"))
    expected_failures = {
        "reset": reset + upstream.unread,
        "response_timeout": upstream.count("stall"),
        "protocol_error": upstream.count("garbage"),
    }

    proxy.proc.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(proxy.proc.wait, 15)

    outcomes = Counter(s.error or s.status for s in plan)
    reads = Counter(r.behaviour for rs in upstream.reads.values() for r in rs)
    summary = (
        f"outcomes {dict(outcomes)}; upstream reads {dict(reads)}, unread {upstream.unread} "
        f"({unexplained_502} 502s explained by one); burst {burst_seconds:.1f} s, "
        f"test {time.monotonic() - began:.1f} s"
    )
    print(summary)  # shown with -s or on failure: the numbers behind the checks
    print(
        f"fds {fds_before} before, {fds_peak} right after the burst, {fds_after} after "
        f"{settle_seconds:.1f} s, {fds_drained} once the pool drained ({drain_seconds:.1f} s); "
        f"RSS {rss_before} -> {rss_after} KiB"
    )
    # One report with every symptom: a single bug often shows in several places.
    if counted != expected_series or counted.total() != WARMUP + REQUESTS:
        problems.append(f"metrics: requests_total {counted} != {expected_series}")
    found = {kind: failures.get(kind, 0) for kind in expected_failures}
    if found != expected_failures or not all(found.values()):
        problems.append(f"metrics: upstream_failures_total {found} != {expected_failures}")
    if not settled:
        problems.append(
            f"resources: proxy fds {fds_before} before the burst, {fds_after} {SETTLE:.0f} s "
            f"after it (allowed {fds_before + FD_SLACK})"
        )
    if not drained:
        problems.append(
            f"resources: {upstream.open} upstream connections still open "
            f"{POOL_DRAIN:.0f} s after the burst"
        )
    growth = (rss_after - rss_before) / 1024
    if growth >= RSS_GROWTH_MIB:
        problems.append(
            f"resources: proxy RSS grew {growth:.1f} MiB ({rss_before} -> {rss_after} KiB)"
        )
    if exit_code != 0:
        problems.append(f"exit: SIGTERM ended the proxy with {exit_code}: {proxy.err.read_text()}")
    assert not problems, f"{len(problems)} problems ({summary}):\n{_digest(problems)}"


# The checks themselves, on hand-made cases, so a broken check cannot pass silently.


def _problems(check: Callable[..., object], *args: object) -> list[str]:
    found: list[str] = []
    check(*args, found.append)
    return found


def _problem_sent(status: int, method: str = "GET", retry_after: str | None = "5") -> Sent:
    sent = Sent("r1", method, False, "ab" * 16, status)
    error = PROXY_ERRORS[status]
    sent.headers = {
        "Content-Type": "application/problem+json",
        "Proxy-Status": f"tunnelguard; error={error}",
        **({"Retry-After": retry_after} if retry_after else {}),
    }
    doc = {"status": status, "error": error, "traceId": "ab" * 16, "retryable": bool(retry_after)}
    sent.body = json.dumps(doc).encode()
    return sent


def test_checks_accept_the_table_and_reject_the_rest() -> None:
    hangup = [Read("hangup", "GET", "/faults/r1", None, None, b"")]
    assert _problems(_check_outcome, _problem_sent(502), hangup) == []
    assert _problems(_check_outcome, _problem_sent(504), hangup)  # wrong status
    assert _problems(_check_outcome, _problem_sent(502, "POST"), hangup)  # Retry-After on POST
    assert _problems(_check_outcome, _problem_sent(502, "POST", None), hangup) == []
    assert _problems(_check_outcome, _problem_sent(502, retry_after=None), hangup)
    unread_only = _problem_sent(502)
    assert _check_outcome(unread_only, [], lambda what: None) is True
    cut = Sent("r1", "GET", False, "ab" * 16, 200, error="aborted")
    assert _problems(_check_outcome, cut, hangup)
    stream = [Read("midbody_stream", "GET", "/faults/r1", None, None, b"")]
    assert _problems(_check_outcome, cut, stream) == []
    post = Sent("r1", "POST", False, "ab" * 16)
    read = Read("hangup", "POST", "/faults/r1", f"00-{'ab' * 16}-00f067aa0ba902b7-01", None,
                post.request_body() or b"")  # fmt: skip
    assert _problems(_check_reads, post, [read]) == []
    assert _problems(_check_reads, post, [read, read])  # an unkeyed POST sent twice
