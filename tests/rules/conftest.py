"""Prints the preset corpora's precision and recall (issue 17) at the end of a run that
collected tests/rules/test_corpus.py."""

from __future__ import annotations

import pytest

from tests.rules import corpus


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if any("test_corpus.py" in r.nodeid for r in terminalreporter.stats.get("passed", [])):
        terminalreporter.write_line(corpus.report())
