"""`streamlet run`: load a job module, run it locally with a live progress line, summarize.

A job module is a Python file that assigns a `streamlet.Job` to a module-level variable (by
convention `job`). Loading errors name the file (and line, for a syntax error); a module without a
job says so. The run restores the job's latest checkpoint, or the checkpoint or savepoint given
with `-s` (`run_job_file(..., restore_from=)`), at the parallelism given now. While the job runs,
a progress line shows records in and out with their rates, completed checkpoints and the state
backends' compactions (local and remote); when it ends, the line is printed once more with the
final figures, which the summary after it repeats. SIGINT (Ctrl-C) or SIGTERM stops the job after
a final checkpoint; a second one aborts at once.

The terminal shows the progress line, warnings and errors, and the summary: the INFO lines of the
runtime and the state backends (a line per checkpoint, two per compaction, the compaction client's
`invokeCompactionService ...`) are shown only with `streamlet run -v` (`configure_logging`). Task
managers and the compaction service keep logging them.
"""

import asyncio
import contextlib
import logging
import runpy
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from streamlet.api import Job
from streamlet.config import Configuration
from streamlet.errors import JobLoadError, StreamletError, user_code_location
from streamlet.executor import JobResult, execute_job
from streamlet.metrics import JobMetrics

log = logging.getLogger("streamlet.run")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def configure_logging(verbose: bool, stream: TextIO = sys.stderr) -> None:
    """Log to `stream` at WARNING, or at INFO when `verbose` (`streamlet run -v`)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, stream=stream, format=LOG_FORMAT
    )


_ARGV_LOCK = threading.Lock()


@contextlib.contextmanager
def job_argv(argv: Sequence[str]) -> Iterator[None]:
    """`sys.argv` is `argv` while a job module loads (loads on several threads take turns)."""
    with _ARGV_LOCK:
        saved = sys.argv
        sys.argv = list(argv)
        try:
            yield
        finally:
            sys.argv = saved


def load_job(path: str | Path, job_args: Sequence[str] = ()) -> Job:
    """The `Job` a job module defines (`job`, or its only module-level `Job`); while the module
    loads, `sys.argv` is `[path, *job_args]` (the arguments after `--`)."""
    path = Path(path)
    if not path.is_file():
        raise JobLoadError(f"{path}: no such job file")
    sys.path.insert(0, str(path.resolve().parent))
    try:
        with job_argv([str(path), *job_args]):
            namespace = runpy.run_path(str(path), run_name="__streamlet_job__")
    except SystemExit as e:  # e.g. argparse rejecting the arguments after --
        raise JobLoadError(
            f"{path}: the job module exited with status {e.code} while loading "
            f"(its arguments: {list(job_args)})"
        ) from e
    except SyntaxError as e:
        raise JobLoadError(f"{path}:{e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        where = user_code_location(e) or str(path)
        raise JobLoadError(
            f"{path}: importing the job module failed at {where}: {type(e).__name__}: {e}"
        ) from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    if isinstance(namespace.get("job"), Job):
        return namespace["job"]
    jobs = [value for value in namespace.values() if isinstance(value, Job)]
    if len(jobs) == 1:
        return jobs[0]
    if jobs:
        raise JobLoadError(f"{path} defines {len(jobs)} jobs; name the one to run `job`")
    raise JobLoadError(
        f"{path} defines no streamlet.Job: assign one to a module-level variable named `job`, "
        'e.g. job = Job("my-job")'
    )


def run_job_file(
    path: str,
    config: Configuration,
    parallelism: int | None = None,
    stream: TextIO = sys.stderr,
    job_args: Sequence[str] = (),
    restore_from: str | None = None,
    allow_non_restored_state: bool | None = None,
) -> JobResult:
    """Run the job of the module at `path`; `restore_from` and `allow_non_restored_state` as for
    `streamlet.executor.execute_job`."""
    job = load_job(path, job_args)
    return asyncio.run(
        _run(job, config, parallelism, stream, restore_from, allow_non_restored_state)
    )


async def _run(
    job: Job,
    config: Configuration,
    parallelism: int | None,
    stream: TextIO,
    restore_from: str | None,
    allow_non_restored_state: bool | None,
) -> JobResult:
    stop = asyncio.Event()
    metrics = JobMetrics()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second interrupt: aborting without a final checkpoint")
            main.cancel()  # type: ignore[union-attr]
            return
        progress.note(
            f"stopping job {job.name} after a final checkpoint (interrupt again to abort)"
        )
        stop.set()

    progress = ProgressLine(job.name, metrics, stream)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    reporter = asyncio.create_task(progress.run(config.get("progress.interval") / 1000))
    try:
        result = await execute_job(
            job,
            config,
            parallelism=parallelism,
            stop=stop,
            metrics=metrics,
            restore_from=restore_from,
            allow_non_restored_state=allow_non_restored_state,
        )
    except asyncio.CancelledError:
        raise StreamletError(
            f"job {job.name} aborted without a final checkpoint; the next run restores the "
            "latest completed one"
        ) from None
    finally:
        reporter.cancel()
        progress.finish()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    stream.write(summary(result, stopped=stop.is_set(), metrics=metrics) + "\n")
    return result


class ProgressLine:
    """Rewrites one status line on a terminal; prints one line per interval otherwise."""

    def __init__(self, job_name: str, metrics: JobMetrics, stream: TextIO) -> None:
        self.job_name = job_name
        self.metrics = metrics
        self.stream = stream
        self.started = time.monotonic()
        self.terminal = stream.isatty()
        self._last = (self.started, 0, 0)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.show()

    def show(self) -> None:
        now = time.monotonic()
        metrics = self.metrics
        last_time, last_in, last_out = self._last
        elapsed = max(now - last_time, 1e-9)
        rate_in = (metrics.records_in - last_in) / elapsed
        rate_out = (metrics.records_out - last_out) / elapsed
        self._last = (now, metrics.records_in, metrics.records_out)
        local, remote = metrics.compactions()
        line = (
            f"[{self.job_name}] {_clock(now - self.started)} "
            f"in {metrics.records_in:,} ({rate_in:,.0f}/s) "
            f"out {metrics.records_out:,} ({rate_out:,.0f}/s) "
            f"checkpoints {metrics.checkpoints} "
            f"compactions local {local} remote {remote}"
        )
        if self.terminal:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """Print `message` on a line of its own (the progress line is redrawn at the next show)."""
        self.stream.write(("\r\x1b[2K" if self.terminal else "") + message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """Show the line once more, with the final figures (those of the summary), and end it."""
        self.show()
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()


def summary(result: JobResult, stopped: bool, metrics: JobMetrics) -> str:
    restored = (
        f", restored from checkpoint {result.restored_checkpoint}"
        if result.restored_checkpoint is not None
        else ""
    )
    how = "stopped" if stopped else "finished"
    return (
        f"job {result.job_name} {how} in {result.seconds:.1f} s: {result.records_in:,} records "
        f"in, {result.records_out:,} out, {result.checkpoints} checkpoints, "
        f"{result.restarts} restarts{restored}{_compactions(metrics)}"
    )


def _compactions(metrics: JobMetrics) -> str:
    local, remote = metrics.compactions()
    if not local and not remote:
        return ""
    _, moved = metrics.compaction_cpu_seconds()
    return (
        f"; compactions: {local} local, {remote} remote "
        f"({moved:.1f} CPU seconds moved off the job)"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def parse_defines(defines: list[str]) -> dict[str, Any]:
    """`["k=v", ...]` from `-D` options as a mapping; a malformed one is a `ValueError`."""
    values: dict[str, Any] = {}
    for define in defines:
        key, sep, value = define.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-D expects KEY=VALUE, got {define!r}")
        values[key.strip()] = value
    return values
