"""Child processes for tests: start, capture output to a file, wait for markers, SIGKILL, restart.

This module owns every OS process the test infrastructure starts (Python helpers started by
tests as well as the Kafka and S3 servers). Each process:

- runs in its own session / process group, so `kill()` also takes down anything it spawned;
- writes stdout and stderr to one log file per start (``<name>.<start-number>.log``), so a
  killed-then-restarted process gets a fresh log and markers from the previous run never match;
- is reaped when killed, and is SIGKILLed at interpreter exit if a test forgot it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Default working directory of child processes, and first on a Python child's PYTHONPATH."""

OUTPUT_TAIL_CHARS = 8000
"""How much captured output error messages include."""

EnvOverrides = Mapping[str, str | None]
"""Environment changes for a child: a value of None removes the variable."""


class ProcessError(RuntimeError):
    """A managed process did not behave as a test expected; the message includes its output."""


class ManagedProcess:
    """One command that can be started, waited on, killed and restarted.

    Output (stdout and stderr interleaved) goes to a log file under `log_dir`; read it with
    `output()`. Use `ProcessRunner` to create these so they are all stopped on teardown.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_dir: Path,
        env: EnvOverrides | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv: list[str] = [str(arg) for arg in argv]
        self.name = name
        self.log_dir = Path(log_dir)
        self.env_overrides: dict[str, str | None] = dict(env or {})
        self.cwd: Path | None = Path(cwd) if cwd is not None else None
        self.starts = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    def __repr__(self) -> str:
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, returncode={self.returncode})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Start the command; raise ProcessError if it is already running."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        env = os.environ.copy()
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        with open(self._log_path, "wb") as log_file:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    def restart(self) -> ManagedProcess:
        """SIGKILL the process if it is running, then start it again with a fresh log file."""
        if self._popen is not None:
            self.kill()
        return self.start()

    def kill(self, timeout: float = 30.0) -> int:
        """SIGKILL the process and its process group, reap it, and return its return code.

        The return code is -9 if the process was still running. Calling kill() on a process
        that already exited just reaps it and returns its return code.
        """
        popen = self._require_started()
        # While the child is not reaped its pid (== its process group id) cannot be reused,
        # so signalling the group is safe.
        if popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
        try:
            return popen.wait(timeout=timeout)
        finally:
            _LIVE.discard(self)

    def terminate(self, timeout: float = 10.0) -> int:
        """Send SIGTERM to the process group, wait up to `timeout` s, then SIGKILL if needed."""
        popen = self._require_started()
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself and return its return code."""
        popen = self._require_started()
        try:
            returncode = popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessError(self.describe(f"did not exit within {timeout}s")) from None
        _LIVE.discard(self)
        return returncode

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started); negative signal number if killed by one."""
        return self._popen.poll() if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def log_path(self) -> Path:
        """Log file of the current (latest) start."""
        if self._log_path is None:
            raise ProcessError(f"{self.name} was never started")
        return self._log_path

    # -- output ------------------------------------------------------------------------------

    def output(self) -> str:
        """Everything the current start has written so far (stdout and stderr)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", errors="replace")

    def wait_for_output(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> str:
        """Wait until a line of output contains `pattern` (substring or regex); return the line.

        Raise ProcessError, including the captured output, if the process exits first or the
        timeout passes.
        """
        self._require_started()
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running
            line = _find_line(self.output(), pattern)
            if line is not None:
                return line
            if exited:
                raise ProcessError(
                    self.describe(f"exited with {self.returncode} before printing {pattern!r}")
                )
            if time.monotonic() >= deadline:
                raise ProcessError(self.describe(f"did not print {pattern!r} within {timeout}s"))
            time.sleep(0.05)

    def describe(self, problem: str) -> str:
        """An error message with the command, its state and the tail of its output."""
        output = self.output()
        if len(output) > OUTPUT_TAIL_CHARS:
            output = "...\n" + output[-OUTPUT_TAIL_CHARS:]
        return (
            f"process {self.name!r} {problem}\n"
            f"  argv: {self.argv}\n"
            f"  pid: {self.pid}, returncode: {self.returncode}\n"
            f"  log: {self._log_path}\n"
            f"----- output -----\n{output}\n------------------"
        )

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise ProcessError(f"{self.name} was never started")
        return self._popen


class ProcessRunner:
    """Starts managed processes with logs under one directory and stops them all at the end."""

    def __init__(self, log_dir: Path, default_cwd: Path | None = REPO_ROOT) -> None:
        self.log_dir = Path(log_dir)
        self.default_cwd = default_cwd
        self.processes: list[ManagedProcess] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        env: EnvOverrides | None = None,
        cwd: Path | str | None = None,
    ) -> ManagedProcess:
        """Start any command. `env` overrides the inherited environment (None removes a key)."""
        base_name = name or Path(str(argv[0])).name
        process = ManagedProcess(
            argv,
            name=f"{len(self.processes):02d}-{base_name}",
            log_dir=self.log_dir,
            env=env,
            cwd=cwd if cwd is not None else self.default_cwd,
        )
        self.processes.append(process)
        return process.start()

    def python(
        self,
        code: str | None = None,
        *,
        module: str | None = None,
        script: Path | str | None = None,
        args: Sequence[str] = (),
        name: str | None = None,
        env: EnvOverrides | None = None,
        cwd: Path | str | None = None,
    ) -> ManagedProcess:
        """Start this interpreter with exactly one of `code` (-c), `module` (-m) or `script`.

        Output is unbuffered (``-u``), so markers show up as soon as they are printed. The
        repository root is put first on PYTHONPATH, so the child imports this checkout's
        packages whatever its `cwd` (unless `env` sets PYTHONPATH itself).
        """
        if sum(target is not None for target in (code, module, script)) != 1:
            raise ValueError("pass exactly one of code, module or script")
        argv: list[str] = [sys.executable, "-u"]
        if code is not None:
            argv += ["-c", code]
        elif module is not None:
            argv += ["-m", module]
        else:
            argv.append(str(script))
        argv += list(args)
        default_name = module or (Path(str(script)).stem if script is not None else "python")
        inherited = os.environ.get("PYTHONPATH")
        python_path = os.pathsep.join([str(REPO_ROOT), *([inherited] if inherited else [])])
        child_env: dict[str, str | None] = {"PYTHONPATH": python_path, **(env or {})}
        return self.start(argv, name=name or default_name, env=child_env, cwd=cwd)

    def stop_all(self) -> None:
        """SIGKILL and reap every process this runner started that is still around."""
        errors: list[Exception] = []
        for process in self.processes:
            if process.pid is None:
                continue
            try:
                process.kill()
            except Exception as error:  # keep stopping the others, report afterwards
                errors.append(error)
        if errors:
            raise ProcessError(f"could not stop all processes: {errors}")


def start_server(
    launch: Callable[[int], ManagedProcess],
    probe: Callable[[int], None],
    *,
    timeout: float = 30.0,
    attempts: int = 3,
) -> tuple[ManagedProcess, int]:
    """Start a server on a free loopback port and wait until `probe(port)` stops raising.

    `launch(port)` starts the server process. `probe(port)` raises any exception while the
    server is not ready yet. Choosing a free port is racy, so if the process exits during
    startup (e.g. the port was taken meanwhile) it is retried on a fresh port, up to
    `attempts` times. Return the running process and its port; on failure the process is
    killed and the ProcessError includes its output.
    """
    failures: list[str] = []
    for _ in range(attempts):
        port = free_port()
        process = launch(port)
        try:
            ready = _poll_until_ready(process, port, probe, timeout)
        except BaseException:
            process.kill()
            raise
        if ready:
            return process, port
        process.kill()  # reap the exited process
        failures.append(process.describe("exited during startup"))
    raise ProcessError(f"server exited during startup {attempts} times:\n" + "\n".join(failures))


def _poll_until_ready(
    process: ManagedProcess, port: int, probe: Callable[[int], None], timeout: float
) -> bool:
    """True once the probe passes, False if the process exits; ProcessError on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not process.running:
            return False
        try:
            probe(port)
        except Exception as error:
            last_error = error
        else:
            return True
        time.sleep(0.1)
    raise ProcessError(
        process.describe(f"was not ready within {timeout}s (last probe error: {last_error!r})")
    )


def _find_line(text: str, pattern: str | re.Pattern[str]) -> str | None:
    for line in text.splitlines():
        if isinstance(pattern, re.Pattern):
            if pattern.search(line):
                return line
        elif pattern in line:
            return line
    return None


_LIVE: set[ManagedProcess] = set()
"""Started processes not yet reaped; SIGKILLed at interpreter exit as a last resort."""


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        with contextlib.suppress(Exception):
            process.kill(timeout=5.0)
