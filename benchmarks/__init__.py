"""Benchmarks: `python -m benchmarks NAME [--quick] [--json]`.

Each benchmark module has `run(quick: bool) -> dict` and measures streamlet against a peer in the
same run, reporting ratios (machines are noisy; ratios travel) next to the absolute figures.
"""
