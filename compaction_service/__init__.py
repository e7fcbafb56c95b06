"""The compaction service: LSM compactions offloaded over gRPC (see docs/compaction-service.md).

Server side: `server` (gRPC servicer and lifecycle), `dispatcher`, `scheduler` (policies),
`worker_pool`, `subcompactions`, `security`, `cli`, and `job` (the service as a streamlet job:
`streamlet submit compaction_service` runs this package's `job` module). Client side:
`client.RemoteCompactor`, the LSM's `Compactor` that calls the service and falls back to local
compaction, with `breaker`. Both sides share `convert` and the protocol in `proto/`.
"""
