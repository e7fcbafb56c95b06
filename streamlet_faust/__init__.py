"""Faust apps on streamlet's disaggregated LSM: the `streamlet` table store (docs/faust.md).

`Store` is registered under Faust's `faust.stores` entry point as `streamlet`, so an app selects
it with `store="streamlet://?state.dir=s3://bucket/prefix"`, app-wide or per table. Each table
partition is an LSM database on the DFS that outlives the worker: a worker that takes a partition
over, on a new node too, opens it where it was left and replays only the changelog after the
offset it holds.

This package depends on `statebackend` (the LSM), `streamlet` (configuration keys and the
remote compaction mode) and `compaction_service` (through the remote mode); nothing depends on it,
and it is only imported when Faust is installed (the `faust` extra).
"""

from streamlet_faust.store import Store

__all__ = ["Store"]
