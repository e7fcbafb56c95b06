"""Files on any fsspec file system: a line-by-line source and an exactly-once part-file sink.

`FileSource(path)` reads text lines (without the line break) from a file, a directory (every file
in it) or a glob; files are spread over subtasks in name order, and a reader's position is the
list of files it has left, with the line reached in each (a restore with another parallelism deals
these files out again).

`FileSink(directory)` writes one line per record (`format(value)`, default `str`). Records are
buffered until a checkpoint, written as a hidden pending part file, and renamed to
`part-<subtask>-<sequence>` when the checkpoint completes: after a failure the committed files hold
every record exactly once. Pending files of a restored checkpoint are committed on restore; those
written after it are deleted. After a rescale, new writer i does this for old writers i,
i + parallelism, ...: every old writer's pending files are committed exactly once.

>>> import tempfile
>>> from streamlet import Job
>>> from streamlet.connectors import CollectionSource, FileSink, FileSource, PrintSink
>>> out = tempfile.mkdtemp()
>>> job = Job("doc-files")
>>> _ = job.source(CollectionSource(["x", "y"])).sink(FileSink(out))
>>> _ = job.execute({"checkpoint.dir": "memory://doc-files"})
>>> job = Job("doc-files-read")
>>> _ = job.source(FileSource(out)).map(str.upper).sink(PrintSink())
>>> _ = job.execute({"checkpoint.dir": "memory://doc-files-read"})
X
Y
"""

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import IO, Any

import fsspec

from streamlet.connectors.base import Sink, SinkWriter, Source, SourceReader
from streamlet.errors import CheckpointError
from streamlet.functions import RuntimeContext


class FileSource(Source):
    def __init__(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.storage_options = dict(storage_options or {})

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        fs, root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        if fs.isdir(root):
            files = sorted(f for f in fs.find(root) if not _hidden(f))
        else:
            files = sorted(fs.glob(root)) if any(c in root for c in "*?[") else [root]
        mine = files[context.subtask_index :: context.parallelism]
        return _FileReader(fs, [[path, 0] for path in mine])

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        """Each unfinished file goes, with its line, to new subtask `k % parallelism` (k: its
        place among the old subtasks' unfinished files, in order)."""
        files = [_file_position(file) for position in positions for file in _files(position)]
        return [files[index::parallelism] for index in range(parallelism)]


def _files(position: Any) -> list[Any]:
    if not isinstance(position, list):
        raise CheckpointError(f"not a list of [file, line]: {position!r:.100}")
    return position


def _file_position(file: Any) -> list[Any]:
    if (
        not isinstance(file, list)
        or len(file) != 2
        or not isinstance(file[0], str)
        or not isinstance(file[1], int)
        or file[1] < 0
    ):
        raise CheckpointError(f"not a file position [file, line]: {file!r:.100}")
    return [file[0], file[1]]


def _hidden(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(".")


class _FileReader(SourceReader):
    def __init__(self, fs: fsspec.AbstractFileSystem, files: list[list[Any]]) -> None:
        self._fs = fs
        self._files = files  # [path, line reached] of every file left to read, in order
        self._handle: IO[str] | None = None

    async def open(self, position: Any | None) -> None:
        if position is not None:
            self._files = [list(file) for file in position]

    async def read_batch(self, max_records: int) -> list[Any]:
        return await asyncio.to_thread(self._read, max_records)

    def _read(self, max_records: int) -> list[str]:
        current = self._files[0]
        if self._handle is None:
            self._handle = self._fs.open(current[0], "rt")
            for _ in range(current[1]):
                self._handle.readline()
        lines = []
        for _ in range(max_records):
            line = self._handle.readline()
            if not line:
                self._handle.close()
                self._handle = None
                self._files.pop(0)
                break
            lines.append(line.rstrip("\r\n"))
            current[1] += 1
        return lines

    @property
    def finished(self) -> bool:
        return not self._files

    @property
    def has_input(self) -> bool:
        return bool(self._files)

    def position(self) -> list[list[Any]]:
        return [list(file) for file in self._files]

    async def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class FileSink(Sink):
    def __init__(
        self,
        directory: str,
        format: Callable[[Any], str] = str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.format = format
        self.storage_options = dict(storage_options or {})

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        fs, root = fsspec.core.url_to_fs(self.directory, **self.storage_options)
        return _FileWriter(fs, root.rstrip("/"), context.subtask_index, self.format)

    def redistribute(self, states: list[Any], parallelism: int) -> list[Any]:
        """New writer i gets the states of old writers i, i + parallelism, ...: it commits their
        pending files and deletes those they wrote after the checkpoint, so each is done once."""
        writers = [_writer_state(subtask, state) for subtask, state in enumerate(states)]
        return [writers[index::parallelism] for index in range(parallelism)]


def _writer_state(subtask: int, state: Any) -> dict[str, Any]:
    try:
        return {
            "subtask": subtask,
            "sequence": int(state["sequence"]),
            "pending": [int(sequence) for sequence in state["pending"]],
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"not the state of a FileSink writer: {state!r:.100}") from e


_PENDING = re.compile(r"/\.part-(\d+)-(\d+)\.pending$")


class _FileWriter(SinkWriter):
    def __init__(
        self, fs: fsspec.AbstractFileSystem, root: str, subtask: int, fmt: Callable[[Any], str]
    ) -> None:
        self._fs = fs
        self._root = root
        self._subtask = subtask
        self._format = fmt
        self._lines: list[str] = []
        self._sequence = 0
        self._pending: list[int] = []

    def _pending_path(self, subtask: int, sequence: int) -> str:
        return f"{self._root}/.part-{subtask}-{sequence:06d}.pending"

    def _final_path(self, subtask: int, sequence: int) -> str:
        return f"{self._root}/part-{subtask}-{sequence:06d}"

    async def open(self, state: Any | None) -> None:
        """`state`: the states of the old writers this one takes over (`FileSink.redistribute`),
        None on a fresh start."""
        await asyncio.to_thread(self._recover, state or [])

    def _recover(self, restored: list[dict[str, Any]]) -> None:
        """Commit the restored writers' pending files, delete the pending files they wrote after
        the checkpoint, and continue this writer's numbering."""
        self._fs.makedirs(self._root, exist_ok=True)
        for writer in restored:
            for sequence in writer["pending"]:
                self._commit_file(writer["subtask"], sequence)
        # Pending files from this sequence on were never part of the restored checkpoint.
        uncommitted = {writer["subtask"]: writer["sequence"] for writer in restored}
        paths = [str(path) for path in self._fs.ls(self._root, detail=False)]
        if self._subtask in uncommitted:
            self._sequence = uncommitted[self._subtask]
        else:  # no state of its own: continue the numbering of earlier output
            committed = re.compile(rf"/part-{self._subtask}-(\d+)$")
            numbers = [int(m.group(1)) for p in paths if (m := committed.search(p))]
            self._sequence = max(numbers, default=-1) + 1
            uncommitted[self._subtask] = 0
        for path in paths:
            match = _PENDING.search(path)
            if match is None:
                continue
            first_uncommitted = uncommitted.get(int(match.group(1)))
            if first_uncommitted is not None and int(match.group(2)) >= first_uncommitted:
                self._fs.rm(path)

    def write(self, value: Any, timestamp: int | None) -> None:
        self._lines.append(self._format(value))

    async def snapshot(self, checkpoint_id: int) -> Any:
        if self._lines:
            body = ("\n".join(self._lines) + "\n").encode()
            self._lines = []
            path = self._pending_path(self._subtask, self._sequence)
            await asyncio.to_thread(self._fs.pipe_file, path, body)
            self._pending.append(self._sequence)
            self._sequence += 1
        return {"sequence": self._sequence, "pending": list(self._pending)}

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        for sequence in self._pending:
            self._commit_file(self._subtask, sequence)
        self._pending = []

    def _commit_file(self, subtask: int, sequence: int) -> None:
        pending = self._pending_path(subtask, sequence)
        if self._fs.exists(pending):
            self._fs.mv(pending, self._final_path(subtask, sequence))
