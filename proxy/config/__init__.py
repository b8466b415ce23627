"""config: YAML (`version: 1`) -> frozen dataclasses, parsed once, strictly (SPEC 4).

`load` is the entry (a file, a text, or the embedded default, `proxy/default.yaml`); `parse` and
`parse_rules` read each section through `walker`, which records every problem with its
YAML path and line (`errors`); `yamlsrc` gives YAML values their positions; `model` is
the data a loaded config is made of.  Pure: no sockets, no clocks.

May import: wire.
"""
