"""A disaggregated LSM tree: the `lsm` state backend, whose files live on any fsspec file system.

Table layer: `block`, `bloom`, `table` (the file format), `merge` (merging sorted runs) and
`compaction_job` (the pure compaction function that local and remote compactors run).
DB layer: memtables, versions and manifests, caches, compaction picking and running, the DB itself.
`files` owns the file lifecycle (layout, names, protection, deletion, result validation) by the
rules of docs/lsm-protocol.md.
"""
