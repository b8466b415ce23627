"""Tests of proxy/config/.

- test_parse.py: `load`, `parse`, `parse_rules`, `errors` and `model` (every value, default and
  error class, with its YAML path and line);
- test_schema.py: config/schema.json held against the parsers, and `walker`'s checks;
- test_default.py: the embedded default (`proxy/default.yaml`, SPEC 3) on real bodies;
- test_yamlsrc.py: YAML positions."""
