"""`GET /shapes` over the workers of `--workers N` (SPEC 2, 10): each worker writes its
catalogue's snapshot to a file of its own in the directory the master already reads the
workers' metrics from (`MULTIPROC_ENV`), at most every `WRITE_INTERVAL` seconds
while it changes and once more when the worker stops; the master merges every file it
finds (`catalogue.merge_snapshots`) when /shapes is asked for.

As with counters, a dead worker's file stays, so counts never go backwards when a worker
is replaced.  Each file is bounded as its catalogue is, and the merge keeps at most each
route's `discover.max_shapes` shapes (those seen first).  A file is replaced whole
(`os.replace`), so the master never reads half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.config.model import Config
from proxy.rules.catalogue import ShapeCatalogue, merge_snapshots

WRITE_INTERVAL: Final = 0.25
"""Seconds between a worker's looks at its catalogue (written only when it changed)."""
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess directory: where `--workers N` workers write their
metrics files (`workers` sets it) and their shapes files (here)."""
_PREFIX: Final = "shapes_"


def shapes_directory() -> str | None:
    """The directory a `--workers N` worker writes its shapes to (None: not a worker of a
    master, or no directory)."""
    return os.environ.get(MULTIPROC_ENV) or None


def write_snapshot(directory: str, pid: int, catalogue: ShapeCatalogue) -> None:
    """Replace this worker's file with its catalogue's snapshot; never raises for I/O."""
    path = Path(directory) / f"{_PREFIX}{pid}.json"
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        temporary.write_bytes(orjson.dumps(catalogue.snapshot()))
        os.replace(temporary, path)


async def keep_written(catalogue: ShapeCatalogue, directory: str, pid: int) -> None:
    """Write the snapshot whenever the catalogue changed, until cancelled (then once more)."""
    written = -1
    try:
        while True:
            if catalogue.changes != written:
                written = catalogue.changes
                write_snapshot(directory, pid, catalogue)
            await asyncio.sleep(WRITE_INTERVAL)
    finally:
        if catalogue.changes != written:
            write_snapshot(directory, pid, catalogue)


def merged_shapes(directory: str, config: Config) -> dict[str, Any]:
    """Every worker's snapshot in `directory`, merged; a file that cannot be read (being
    replaced, or damaged) is left out of this answer."""
    snapshots: list[dict[str, Any]] = []
    for path in sorted(Path(directory).glob(f"{_PREFIX}*.json")):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            snapshots.append(orjson.loads(path.read_bytes()))
    limits = {r.name: (r.discover or config.discover).max_shapes for r in config.routes}
    return merge_snapshots(snapshots, limits)
