"""streamlet: a stream processor with pluggable keyed state.

The runtime (job API, graph, tasks, checkpoints, connectors, cluster) grows here; today it holds
the command line and a small end-to-end demo of the state backends.
"""
