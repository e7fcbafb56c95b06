"""What a submission carries and how it becomes a `Job` again.

A submission names an importable module (`jobs.wordcount`; a package such as `compaction_service`
stands for its `job` module), or carries a
job module file (`job.py`) or a zip archive of files with an entry module (`--entry`, default
`job.py`). `pack` runs in the client, `load` in the job manager (to reject a broken module at
submission) and in the task manager (to run it): a file or archive is written to a fresh
directory and loaded with `streamlet.launcher.load_job`.
"""

import importlib
import importlib.util
import zipfile
from pathlib import Path, PurePosixPath
from types import ModuleType

from streamlet.api import Job
from streamlet.cluster.model import Artifact
from streamlet.errors import JobLoadError
from streamlet.launcher import load_job

DEFAULT_ENTRY = "job.py"


def pack(target: str, entry: str | None = None) -> tuple[Artifact, bytes | None]:
    """The artifact for `JOB.py`, `ARCHIVE.zip` or `MODULE`, and the file's bytes if any."""
    path = Path(target)
    if path.suffix == ".py":
        if not path.is_file():
            raise JobLoadError(f"{target}: no such job file")
        return Artifact("file", file_name=path.name), path.read_bytes()
    if path.suffix == ".zip":
        if not path.is_file():
            raise JobLoadError(f"{target}: no such archive")
        return Artifact("archive", file_name=path.name, entry=entry or DEFAULT_ENTRY), (
            path.read_bytes()
        )
    if not all(part.isidentifier() for part in target.split(".")):
        raise JobLoadError(f"{target!r} is neither a .py file, a .zip archive nor a module name")
    return Artifact("module", module=target), None


def check(artifact: Artifact) -> None:
    """Reject names that could escape the job's directory."""
    for name in (artifact.file_name, artifact.entry):
        if name is not None and (
            PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or not name
        ):
            raise JobLoadError(f"bad file name {name!r} in the submission")
    if artifact.kind == "module" and not artifact.module:
        raise JobLoadError("a module submission needs a module name")
    if artifact.kind in ("file", "archive") and not artifact.file_name:
        raise JobLoadError(f"a {artifact.kind} submission needs a file name")
    if artifact.kind not in ("module", "file", "archive"):
        raise JobLoadError(f"unknown artifact kind {artifact.kind!r}")


def load(artifact: Artifact, data: bytes | None, workdir: Path) -> Job:
    """The job the artifact defines; files are unpacked into `workdir` (blocking)."""
    check(artifact)
    if artifact.kind == "module":
        return _load_module(artifact.module)  # type: ignore[arg-type]
    if data is None:
        raise JobLoadError(f"the submission carries no data for {artifact.file_name}")
    workdir.mkdir(parents=True, exist_ok=True)
    if artifact.kind == "file":
        path = workdir / artifact.file_name  # type: ignore[operator]
        path.write_bytes(data)
        return load_job(path)
    archive = workdir / artifact.file_name  # type: ignore[operator]
    archive.write_bytes(data)
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(workdir / "files")
    except zipfile.BadZipFile as e:
        raise JobLoadError(f"{artifact.file_name}: not a zip archive: {e}") from e
    entry = workdir / "files" / artifact.entry  # type: ignore[operator]
    if not entry.is_file():
        raise JobLoadError(f"{artifact.file_name} has no entry module {artifact.entry}")
    return load_job(entry)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise JobLoadError(f"cannot import job module {name}: {e}") from e
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
