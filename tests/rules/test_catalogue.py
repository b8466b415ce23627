"""proxy.rules.catalogue: the per-route catalogue of suspect shapes (SPEC 10), its `/shapes`
document, the merge of several workers' documents, and its bounds under hostile bodies."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from proxy.rules import suspect as sus
from proxy.rules.catalogue import MAX_VALUES, OTHER, ShapeCatalogue, merge_snapshots, rfc3339
from proxy.rules.suspect import Suspect, detect

T0 = 1796551262.0  # 2026-12-06T10:01:02Z


def _wechat(code: int, message: str = "invalid credential") -> Suspect:
    found = detect({"errcode": code, "errmsg": message})
    assert found is not None
    return found


def test_the_shapes_document_is_spec_10s() -> None:
    catalogue = ShapeCatalogue()
    for i in range(40):
        assert catalogue.record("default", _wechat(40001), T0 + i) == _wechat(1).shape
    catalogue.record("default", _wechat(45009, "reach max api daily quota limit"), T0 + 518)
    assert catalogue.snapshot() == {
        "routes": {
            "default": [
                {
                    "id": _wechat(1).shape,
                    "count": 41,
                    "first_seen": "2026-12-06T10:01:02Z",
                    "last_seen": "2026-12-06T10:09:40Z",
                    "keys": ["errcode", "errmsg"],
                    "markers": [
                        {
                            "pointer": "/errcode",
                            "type": "number",
                            "values": {
                                "40001": {"count": 40, "status": 400},
                                "45009": {"count": 1, "status": 429},
                            },
                        }
                    ],
                    "status": 400,
                    "statuses": {"400": 40, "429": 1},
                }
            ]
        }
    }


def test_routes_are_kept_apart_and_shapes_listed_in_the_order_first_seen() -> None:
    catalogue = ShapeCatalogue()
    catalogue.record("b", _wechat(1), T0)
    flickr = detect({"stat": "fail", "code": 100, "message": "Invalid API Key"})
    assert flickr is not None
    catalogue.record("a", flickr, T0 + 1)
    catalogue.record("a", _wechat(1), T0 + 2)
    routes = catalogue.snapshot()["routes"]
    assert list(routes) == ["b", "a"]
    assert [s["id"] for s in routes["a"]] == [flickr.shape, _wechat(1).shape]
    assert routes["a"][0]["markers"] == [
        {"pointer": "/stat", "type": "string", "values": {"fail": {"count": 1, "status": 401}}}
    ]


def test_a_full_route_counts_new_shapes_as_other() -> None:
    catalogue = ShapeCatalogue(max_shapes=2)
    bodies = [{"error": "x", f"k{i}": 1} for i in range(4)]
    labels = [catalogue.record("r", detect(b), T0) for b in bodies]  # type: ignore[arg-type]
    assert labels[:2] == [detect(b).shape for b in bodies[:2]]  # type: ignore[union-attr]
    assert labels[2:] == [OTHER, OTHER]
    # a known shape is still counted by its id
    assert catalogue.record("r", detect(bodies[0]), T0) == labels[0]  # type: ignore[arg-type]
    # a route may say otherwise (`discover.max_shapes`)
    assert catalogue.record("r", detect(bodies[2]), T0, max_shapes=3) != OTHER  # type: ignore[arg-type]
    assert catalogue.shape_count("r") == 3


def test_the_shape_status_is_the_most_frequent_first_seen_on_a_tie() -> None:
    catalogue = ShapeCatalogue()
    catalogue.record("r", _wechat(1, "quota"), T0)  # 429
    catalogue.record("r", _wechat(2, "invalid"), T0)  # 400
    assert catalogue.snapshot()["routes"]["r"][0]["status"] == 429
    catalogue.record("r", _wechat(3, "invalid"), T0)
    assert catalogue.snapshot()["routes"]["r"][0]["status"] == 400


def test_a_value_keeps_its_first_status() -> None:
    catalogue = ShapeCatalogue()
    catalogue.record("r", _wechat(7, "quota"), T0)
    catalogue.record("r", _wechat(7, "invalid"), T0)
    values = catalogue.snapshot()["routes"]["r"][0]["markers"][0]["values"]
    assert values == {"7": {"count": 2, "status": 429}}


def test_at_most_32_values_per_marker() -> None:
    catalogue = ShapeCatalogue()
    for code in range(100):
        catalogue.record("r", _wechat(code + 1), T0)
    (shape,) = catalogue.snapshot()["routes"]["r"]
    assert len(shape["markers"][0]["values"]) == MAX_VALUES == 32
    assert shape["count"] == 100


def test_rfc3339() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(T0 + 0.999) == "2026-12-06T10:01:02Z"


# --- bounds under hostile bodies --------------------------------------------------------------


def _hostile(rng: random.Random, i: int) -> object:
    """Random keys (long, unicode, many), a marker somewhere, deep nesting."""
    doc: dict[str, Any] = {}
    letters = "abcdefghijklmnopqrstuvwxyz_-é/~ "
    count = rng.choice((1, 3, 10, 30, 300))  # 300: a data map, never read
    for _ in range(count):
        size = 8 if count == 300 else rng.choice((3, 12, 64, 65, 500))
        doc["".join(rng.choices(letters, k=size))] = 1
    deep: Any = {"error": f"secret message {i}"}
    for _ in range(rng.randrange(50)):
        deep = {"x": deep}
    doc[rng.choice(("error", "Error", "err_code", "meta", "status"))] = rng.choice(
        ({"code": 500 + i % 99}, f"code_{i}", deep, "failed", 404)
    )
    return doc


def test_10000_distinct_shapes_cannot_grow_it() -> None:
    rng = random.Random(10_000)
    catalogue = ShapeCatalogue(max_shapes=64)
    other = ids = suspects = 0
    for i in range(10_000):
        found = detect(_hostile(rng, i))
        if found is None:
            continue
        suspects += 1
        assert len(found.keys) <= sus.MAX_KEYS and len(found.markers) <= sus.MAX_MARKERS
        assert all(len(k) <= sus.MAX_KEY_CHARS for k in found.keys)
        label = catalogue.record("r", found, T0 + i)
        other += label == OTHER
        ids += label != OTHER
    assert suspects > 5_000 and catalogue.shape_count("r") == ids == 64
    assert other == suspects - 64
    text = json.dumps(catalogue.snapshot())
    assert "secret" not in text
    for shape in catalogue.snapshot()["routes"]["r"]:
        assert len(shape["keys"]) <= sus.MAX_KEYS
        for marker in shape["markers"]:
            assert len(marker["values"]) <= MAX_VALUES
            assert all(len(v) <= 64 for v in marker["values"])
    # a whole catalogue of the largest shapes stays small
    assert len(text) < 64 * (sus.MAX_KEYS * 70 + sus.MAX_MARKERS * (MAX_VALUES * 100 + 200) + 300)


# --- merging the workers' catalogues ----------------------------------------------------------


def _snapshot(*records: tuple[str, Suspect, float]) -> dict[str, Any]:
    catalogue = ShapeCatalogue()
    for route, found, now in records:
        catalogue.record(route, found, now)
    return catalogue.snapshot()


def test_merging_sums_counts_and_spans_times() -> None:
    a = _snapshot(("r", _wechat(40001), T0 + 10), ("r", _wechat(40001), T0 + 20))
    b = _snapshot(("r", _wechat(45009, "quota"), T0), ("r", _wechat(45009, "quota"), T0 + 30))
    b2 = _snapshot(("r", _wechat(45009, "quota"), T0 + 5), ("q", _wechat(1), T0))
    merged = merge_snapshots([a, b, b2])
    (shape,) = merged["routes"]["r"]
    assert shape["count"] == 5
    assert shape["first_seen"] == rfc3339(T0) and shape["last_seen"] == rfc3339(T0 + 30)
    assert shape["markers"][0]["values"] == {
        "40001": {"count": 2, "status": 400},
        "45009": {"count": 3, "status": 429},
    }
    assert shape["status"] == 400  # of the first snapshot with the largest count (a: 2)
    assert list(merged["routes"]) == ["r", "q"]


def test_merging_one_snapshot_changes_nothing() -> None:
    one = _snapshot(("r", _wechat(1), T0), ("s", _wechat(2), T0 + 1))
    assert merge_snapshots([one]) == one
    assert merge_snapshots([]) == {"routes": {}}


def test_merged_values_and_shapes_stay_bounded() -> None:
    snapshots = [
        _snapshot(*[("r", _wechat(w * 100 + c + 1), T0 + w) for c in range(MAX_VALUES)])
        for w in range(4)
    ]
    (shape,) = merge_snapshots(snapshots)["routes"]["r"]
    assert len(shape["markers"][0]["values"]) == MAX_VALUES
    many = [_snapshot(("r", detect({"error": "x", f"k{w}": 1}), T0 + w)) for w in range(5)]  # type: ignore[arg-type]
    assert len(merge_snapshots(many, {"r": 3})["routes"]["r"]) == 3
    assert [s["first_seen"] for s in merge_snapshots(many, {"r": 2})["routes"]["r"]] == [
        rfc3339(T0),
        rfc3339(T0 + 1),
    ]


@pytest.mark.parametrize(
    "bad",
    [{}, {"routes": []}, {"routes": {"r": "x"}}, {"routes": {"r": [{"id": "s-1"}]}}, "x"],
    ids=str,
)
def test_a_malformed_snapshot_is_skipped(bad: Any) -> None:
    good = _snapshot(("r", _wechat(1), T0))
    merged = merge_snapshots([good, bad])
    assert merged["routes"]["r"] == good["routes"]["r"]
