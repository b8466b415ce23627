"""tools: what only the command line uses.

`explain` dry-runs one response through a route's rules and `explain_render` prints the
report; `ruletrace` says, rule by rule, why each matched or not; `demo` runs a lying
upstream with the proxy in front of it; `suggest` reads a catalogue of suspect shapes (a
proxy's /shapes, a HAR capture, body files) and `suggest_rules` turns it into rules with
tests, merged into a config.

May import: every layer below (wire, observe, config, rules, upstream, downstream, the
request layer, serve).
"""
