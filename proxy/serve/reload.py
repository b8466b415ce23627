"""Config reload (SPEC 4.6): on SIGHUP, or when the file changes with `--watch`.

A candidate config must parse and pass its embedded tests; otherwise the old one keeps
serving.  Requests in flight keep the snapshot they started with (the handler takes
the runtime once per request), so a reload never changes a request half-way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.config.errors import ConfigError
from proxy.config.model import Config
from proxy.rules.ruletests import failure_report

Loader = Callable[[], Config]
WATCH_INTERVAL = 1.0  # seconds between looks at the file: cheap, and no inotify needed


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The result of loading a candidate config."""

    config: Config | None
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.config is not None


def try_load(loader: Loader) -> ReloadResult:
    """Load and test a candidate; never raises for a bad file."""
    try:
        config = loader()
    except ConfigError as exc:
        return ReloadResult(None, tuple(p.render() for p in exc.problems) or ("no config",))
    failing = failure_report(config)
    if failing:
        return ReloadResult(None, tuple(failing))
    return ReloadResult(config)


def carry_over(old: Config, new: Config) -> tuple[Config, list[str]]:
    """Settings a running process cannot change keep their old values."""
    import dataclasses

    notes = []
    if new.listen != old.listen:
        notes.append(f"listen stays {old.listen} until a restart")
    if new.admin_listen != old.admin_listen:
        notes.append(f"admin.listen stays {old.admin_listen} until a restart")
    if new.server != old.server:
        notes.append("server limits change at the next restart")
    kept = dataclasses.replace(
        new, listen=old.listen, admin_listen=old.admin_listen, server=old.server
    )
    return kept, notes


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What changes when the file does; follows symlinks (Kubernetes ConfigMaps swap a
    `..data` link, which changes the inode behind the same path)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_dev


async def watch(path: str, changed: Callable[[], Awaitable[None]]) -> None:
    """Call `changed` whenever `path` changes; runs until cancelled."""
    last = _signature(path)
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        now = _signature(path)
        if now != last and now is not None:
            last = now
            await changed()
