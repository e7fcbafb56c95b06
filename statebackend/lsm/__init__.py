"""A disaggregated LSM tree: the `lsm` state backend, whose files live on any fsspec file system.

Table layer: `block`, `bloom`, `table` (the file format), `meta` (a table's metadata, and a
version's reference to it: root and clip range), `merge` (merging sorted runs) and
`compaction_job` (the pure compaction function that local and remote compactors run).
DB layer: memtables, versions and manifests, caches, reads, compaction picking and running, the
DB itself (`db`, opened by `opening`), and the backend (`backend`, with `adoption` for rescales).
`files` owns the file lifecycle (layout, names, protection, deletion, result validation), `pins`
the pin files, `gc` the collections and `sharing` the tables shared between DB roots, by the
rules of docs/lsm-protocol.md.
"""
