"""Tests of proxy/wire/, one module each (test_<module>.py); pure tables, no network."""
