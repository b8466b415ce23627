"""rules: what an upstream response means, compiled at load and evaluated pure (SPEC 4, 5).

`ruleset` compiles a route's rule names (user rules and `presets`) into a `RuleSet`;
`inspection` decides what is buffered and decodes it within bounds; `verdict` is what a
matching rule decided and how it is applied to a response; `snapshot` is a loaded config
compiled for serving (one per reload); `ruletests` runs a config's embedded tests through
the same steps; `events` finds the events of an SSE or NDJSON stream within a bound, and
`streams` judges them like bodies (SPEC 5.1: the first event held, later ones watched, the
built-in `stream-error`); `decide` judges one body or first event, verdict applied;
`suspect` finds error markers in bodies no rule matched and `catalogue` keeps their shapes
per route (SPEC 10).  No sockets, no clocks: tested with tables.

May import: wire, config.
"""
