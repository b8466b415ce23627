"""A 60-second version of bench/soak.py in the suite: mixed traffic at a fixed rate with
reloads every 30 s; nothing unexpected, RSS and fds flat."""

from __future__ import annotations

import importlib.util
import io
import sys

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "bench" / "soak.py")
assert _spec is not None and _spec.loader is not None
soak = importlib.util.module_from_spec(_spec)
sys.modules["bench_soak"] = soak  # dataclasses look their module up while it loads
_spec.loader.exec_module(soak)


async def test_sixty_second_soak() -> None:
    out = io.StringIO()
    result = await soak.soak(60, 40, 10, out=out)
    report = out.getvalue()
    print(report)
    assert result.unexpected == [], report
    assert result.reloads == 1  # at 30 s
    for kind in ("clean:200", "tunnelled:401", "gzip:504", "stream:200", "refused:502"):
        assert result.counts[kind] >= 400, (kind, dict(result.counts))
    samples = result.samples
    assert len(samples) >= 5
    # flat: after the first report (warm-up), RSS grows by less than 16 MiB and fds by < 10
    base_rss = min(s.rss_kib for s in samples[:2])
    assert max(s.rss_kib for s in samples) - base_rss < 16 * 1024, report
    base_fds = min(s.fds for s in samples[:2])
    assert max(s.fds for s in samples) - base_fds < 10, report
