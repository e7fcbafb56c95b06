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
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args.backend or ["memory", "rocksdb"], args.words, args.seed)
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


if __name__ == "__main__":
    sys.exit(main())
