"""The streamlet cluster: a job manager (REST API, job registry, scheduling, failover, HA metadata
on the DFS) and task managers (slots, heartbeats, running jobs); see docs/cluster.md.

Modules: `model` (jobs, deployments, task managers), `ha` (metadata on the DFS), `scheduler`
(slot placement), `instances` (jobs with an instance on every task manager), `jobmanager` (the
registry and its state machine), `rest` and `openapi` (the HTTP API), `auth` (the shared token),
`client` (the REST client), `artifacts` (what a submission carries), `taskmanager` and
`deployment` (running jobs, draining), `distributed`, `exchange` and `coordination` (a job spread
over task managers: TCP channels and checkpoint coordination), `endpoints` (compaction service
address resolution), `metrics` (Prometheus), `dashboard/` (the web page), `local` (`streamlet
cluster`), `commands` (the CLI).
"""
