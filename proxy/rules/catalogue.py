"""The catalogue of suspect shapes (SPEC 10): per route, the shapes `suspect.detect` found,
with counts, first and last seen times, marker pointers and the short code-like values seen.

One `ShapeCatalogue` lives as long as its process (a reload keeps it: shapes seen before a
reload stay, and routes keep their shapes by name).  `record` is what the request path
calls; `snapshot` is `GET /shapes`; `merge_snapshots` joins the snapshots of the workers of
`--workers N` into one.

Memory is bounded whatever the bodies are: a route holds at most its `max_shapes` shapes
(then every further new shape counts as `other`), a shape lists at most `suspect.MAX_KEYS`
keys of at most `suspect.MAX_KEY_CHARS` characters and at most `suspect.MAX_MARKERS`
markers, a marker keeps at most `MAX_VALUES` values of at most 64 characters, and a shape's
status tally has only 4xx/5xx keys.  Only structure and code-like values are kept: never a
message, never any other text of a body.  Routes are config names (bounded by the config).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.rules.suspect import Suspect

MAX_VALUES: Final = 32
"""Distinct values kept per marker (SPEC 10); further values are counted in the shape only."""
DEFAULT_MAX_SHAPES: Final = 64
"""Shapes kept per route unless the route says otherwise (`discover.max_shapes`)."""
OTHER: Final = "other"
"""The `suspect_responses_total{shape}` label once a route's catalogue is full."""


@dataclass(slots=True)
class _Value:
    count: int
    status: int  # the status the first response with this value implied


@dataclass(slots=True)
class _Marker:
    pointer: str
    type: str
    value_pointer: str | None  # where the values were read, when not at `pointer`
    values: dict[str, _Value] = field(default_factory=dict)


@dataclass(slots=True)
class _Shape:
    id: str
    keys: tuple[str, ...]
    markers: tuple[_Marker, ...]
    first_seen: float
    last_seen: float
    count: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # implied status -> responses


class ShapeCatalogue:
    """Per route, at most `max_shapes` shapes (`record` may lower or raise it per route)."""

    __slots__ = ("_max_shapes", "_routes", "changes")

    def __init__(self, max_shapes: int = DEFAULT_MAX_SHAPES) -> None:
        self._max_shapes = max_shapes
        self._routes: dict[str, dict[str, _Shape]] = {}
        self.changes = 0  # responses recorded in a shape: the snapshot changed when this did

    def record(
        self, route: str, suspect: Suspect, now: float, max_shapes: int | None = None
    ) -> str:
        """Count one suspect response of `route` seen at `now` (seconds since the epoch);
        return its metric label: the shape id, or `other` when the route already holds
        `max_shapes` (default: the catalogue's) other shapes."""
        shapes = self._routes.get(route)
        if shapes is None:
            shapes = self._routes[route] = {}
        shape = shapes.get(suspect.shape)
        if shape is None:
            limit = self._max_shapes if max_shapes is None else max_shapes
            if len(shapes) >= limit:
                return OTHER
            markers = tuple(_Marker(m.pointer, m.type, m.value_pointer) for m in suspect.markers)
            shape = shapes[suspect.shape] = _Shape(suspect.shape, suspect.keys, markers, now, now)
        shape.count += 1
        shape.last_seen = now
        self.changes += 1
        for kept, marker in zip(shape.markers, suspect.markers, strict=False):
            value = marker.value
            if value is None or kept.pointer != marker.pointer:
                continue  # nothing code-like, or (a 32-bit hash collision) another shape
            if kept.value_pointer != marker.value_pointer:
                if kept.values:
                    continue  # read from another member than the values kept: not comparable
                kept.value_pointer = marker.value_pointer
            seen = kept.values.get(value)
            if seen is not None:
                seen.count += 1
            elif len(kept.values) < MAX_VALUES:
                kept.values[value] = _Value(1, marker.status)
        status = suspect.status
        shape.statuses[status] = shape.statuses.get(status, 0) + 1
        return shape.id

    def shape_count(self, route: str) -> int:
        """How many shapes `route` holds."""
        return len(self._routes.get(route, ()))

    def snapshot(self) -> dict[str, Any]:
        """`GET /shapes` (SPEC 10): `{"routes": {route: [shape, ...]}}`, shapes in the order
        they were first seen."""
        return {
            "routes": {
                route: [_shape_json(s) for s in shapes.values()]
                for route, shapes in self._routes.items()
            }
        }


def _shape_json(shape: _Shape) -> dict[str, Any]:
    # the most frequent status; on a tie, the one seen first (dicts keep insertion order)
    status = max(shape.statuses.items(), key=lambda item: item[1])[0]
    return {
        "id": shape.id,
        "count": shape.count,
        "first_seen": rfc3339(shape.first_seen),
        "last_seen": rfc3339(shape.last_seen),
        "keys": list(shape.keys),
        "markers": [_marker_json(m) for m in shape.markers],
        "status": status,
        # every status its responses implied, with how many: a message marker keeps no
        # value, so this is what says its shape read as 429 here and 401 there
        "statuses": {str(k): n for k, n in shape.statuses.items()},
    }


def _marker_json(marker: _Marker) -> dict[str, Any]:
    data: dict[str, Any] = {"pointer": marker.pointer, "type": marker.type}
    if marker.value_pointer is not None:  # an object's or array's member: `/Response/Error/Code`
        data["value_pointer"] = marker.value_pointer
    data["values"] = {v: {"count": s.count, "status": s.status} for v, s in marker.values.items()}
    return data


def rfc3339(seconds: float) -> str:
    """`2026-12-06T10:01:02Z`: RFC 3339, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def merge_snapshots(
    snapshots: list[dict[str, Any]], max_shapes: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """One `/shapes` document from several (the workers of `--workers N`): per route and
    shape id, counts summed, the earliest `first_seen`, the latest `last_seen`; per marker
    the values' counts summed (a value's status is the first snapshot's that has it), at
    most `MAX_VALUES` values (the most frequent); the shape's status is that of the snapshot
    that counted it most.  With `max_shapes`, a route listed there keeps that many shapes,
    those seen first.  Snapshots are read defensively: a malformed entry is skipped."""
    routes: dict[str, dict[str, dict[str, Any]]] = {}
    best: dict[tuple[str, str], int] = {}  # (route, id) -> largest count seen for status
    for snapshot in snapshots:
        listed = snapshot.get("routes") if isinstance(snapshot, dict) else None
        if not isinstance(listed, dict):
            continue
        for route, shapes in listed.items():
            merged = routes.setdefault(route, {})
            for shape in shapes if isinstance(shapes, list) else ():
                try:
                    _merge_shape(merged, shape, best, route)
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue
    result: dict[str, list[dict[str, Any]]] = {}
    for route, merged in routes.items():
        shapes = sorted(merged.values(), key=lambda s: (s["first_seen"], s["id"]))
        limit = None if max_shapes is None else max_shapes.get(route)
        for shape in shapes:
            for marker in shape["markers"]:
                values = marker["values"]
                if len(values) > MAX_VALUES:
                    top = sorted(values.items(), key=lambda kv: (-kv[1]["count"], kv[0]))
                    marker["values"] = dict(top[:MAX_VALUES])
        result[route] = shapes if limit is None else shapes[:limit]
    return {"routes": result}


def _merge_shape(
    merged: dict[str, dict[str, Any]],
    shape: dict[str, Any],
    best: dict[tuple[str, str], int],
    route: str,
) -> None:
    shape_id, count = str(shape["id"]), int(shape["count"])
    into = merged.get(shape_id)
    if into is None:
        merged[shape_id] = {
            "id": shape_id,
            "count": count,
            "first_seen": str(shape["first_seen"]),
            "last_seen": str(shape["last_seen"]),
            "keys": list(shape["keys"]),
            "markers": [
                {
                    "pointer": m["pointer"],
                    "type": m["type"],
                    **({"value_pointer": m["value_pointer"]} if m.get("value_pointer") else {}),
                    "values": {
                        str(v): {"count": int(s["count"]), "status": int(s["status"])}
                        for v, s in m["values"].items()
                    },
                }
                for m in shape["markers"]
            ],
            "status": int(shape["status"]),
            "statuses": {str(k): int(n) for k, n in (shape.get("statuses") or {}).items()},
        }
        best[(route, shape_id)] = count
        return
    statuses = into["statuses"]
    for key, n in (shape.get("statuses") or {}).items():
        statuses[str(key)] = statuses.get(str(key), 0) + int(n)
    into["count"] += count
    into["first_seen"] = min(into["first_seen"], str(shape["first_seen"]))
    into["last_seen"] = max(into["last_seen"], str(shape["last_seen"]))
    if count > best[(route, shape_id)]:
        best[(route, shape_id)] = count
        into["status"] = int(shape["status"])
    by_pointer = {m["pointer"]: m for m in into["markers"]}
    for marker in shape["markers"]:
        target = by_pointer.get(marker["pointer"])
        if target is None:
            continue
        values = target["values"]
        for value, seen in marker["values"].items():
            known = values.get(value)
            if known is None:
                values[str(value)] = {"count": int(seen["count"]), "status": int(seen["status"])}
            else:
                known["count"] += int(seen["count"])
