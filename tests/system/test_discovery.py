"""Discovery (SPEC 10) through real `tunnelguard run` processes in front of a real upstream on
127.0.0.1 that answers issue 20's corpora (tests/rules/corpus/discovery_*.json) and issue
17's resources that describe a failure: /shapes lists every tunnelled shape with its markers
and counts and never a clean body, /metrics counts them by shape, the access lines carry
`suspect`, the header comes only with `discover.header: true`, `--workers 2` merges; a
secret planted in messages appears nowhere; hostile bodies cannot grow the catalogue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.rules.suspect import detect
from tests.conftest import LoggedProcess, UpstreamFactory, run_tunnelguard, stop_processes
from tests.rules import corpus
from tests.rules.corpus import discovery

TUNNELLED = discovery.tunnelled()
CLEAN = [*discovery.clean()] + [
    discovery.Entry(e.id, "", e.content_type, json.loads(e.body), e.body, None)
    for e in corpus.entries()
    if e.corpus == "resources"
]
SECRET = "hunter2-S3CRET"
SECRET_BODIES = [
    {"errcode": 40001, "errmsg": f"invalid credential {SECRET} rid: 1"},
    {"errmsg": SECRET},  # a lone message that looks like a code: still never a value
    {"meta": {"code": 401, "message": SECRET, "errorDetail": f"token {SECRET}"}},
    {"Response": {"Error": {"Code": "AuthFailure", "Message": SECRET}, "RequestId": "r"}},
    {"stat": "fail", "message": f"{SECRET} is not a valid key", "code": 100},
]
TIMES = 3  # each tunnelled entry i is asked for 1 + i % TIMES times


def _upstream_app(hostile: list[bytes] | None = None) -> web.Application:
    def answer(entries: list[discovery.Entry]) -> Any:
        async def handle(request: web.Request) -> web.Response:
            entry = entries[int(request.match_info["index"])]
            return web.Response(body=entry.raw, headers={"Content-Type": entry.content_type})

        return handle

    async def secret(request: web.Request) -> web.Response:
        return web.json_response(SECRET_BODIES[int(request.match_info["index"])])

    async def bad(request: web.Request) -> web.Response:
        assert hostile is not None
        return web.Response(
            body=hostile[int(request.match_info["index"])], content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/tunnelled/{index}", answer(list(TUNNELLED)))
    app.router.add_get("/clean/{index}", answer(CLEAN))
    app.router.add_get("/secret/{index}", secret)
    app.router.add_get("/hostile/{index}", bad)
    return app


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """`tunnelguard run ARGS`, its stdout and stderr in files; stopped (by PID) after."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(*args: str, name: str = "proxy") -> subprocess.Popen[bytes]:
        proc = run_tunnelguard(args, tmp_path / f"{name}.out", tmp_path / f"{name}.err")
        procs.append(proc)
        return proc

    yield run
    stop_processes(procs, 15)


def _config(
    tmp_path: Path,
    upstream: str,
    discover: str = "",
    route_extra: str = "",
    name: str = "config",
    rules: str = "[graphql, jsonrpc, slack, error-envelope]",
) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "version: 1\nlisten: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"upstreams:\n  u:\n    url: {upstream}\n"
        f"routes:\n  - name: default\n    upstream: u\n    rules: {rules}\n"
        f"{route_extra}{discover}"
    )
    return str(path)


async def _started(proc: subprocess.Popen[bytes], out: Path, workers: int = 0) -> tuple[str, str]:
    logged = LoggedProcess(proc, out)
    (startup,) = await logged.wait_for("startup", timeout=20)
    if workers:
        await logged.wait_for("worker_startup", workers, timeout=20)
    return str(startup["listen"]), str(startup["admin"])


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with client.get(url) as r:
        return r.status, await r.read(), dict(r.headers)


async def _json(client: aiohttp.ClientSession, url: str) -> Any:
    async with client.get(url) as r:
        assert r.status == 200
        return await r.json()


def _suspect_samples(metrics: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["route"], s.labels["shape"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "tunnelguard_suspect_responses_total"
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "request":
                out.append(record)
    return out


async def _lines_when(path: Path, count: int) -> list[dict[str, Any]]:
    for _ in range(100):  # access lines are written within 100 ms
        found = _lines(path)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(_lines(path))} access lines, not {count}")


def _expected(asked: Callable[[int], int] = lambda i: 1 + i % TIMES) -> dict[str, dict[str, Any]]:
    """The shapes the tunnelled corpus makes when entry i is asked for `asked(i)` times, as
    /shapes must list them (without times and status)."""
    shapes: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(TUNNELLED):
        found = detect(entry.body)
        assert found is not None
        times = asked(i)
        shape = shapes.setdefault(
            found.shape,
            {
                "id": found.shape, "count": 0, "keys": list(found.keys),
                "markers": [_marker(m.pointer, m.type, m.value_pointer) for m in found.markers],
            },
        )  # fmt: skip
        shape["count"] += times
        for kept, marker in zip(shape["markers"], entry.markers or [], strict=True):
            if marker["value"] is not None:
                seen = kept["values"].setdefault(
                    marker["value"], {"count": 0, "status": marker["status"]}
                )
                seen["count"] += times
    return shapes


def _marker(pointer: str, json_type: str, value_pointer: str | None) -> dict[str, Any]:
    """A marker as /shapes lists it before its values: `value_pointer` only when the values
    are read below the marker (an object's or array's member)."""
    marker: dict[str, Any] = {"pointer": pointer, "type": json_type}
    if value_pointer is not None:
        marker["value_pointer"] = value_pointer
    marker["values"] = {}
    return marker


async def test_both_corpora_through_a_real_proxy(
    start_upstream: UpstreamFactory, start: Start, tmp_path: Path
) -> None:
    upstream = await start_upstream(_upstream_app())
    proc = start(
        "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )
    proxy, admin = await _started(proc, tmp_path / "proxy.out")
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for i, entry in enumerate(CLEAN):
            status, body, headers = await _get(client, f"{proxy}/clean/{i}")
            assert (status, body) == (200, entry.raw), entry.api
            assert not [h for h in headers if h.lower().startswith("tunnelguard-")], entry.api
        for i, entry in enumerate(TUNNELLED):
            for _ in range(1 + i % TIMES):
                status, body, headers = await _get(client, f"{proxy}/tunnelled/{i}")
                assert (status, body) == (200, entry.raw), entry.api  # nothing changes
                assert not [h for h in headers if h.lower().startswith("tunnelguard-")]
        document = await _json(client, admin + "/shapes")
        async with client.get(admin + "/metrics") as r:
            metrics = await r.text()
    expected = _expected()
    listed = document["routes"]["default"]
    assert len(listed) == len(expected)  # the tunnelled shapes, and no clean one
    for shape in listed:
        times = {k: shape.pop(k) for k in ("first_seen", "last_seen", "status", "statuses")}
        assert times["first_seen"] <= times["last_seen"] and times["first_seen"].endswith("Z")
        assert sum(times["statuses"].values()) == shape["count"]  # each response's status
        assert str(times["status"]) in times["statuses"]
        assert shape == expected[shape["id"]]
    assert _suspect_samples(metrics) == {
        ("default", shape_id): float(shape["count"]) for shape_id, shape in expected.items()
    }
    total = sum(1 + i % TIMES for i in range(len(TUNNELLED)))
    lines = await _lines_when(tmp_path / "proxy.out", len(CLEAN) + total)
    assert ["suspect" in line for line in lines] == [False] * len(CLEAN) + [True] * total
    assert {line["suspect"] for line in lines[len(CLEAN) :]} == set(expected)
    assert all(line["code"] == line["true_code"] == 200 for line in lines)


async def test_the_header_comes_only_when_asked_for_and_off_is_off(
    start_upstream: UpstreamFactory, start: Start, tmp_path: Path
) -> None:
    upstream = await start_upstream(_upstream_app())
    on = start("--config", _config(tmp_path, upstream.url, "discover: {header: true}\n"), name="on")
    off_file = _config(
        tmp_path, upstream.url, "discover: {header: true}\n",
        route_extra="    discover: {enabled: false}\n", name="off",
    )  # fmt: skip
    off = start("--config", off_file, name="off")
    on_proxy, on_admin = await _started(on, tmp_path / "on.out")
    off_proxy, off_admin = await _started(off, tmp_path / "off.out")
    async with aiohttp.ClientSession() as client:
        for i, entry in enumerate(TUNNELLED):
            _, _, headers = await _get(client, f"{on_proxy}/tunnelled/{i}")
            assert headers.get("Tunnelguard-Suspect") == detect(entry.body).shape  # type: ignore[union-attr]
            _, _, headers = await _get(client, f"{off_proxy}/tunnelled/{i}")
            assert "Tunnelguard-Suspect" not in headers
        for i in range(len(CLEAN)):
            _, _, headers = await _get(client, f"{on_proxy}/clean/{i}")
            assert "Tunnelguard-Suspect" not in headers
        assert await _json(client, off_admin + "/shapes") == {"routes": {}}
        async with client.get(off_admin + "/metrics") as r:
            assert _suspect_samples(await r.text()) == {}
        assert len((await _json(client, on_admin + "/shapes"))["routes"]["default"]) == len(
            _expected()
        )
    lines = await _lines_when(tmp_path / "off.out", len(TUNNELLED))
    assert not [line for line in lines if "suspect" in line]


async def test_a_secret_in_a_message_appears_nowhere(
    start_upstream: UpstreamFactory, start: Start, tmp_path: Path
) -> None:
    upstream = await start_upstream(_upstream_app())
    proc = start("--config", _config(tmp_path, upstream.url, "discover: {header: true}\n"))
    proxy, admin = await _started(proc, tmp_path / "proxy.out")
    async with aiohttp.ClientSession() as client:
        for i in range(len(SECRET_BODIES)):
            status, body, headers = await _get(client, f"{proxy}/secret/{i}")
            assert status == 200 and SECRET.encode() in body  # the client gets it, unchanged
            assert SECRET not in json.dumps(headers)
        shapes = json.dumps(await _json(client, admin + "/shapes"))
        async with client.get(admin + "/metrics") as r:
            metrics = await r.text()
    assert len(json.loads(shapes)["routes"]["default"]) == len(SECRET_BODIES)
    await _lines_when(tmp_path / "proxy.out", len(SECRET_BODIES))
    stop_processes([proc])
    for where, text in [
        ("/shapes", shapes),
        ("/metrics", metrics),
        ("stdout", (tmp_path / "proxy.out").read_text()),
        ("stderr", (tmp_path / "proxy.err").read_text()),
    ]:
        assert SECRET not in text and "hunter2" not in text, where


def _hostile_bodies(count: int) -> list[bytes]:
    rng = random.Random(20)
    bodies = []
    for i in range(count):
        doc: dict[str, Any] = {
            "".join(rng.choices("abcdefghij_-/~é ", k=rng.choice((4, 40, 70)))): i
            for _ in range(rng.randrange(1, 20))
        }
        deep: Any = {"error": "x"}
        for _ in range(rng.randrange(200)):
            deep = {"a": deep}
        doc["nest"] = deep
        doc[rng.choice(("error", "err_code", "status"))] = rng.choice((f"E{i}", 503, "failed"))
        bodies.append(json.dumps(doc).encode())
    return bodies


async def test_hostile_bodies_cannot_grow_the_catalogue(
    start_upstream: UpstreamFactory, start: Start, tmp_path: Path
) -> None:
    hostile = _hostile_bodies(300)
    upstream = await start_upstream(_upstream_app(hostile))
    # a route whose only rule is `slack`: the presets would rewrite most of these bodies
    config = _config(tmp_path, upstream.url, "discover: {max_shapes: 8}\n", rules="[slack]")
    proc = start("--config", config)
    proxy, admin = await _started(proc, tmp_path / "proxy.out")
    async with aiohttp.ClientSession() as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                status, body, _ = await _get(client, f"{proxy}/hostile/{i}")
                assert (status, body) == (200, hostile[i])

        await asyncio.gather(*(one(i) for i in range(len(hostile))))
        document = await _json(client, admin + "/shapes")
        async with client.get(admin + "/metrics") as r:
            samples = _suspect_samples(await r.text())
    (shapes,) = document["routes"].values()
    assert len(shapes) == 8 and len(json.dumps(document)) < 32 << 10
    suspects = sum(detect(json.loads(body)) is not None for body in hostile)
    assert suspects > 200  # the others carry no marker the detector reads
    assert len(samples) == 9 and sum(samples.values()) == suspects
    assert samples[("default", "other")] == suspects - sum(s["count"] for s in shapes)


async def test_workers_catalogues_are_merged(
    start_upstream: UpstreamFactory, start: Start, tmp_path: Path
) -> None:
    upstream = await start_upstream(_upstream_app())
    proc = start(
        "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--workers", "2",
    )  # fmt: skip
    proxy, admin = await _started(proc, tmp_path / "proxy.out", workers=2)

    async def one(i: int) -> None:
        # a new connection each time, so the kernel may hand it to either worker
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{proxy}/tunnelled/{i}", headers={"Connection": "close"}) as r,
        ):
            assert r.status == 200
            await r.read()

    rounds = 8
    for _ in range(rounds):
        await asyncio.gather(*(one(i) for i in range(len(TUNNELLED))))
    expected = _expected(lambda i: rounds)
    async with aiohttp.ClientSession() as client:
        for _ in range(100):  # each worker writes its catalogue within 250 ms
            document = await _json(client, admin + "/shapes")
            listed = document["routes"].get("default", [])
            if {s["id"]: s["count"] for s in listed} == {
                k: v["count"] for k, v in expected.items()
            }:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(document)
        async with client.get(admin + "/metrics") as r:
            samples = _suspect_samples(await r.text())
    for shape in listed:  # one entry per shape, whichever workers saw it, values summed
        del shape["first_seen"], shape["last_seen"], shape["status"]
        assert sum(shape.pop("statuses").values()) == shape["count"]  # summed over workers
        assert shape == expected[shape["id"]]
    assert samples == {("default", k): float(v["count"]) for k, v in expected.items()}
    lines = await _lines_when(tmp_path / "proxy.out", rounds * len(TUNNELLED))
    assert len({line["pid"] for line in lines}) == 2  # both workers saw suspect bodies
