"""Tests of proxy/observe/ (metrics sample values on a fresh registry, log lines, batching)."""
