"""Tests of proxy/rules/, pure tables.

`snapshot` (a config compiled for serving) is exercised by every test that serves or simulates
a config (test_default.py, tests/test_handler.py); `ruletests` (the embedded `tests:`) by
tests/config/test_parse.py, tests/docs/test_examples.py and `check` in tests/test_main.py."""
