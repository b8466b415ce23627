"""System tests: real proxy processes under faults, fuzzed input and a soak."""
