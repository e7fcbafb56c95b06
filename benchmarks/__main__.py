"""Run one benchmark by name and print its figures (a table, or one JSON object with --json).

SIGTERM stops a benchmark as Ctrl-C does (KeyboardInterrupt): the services and workers it started
(Kafka broker, S3 server, workers) are stopped on the way out, not left running.
"""

import argparse
import importlib
import json
import pkgutil
import signal
import sys

import benchmarks


def main(argv: list[str] | None = None) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")
    )
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("name", choices=names)
    parser.add_argument("--quick", action="store_true", help="a small run, for smoke tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = importlib.import_module(f"benchmarks.{args.name}").run(quick=args.quick)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        width = max(map(len, result))
        for key, value in sorted(result.items()):
            shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
