"""The `streamlet` command line."""

import argparse
import sys

from statebackend import backend_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="keyed word count through the state backends, with a crash and restore"
    )
    demo.add_argument("--backend", choices=backend_names(), action="append")
    demo.add_argument("--words", type=int, default=200_000)
    demo.add_argument("--seed", type=int, default=42)
    service = commands.add_parser(
        "compaction-service", help="serve LSM compactions over gRPC (for development)"
    )
    service.add_argument("--port", type=int, required=True, help="0: any free port")
    service.add_argument("--host", default="127.0.0.1")
    service.add_argument("--allowed-root", action="append", required=True, dest="allowed_roots")
    service.add_argument("--workers", type=int, default=2)
    service.add_argument("--policy", default="round_robin")
    service.add_argument("--queue-size", type=int, default=64)
    service.add_argument("--token-file")
    service.add_argument("--tls-cert")
    service.add_argument("--tls-key")
    service.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    service.add_argument("--storage-options-file", help="JSON object of fsspec storage options")
    run = commands.add_parser("run", help="run a job module locally, with a progress line")
    run.add_argument("job_file", metavar="JOB.py")
    run.add_argument("-p", "--parallelism", type=int, help="default operator parallelism")
    run.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a configuration key (see docs/configuration.md); repeatable",
    )
    run.add_argument("--config", help="YAML configuration file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args.backend or ["memory", "rocksdb"], args.words, args.seed)
    if args.command == "compaction-service":
        from compaction_service.cli import serve

        options = vars(args)
        del options["command"]
        return serve(**options)
    if args.command == "run":
        return _run(args.job_file, args.parallelism, args.defines, args.config)
    return 2


def _demo(backends: list[str], words: int, seed: int) -> int:
    from streamlet.demo import run_word_count

    ok = True
    for backend in backends:
        result = run_word_count(backend, words=words, seed=seed)
        verdict = "exact" if result.matches_expected else "WRONG"
        print(
            f"[{backend}] {words} words, checkpoint at word {result.checkpoint_offset}, "
            f"crash, restore, replay: counts {verdict}"
        )
        for word, count in result.top:
            print(f"  {word:<12} {count:>8}")
        ok = ok and result.matches_expected
    return 0 if ok else 1


def _run(job_file: str, parallelism: int | None, defines: list[str], config: str | None) -> int:
    import logging

    from streamlet.config import ConfigError, Configuration
    from streamlet.errors import StreamletError
    from streamlet.launcher import parse_defines, run_job_file

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        configuration = Configuration.load(config, overrides=parse_defines(defines))
        run_job_file(job_file, configuration, parallelism)
    except (ConfigError, StreamletError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
