"""Tests of proxy/serve/: real processes (lifecycle, reload, workers) and the admin app."""
