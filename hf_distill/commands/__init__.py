"""The `hf-distill` commands, one module each, named after the command: `train` (recipe to published student),
`check` (a recipe validated without compute), `evaluate`, `report`, `rounds` (multi-round recipes) and
`cache_teacher`; `recipe` parses a YAML recipe and `--key value` overrides into the three argument classes. The
command line itself (`hf_distill.cli`) only dispatches to these."""
