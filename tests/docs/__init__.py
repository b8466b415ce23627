"""Documentation tests: every YAML example shown in README and docs/ loads, and
config/examples/ pass `check`."""
