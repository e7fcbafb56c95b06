"""What a submission carries and how it becomes a `Job` again.

A submission names an importable module (`jobs.wordcount`; a package such as `compaction_service`
stands for its `job` module), or carries a
job module file (`job.py`) or a zip archive of files with an entry module (`--entry`, default
`job.py`). `pack` runs in the client, `load` in the job manager (to reject a broken module at
submission) and in the task manager (to run it): a file or archive is written to a fresh
directory and loaded with `streamlet.launcher.load_job`.

The job module's arguments (`streamlet submit JOB -- ARGS`) travel in the artifact: the module
sees them as `sys.argv[1:]` while it loads, `sys.argv[0]` being the path it is loaded from (for
an importable module, its name). An importable module is imported once per process, as any
Python import, so only a file or an archive loads afresh for every job.

`check` keeps a submission inside its directory: the file name is a plain name (no `/`, no NUL,
at most `MAX_NAME_BYTES`), the entry a relative path without `..`, and an archive holds only
files and directories (a symbolic link could lead its later entries anywhere).
"""

import importlib
import importlib.util
import stat
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from types import ModuleType

from streamlet.api import Job
from streamlet.cluster.model import Artifact
from streamlet.errors import JobLoadError
from streamlet.launcher import job_argv, load_job

DEFAULT_ENTRY = "job.py"
MAX_NAME_BYTES = 255  # of a file name (NAME_MAX)
MAX_PATH_BYTES = 1024  # of an entry's path inside an archive


def pack(
    target: str, entry: str | None = None, args: Sequence[str] = ()
) -> tuple[Artifact, bytes | None]:
    """The artifact for `JOB.py`, `ARCHIVE.zip` or `MODULE` with the job module's arguments,
    and the file's bytes if any."""
    path = Path(target)
    if path.suffix == ".py":
        if not path.is_file():
            raise JobLoadError(f"{target}: no such job file")
        return Artifact("file", file_name=path.name, args=list(args)), path.read_bytes()
    if path.suffix == ".zip":
        if not path.is_file():
            raise JobLoadError(f"{target}: no such archive")
        archive = Artifact(
            "archive", file_name=path.name, entry=entry or DEFAULT_ENTRY, args=list(args)
        )
        return archive, path.read_bytes()
    if not all(part.isidentifier() for part in target.split(".")):
        raise JobLoadError(f"{target!r} is neither a .py file, a .zip archive nor a module name")
    return Artifact("module", module=target, args=list(args)), None


def check(artifact: Artifact) -> None:
    """Reject names that could escape the job's directory or that no file system takes."""
    if artifact.kind not in ("module", "file", "archive"):
        raise JobLoadError(f"unknown artifact kind {_shown(artifact.kind)}")
    if not isinstance(artifact.args, list) or not all(isinstance(a, str) for a in artifact.args):
        raise JobLoadError(f"the job's args must be a list of strings, not {_shown(artifact.args)}")
    if artifact.kind == "module":
        if not isinstance(artifact.module, str) or not all(
            part.isidentifier() for part in artifact.module.split(".")
        ):
            raise JobLoadError(
                f"bad module name {_shown(artifact.module)}: a module submission needs a dotted "
                "module name (jobs.wordcount)"
            )
        return
    if artifact.file_name is None:
        raise JobLoadError(f"a {artifact.kind} submission needs a file name")
    problem = _path_problem(artifact.file_name, MAX_NAME_BYTES)
    if problem is None and "/" in artifact.file_name:
        problem = "must not contain '/'"
    if problem is not None:
        name = _shown(artifact.file_name)
        raise JobLoadError(f"bad file name {name} in the submission: {problem}")
    if artifact.entry is not None:
        problem = _path_problem(artifact.entry, MAX_PATH_BYTES)
        if problem is not None:
            raise JobLoadError(f"bad entry {_shown(artifact.entry)} in the submission: {problem}")


def _path_problem(name: object, max_bytes: int) -> str | None:
    """What is wrong with a relative path a submission names (None: nothing)."""
    if not isinstance(name, str):
        return "must be a string"
    if name in ("", ".", ".."):
        return "must not be empty, '.' or '..'"
    if "\x00" in name:
        return "must not contain a NUL character"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return f"is {size} bytes long (at most {max_bytes})"
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return "must stay inside the job's directory (no leading '/', no '..')"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in path.parts):
        return f"has a part longer than {MAX_NAME_BYTES} bytes"
    return None


def _shown(value: object) -> str:
    """`value` for an error message, cut short."""
    shown = repr(value)
    return shown if len(shown) <= 60 else f"{shown[:57]}..."


def load(artifact: Artifact, data: bytes | None, workdir: Path) -> Job:
    """The job the artifact defines; files are unpacked into `workdir` (blocking)."""
    check(artifact)
    if artifact.kind == "module":
        with job_argv([artifact.module, *artifact.args]):  # type: ignore[list-item]
            return _load_module(artifact.module)  # type: ignore[arg-type]
    if data is None:
        raise JobLoadError(f"the submission carries no data for {artifact.file_name}")
    workdir.mkdir(parents=True, exist_ok=True)
    if artifact.kind == "file":
        path = workdir / artifact.file_name  # type: ignore[operator]
        path.write_bytes(data)
        return load_job(path, artifact.args)
    archive = workdir / artifact.file_name  # type: ignore[operator]
    archive.write_bytes(data)
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.infolist():
                _check_member(artifact.file_name, member)  # type: ignore[arg-type]
            zipped.extractall(workdir / "files")
    except zipfile.BadZipFile as e:
        raise JobLoadError(f"{artifact.file_name}: not a zip archive: {e}") from e
    except (OSError, ValueError) as e:  # e.g. a file and a directory of one name
        raise JobLoadError(f"{artifact.file_name}: cannot unpack the archive: {e}") from e
    entry = workdir / "files" / artifact.entry  # type: ignore[operator]
    if not entry.is_file():
        raise JobLoadError(f"{artifact.file_name} has no entry module {artifact.entry}")
    return load_job(entry, artifact.args)


def _check_member(archive: str, member: zipfile.ZipInfo) -> None:
    """An archive entry must be a file or directory whose path stays inside the archive."""
    if stat.S_ISLNK(member.external_attr >> 16):
        raise JobLoadError(
            f"{archive}: entry {_shown(member.filename)} is a symbolic link "
            "(an archive may hold only files and directories)"
        )
    problem = _path_problem(member.filename.rstrip("/"), MAX_PATH_BYTES)
    if problem is not None:
        raise JobLoadError(f"{archive}: entry {_shown(member.filename)} {problem}")


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise JobLoadError(f"cannot import job module {name}: {e}") from e
    except SystemExit as e:  # e.g. argparse rejecting the job's arguments
        raise JobLoadError(f"job module {name} exited with status {e.code} while loading") from e
    except Exception as e:
        raise JobLoadError(f"importing job module {name} failed: {type(e).__name__}: {e}") from e


def _load_module(name: str) -> Job:
    """The `job` of module `name`; of a package without one, the `job` of its `job` module."""
    module = _import(name)
    if not isinstance(getattr(module, "job", None), Job) and hasattr(module, "__path__"):
        if importlib.util.find_spec(f"{name}.job") is not None:
            module = _import(f"{name}.job")
    job = getattr(module, "job", None)
    if isinstance(job, Job):
        return job
    jobs = [value for value in vars(module).values() if isinstance(value, Job)]
    if len(jobs) == 1:
        return jobs[0]
    raise JobLoadError(f"module {name} defines no streamlet.Job named `job`")
