"""Tests of proxy/tools/.

test_explain.py covers `explain` and `explain_render` (text and JSON); `demo` is run as a
user would in tests/test_main.py."""
