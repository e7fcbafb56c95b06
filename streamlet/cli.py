"""The `streamlet` command line.

`streamlet run JOB.py ... -- ARGS` and `streamlet submit TARGET ... -- ARGS` hand everything after
the first `--` to the job module (its `sys.argv[1:]` while it loads). `streamlet run -s URL` and
`streamlet submit -s URL` start the job from a checkpoint or savepoint, at the parallelism given
now; `streamlet savepoint` and `streamlet stop` take savepoints of a job on a cluster, `streamlet
savepoint --dispose URL` deletes one.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv, job_args = _split_job_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if job_args is not None and args.command not in JOB_ARGS_COMMANDS:
        parser.error(f"only {' and '.join(JOB_ARGS_COMMANDS)} take job arguments after --")
    if args.command == "demo":
        return _demo(args.rows, args.parallelism)
    if args.command == "compaction-service":
        from compaction_service.cli import serve

        options = vars(args)
        del options["command"]
        return serve(**options)
    if args.command == "run":
        return _run(args, job_args or [])
    if args.command in CLUSTER_COMMANDS:
        return _cluster_command(args, job_args or [])
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The parser of every `streamlet` command (the job module's arguments after `--` apart)."""
    parser = argparse.ArgumentParser(prog="streamlet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="the paper job on the lsm backend, compactions offloaded to a service"
    )
    demo.add_argument("--rows", type=int, default=30_000, help="rows per source")
    demo.add_argument("-p", "--parallelism", type=int, default=2)
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
    service.add_argument(
        "--drain-grace", type=float, default=30.0, help="seconds running calls get on SIGTERM"
    )
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
    run.add_argument(
        "-s",
        "--restore-from",
        metavar="URL",
        help="start from this checkpoint (<checkpoint.dir>/<job>/chk-N or its _metadata) or "
        "savepoint, at the parallelism given now; wins over checkpoint.restore",
    )
    run.add_argument(
        "--allow-non-restored-state",
        action="store_true",
        default=None,
        help="leave out restored state of operators the job no longer has (matched by uid)",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log INFO lines (checkpoints, compactions), not only warnings",
    )
    _add_cluster_commands(commands)
    return parser


CLUSTER_COMMANDS = (
    "jobmanager",
    "taskmanager",
    "cluster",
    "submit",
    "list",
    "status",
    "cancel",
    "savepoint",
    "stop",
)
JOB_ARGS_COMMANDS = ("run", "submit")


def _split_job_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The command's own arguments, and the job module's after the first `--` (None: no `--`)."""
    if "--" not in argv:
        return argv, None
    split = argv.index("--")
    return argv[:split], argv[split + 1 :]


def _add_defines(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"set a configuration key of {what} (see docs/configuration.md); repeatable",
    )
    command.add_argument("--config", help="YAML configuration file")


def _add_cluster_commands(commands: "argparse._SubParsersAction") -> None:
    """The cluster's commands (see docs/cluster.md)."""
    jobmanager = commands.add_parser("jobmanager", help="run a job manager (REST API)")
    jobmanager.add_argument("--host", help="interface to bind (default: cluster.bind-host)")
    jobmanager.add_argument("--port", type=int, default=8081, help="0: any free port")
    _add_defines(jobmanager, "the job manager")
    taskmanager = commands.add_parser("taskmanager", help="run a task manager")
    taskmanager.add_argument("--slots", type=int, help="default: taskmanager.slots")
    taskmanager.add_argument(
        "--port", type=int, default=0, help="port of /metrics and /healthz (0: any free port)"
    )
    taskmanager.add_argument(
        "--label", action="append", dest="labels", help="a label (repeatable): taskmanager.labels"
    )
    _add_defines(taskmanager, "the task manager")
    for managed in (jobmanager, taskmanager):  # set by `streamlet cluster` for its children
        managed.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    cluster = commands.add_parser("cluster", help="a local job manager and task managers")
    cluster.add_argument("--taskmanagers", type=int, default=2)
    cluster.add_argument("--slots", type=int, help="slots per task manager")
    cluster.add_argument("--port", type=int, default=8081)
    _add_defines(cluster, "the cluster's processes")
    submit = commands.add_parser("submit", help="submit a job module, archive or module name")
    submit.add_argument("target", metavar="JOB.py|ARCHIVE.zip|MODULE")
    submit.add_argument("--entry", help="the job module inside an archive (default job.py)")
    submit.add_argument("-p", "--parallelism", type=int)
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to end; exit with 0 only if it finished",
    )
    submit.add_argument(
        "-s",
        "--restore-from",
        metavar="URL",
        help="start from this savepoint or retained checkpoint (its directory or _metadata), "
        "at the parallelism given now",
    )
    submit.add_argument(
        "--allow-non-restored-state",
        action="store_true",
        help="leave out restored state of operators the job no longer has (matched by uid)",
    )
    formats = ("native", "canonical")
    savepoint = commands.add_parser(
        "savepoint", help="take a savepoint of a running job (or --dispose of one)"
    )
    savepoint.add_argument("job_id", metavar="ID", nargs="?")
    savepoint.add_argument(
        "url", metavar="URL", nargs="?", help="a new or empty directory (default: under "
        "<checkpoint.dir>/savepoints/<job>/)"
    )
    savepoint.add_argument("--format", choices=formats, default="native")
    savepoint.add_argument(
        "--dispose", metavar="URL", help="delete this savepoint (no job manager needed)"
    )
    stop = commands.add_parser("stop", help="stop a job with a savepoint as its final checkpoint")
    stop.add_argument("job_id", metavar="ID")
    stop.add_argument("--savepoint", metavar="URL", help="the savepoint's directory")
    stop.add_argument("--format", choices=formats, default="native")
    for command in (savepoint, stop):
        command.add_argument("--jobmanager", help="job manager URL (default: cluster.jobmanager)")
        _add_defines(command, "the client (dfs.storage-options for --dispose)")
    for name, help_text in (
        ("list", "list the cluster's jobs"),
        ("status", "show a job's status"),
        ("cancel", "cancel a job (after a final checkpoint)"),
    ):
        command = commands.add_parser(name, help=help_text)
        if name != "list":
            command.add_argument("job_id", metavar="ID")
        if name != "cancel":
            command.add_argument("--json", action="store_true", help="machine-readable output")
        command.add_argument("--jobmanager", help="job manager URL (default: cluster.jobmanager)")
        command.add_argument("--config", help="YAML configuration file (cluster.* keys)")
    submit.add_argument("--jobmanager", help="job manager URL (default: cluster.jobmanager)")
    _add_defines(submit, "the job (and, with --config, the client)")


def _cluster_command(args: argparse.Namespace, job_args: list[str]) -> int:
    from streamlet.cluster import commands, local
    from streamlet.config import ConfigError, Configuration
    from streamlet.launcher import parse_defines

    try:
        defines = parse_defines(getattr(args, "defines", []))
        if args.command == "submit":
            client_overrides = {}
        else:
            client_overrides = defines
        if getattr(args, "jobmanager", None):
            client_overrides = {**client_overrides, "cluster.jobmanager": args.jobmanager}
        config = Configuration.load(args.config, overrides=client_overrides)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if getattr(args, "parent_pid", None) is not None:
        from statebackend.lifeline import exit_with_parent

        exit_with_parent(args.parent_pid)
    if args.command == "jobmanager":
        return commands.jobmanager(config, args.host, args.port)
    if args.command == "taskmanager":
        return commands.taskmanager(config, args.slots, args.port, args.labels)
    if args.command == "cluster":
        return local.cluster(config, args.port, args.taskmanagers, args.slots)
    if args.command == "submit":
        if args.allow_non_restored_state:
            defines["checkpoint.allow-non-restored-state"] = "true"
        return commands.submit(
            config,
            args.target,
            args.entry,
            args.parallelism,
            defines,
            job_args,
            args.wait,
            args.restore_from,
        )
    if args.command == "savepoint":
        if args.dispose is not None:
            if args.job_id is not None:
                print("error: savepoint --dispose URL takes no job id", file=sys.stderr)
                return 2
            return commands.dispose_savepoint(config, args.dispose)
        if args.job_id is None:
            print("error: savepoint needs a job id (or --dispose URL)", file=sys.stderr)
            return 2
        return commands.savepoint(config, args.job_id, args.url, args.format)
    if args.command == "stop":
        return commands.stop(config, args.job_id, args.savepoint, args.format)
    if args.command == "list":
        return commands.list_jobs(config, args.json)
    if args.command == "status":
        return commands.status(config, args.job_id, args.json)
    return commands.cancel(config, args.job_id)


def _demo(rows: int, parallelism: int) -> int:
    from streamlet.demo import print_demo, run_demo

    return print_demo(run_demo(rows, parallelism))


def _run(args: argparse.Namespace, job_args: list[str]) -> int:
    from statebackend import StateError
    from streamlet.config import ConfigError, Configuration
    from streamlet.errors import StreamletError
    from streamlet.launcher import configure_logging, parse_defines, run_job_file

    configure_logging(args.verbose)
    try:
        configuration = Configuration.load(args.config, overrides=parse_defines(args.defines))
        run_job_file(
            args.job_file,
            configuration,
            args.parallelism,
            job_args=job_args,
            restore_from=args.restore_from,
            allow_non_restored_state=args.allow_non_restored_state,
        )
    except (ConfigError, StreamletError, StateError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
