"""Files on any fsspec file system: a line-by-line source and an exactly-once part-file sink.

`FileSource(path)` reads text lines (without the line break) from a file, a directory (every file
in it) or a glob; files are spread over subtasks in name order, and the position is the file and
line reached. `FileSink(directory)` writes one line per record (`format(value)`, default `str`).
Records are buffered until a checkpoint, written as a hidden pending part file, and renamed to
`part-<subtask>-<sequence>` when the checkpoint completes: after a failure the committed files hold
every record exactly once. Pending files of a restored checkpoint are committed on restore; those
written after it are deleted.

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
        return _FileReader(fs, files[context.subtask_index :: context.parallelism])


def _hidden(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(".")


class _FileReader(SourceReader):
    def __init__(self, fs: fsspec.AbstractFileSystem, files: list[str]) -> None:
        self._fs = fs
        self._files = files
        self._file_index = 0
        self._line = 0
        self._handle: IO[str] | None = None

    async def open(self, position: Any | None) -> None:
        if position is not None:
            self._file_index, self._line = int(position[0]), int(position[1])

    async def read_batch(self, max_records: int) -> list[Any]:
        return await asyncio.to_thread(self._read, max_records)

    def _read(self, max_records: int) -> list[str]:
        if self._handle is None:
            self._handle = self._fs.open(self._files[self._file_index], "rt")
            for _ in range(self._line):
                self._handle.readline()
        lines = []
        for _ in range(max_records):
            line = self._handle.readline()
            if not line:
                self._handle.close()
                self._handle = None
                self._file_index += 1
                self._line = 0
                break
            lines.append(line.rstrip("\r\n"))
            self._line += 1
        return lines

    @property
    def finished(self) -> bool:
        return self._file_index >= len(self._files)

    @property
    def has_input(self) -> bool:
        return bool(self._files)

    def position(self) -> list[int]:
        return [self._file_index, self._line]

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

    def _pending_path(self, sequence: int) -> str:
        return f"{self._root}/.part-{self._subtask}-{sequence:06d}.pending"

    def _final_path(self, sequence: int) -> str:
        return f"{self._root}/part-{self._subtask}-{sequence:06d}"

    async def open(self, state: Any | None) -> None:
        if state is not None:
            self._sequence = int(state["sequence"])
            self._pending = [int(s) for s in state["pending"]]
        await asyncio.to_thread(self._recover, state)

    def _recover(self, restored: Any | None) -> None:
        self._fs.makedirs(self._root, exist_ok=True)
        self._commit()
        pending = re.compile(rf"/\.part-{self._subtask}-(\d+)\.pending$")
        committed = re.compile(rf"/part-{self._subtask}-(\d+)$")
        paths = [str(path) for path in self._fs.ls(self._root, detail=False)]
        if restored is None:  # a fresh start continues the numbering of earlier output
            numbers = [int(m.group(1)) for p in paths if (m := committed.search(p))]
            self._sequence = max(numbers, default=-1) + 1
        for path in paths:
            match = pending.search(path)
            if match and (restored is None or int(match.group(1)) >= self._sequence):
                self._fs.rm(path)  # written after the restored checkpoint: never committed

    def write(self, value: Any, timestamp: int | None) -> None:
        self._lines.append(self._format(value))

    async def snapshot(self, checkpoint_id: int) -> Any:
        if self._lines:
            body = ("\n".join(self._lines) + "\n").encode()
            self._lines = []
            path = self._pending_path(self._sequence)
            await asyncio.to_thread(self._fs.pipe_file, path, body)
            self._pending.append(self._sequence)
            self._sequence += 1
        return {"sequence": self._sequence, "pending": list(self._pending)}

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        for sequence in self._pending:
            pending = self._pending_path(sequence)
            if self._fs.exists(pending):
                self._fs.mv(pending, self._final_path(sequence))
        self._pending = []
