"""proxy.serve.shapes: the files that carry each worker's suspect shapes to the master, and
their merge (the whole path, through real processes, is tests/system/test_discovery.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from proxy.config.load import parse_text
from proxy.rules.catalogue import ShapeCatalogue, rfc3339
from proxy.rules.suspect import Suspect, detect
from proxy.serve import shapes, workers

T0 = 1796551262.0
CONFIG = parse_text(
    "version: 1\nupstreams: {u: {url: 'http://127.0.0.1:1'}}\n"
    "routes:\n  - {name: a, upstream: u, match: {path_prefix: /a}, discover: {max_shapes: 2}}\n"
    "  - {name: b, upstream: u}\n",
    "t.yaml",
)


def _found(**doc: object) -> Suspect:
    found = detect(doc)
    assert found is not None
    return found


def test_the_directory_is_the_one_the_master_reads_metrics_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(workers.MULTIPROC_ENV, raising=False)
    assert shapes.shapes_directory() is None
    monkeypatch.setenv(workers.MULTIPROC_ENV, "/tmp/x")
    assert shapes.shapes_directory() == "/tmp/x"


def test_the_master_merges_every_workers_file(tmp_path: Path) -> None:
    one, two = ShapeCatalogue(), ShapeCatalogue()
    one.record("b", _found(errcode=1, errmsg="x"), T0 + 5)
    two.record("b", _found(errcode=2, errmsg="y"), T0)
    for i in range(3):  # route a keeps at most 2 shapes in the merge too
        two.record("a", _found(error="x", **{f"k{i}": 1}), T0 + i)
    shapes.write_snapshot(str(tmp_path), 11, one)
    shapes.write_snapshot(str(tmp_path), 12, two)
    (tmp_path / "shapes_13.json").write_bytes(b'{"routes": {"b": [')  # cut short
    (tmp_path / "counter_11.db").write_bytes(b"\0")  # prometheus-client's, not ours
    merged = shapes.merged_shapes(str(tmp_path), CONFIG)
    (shape,) = merged["routes"]["b"]
    assert shape["count"] == 2 and shape["first_seen"] == rfc3339(T0)
    assert set(shape["markers"][0]["values"]) == {"1", "2"}
    assert len(merged["routes"]["a"]) == 2
    assert sorted(p.name for p in tmp_path.glob("*.tmp")) == []


async def test_a_worker_writes_when_its_catalogue_changes_and_when_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shapes, "WRITE_INTERVAL", 0.01)
    catalogue = ShapeCatalogue()
    writer = asyncio.ensure_future(shapes.keep_written(catalogue, str(tmp_path), 7))
    path = tmp_path / "shapes_7.json"

    async def document() -> dict[str, object]:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if path.exists():
                found: dict[str, object] = orjson.loads(path.read_bytes())
                return found
        raise AssertionError("never written")

    assert await document() == {"routes": {}}
    catalogue.record("r", _found(ok=False), T0)
    for _ in range(200):
        if (await document())["routes"]:
            break
    assert (await document())["routes"] == catalogue.snapshot()["routes"]
    monkeypatch.setattr(shapes, "WRITE_INTERVAL", 3600)
    await asyncio.sleep(0.05)  # the writer now sleeps for an hour
    catalogue.record("r", _found(ok=False), T0 + 1)
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert orjson.loads(path.read_bytes()) == catalogue.snapshot()  # the last one, at stop
