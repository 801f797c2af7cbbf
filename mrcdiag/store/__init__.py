"""The run directory, one vocabulary: `layout` (where each part lives), `records` (the
JSON metadata), `schema` (row columns, codes, field positions), `samples` (node samples),
`writer`/`tail` (append-only Arrow streams), `reader` (validation and merging),
`synthetic` (runs in the real format for tests and benchmarks)."""
