"""System tests: real proxy processes under faults, fuzzed responses and requests, and a soak."""
