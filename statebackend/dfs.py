"""Checkpoint storage on any fsspec file system: opening URLs and moving verified files.

Every file written for a checkpoint is recorded by its path, size and xxh3-64 checksum, and every
read verifies them, so a restore never runs on missing or corrupted data.

A savepoint is relocatable: in its metadata, every file reference (a `FileRef` dict, anywhere in
the JSON) that lies in the savepoint's directory is written relative to it (`relativize`), and
resolved against the directory the metadata is read from (`resolve`). A path is relative when it
has no protocol (`s3://...`) and does not start with `/`.
"""

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import xxhash
from fsspec.core import url_to_fs

from statebackend.errors import CorruptCheckpointError, MissingCheckpointDataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRef:
    """A checkpoint file: its full fsspec path (with protocol), size and xxh3-64 hex digest."""

    path: str
    size: int
    checksum: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "checksum": self.checksum}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FileRef":
        return cls(str(data["path"]), int(data["size"]), str(data["checksum"]))


def is_file_ref(node: Any) -> bool:
    """Whether a JSON value is a `FileRef` dict (it may hold more keys, e.g. a file's name)."""
    return (
        isinstance(node, Mapping)
        and isinstance(node.get("path"), str)
        and isinstance(node.get("size"), int)
        and isinstance(node.get("checksum"), str)
    )


def is_relative(path: str) -> bool:
    return "://" not in path and not path.startswith("/")


def relativize(node: Any, base: str) -> Any:
    """A copy of the JSON value `node` whose file references below the directory `base` are
    relative to it (the others stay as they are)."""
    prefix = base.rstrip("/") + "/"

    def rewrite(path: str) -> str:
        return path[len(prefix) :] if path.startswith(prefix) else path

    return _map_paths(node, rewrite)


def resolve(node: Any, base: str) -> Any:
    """A copy of the JSON value `node` whose relative file references are resolved against the
    directory `base` (the inverse of `relativize`)."""
    return _map_paths(node, lambda path: join(base, path) if is_relative(path) else path)


def _map_paths(node: Any, rewrite: Any) -> Any:
    if isinstance(node, Mapping):
        copy = {key: _map_paths(value, rewrite) for key, value in node.items()}
        if is_file_ref(node):
            copy["path"] = rewrite(node["path"])
        return copy
    if isinstance(node, list):
        return [_map_paths(item, rewrite) for item in node]
    return node


def filesystem(
    url: str, storage_options: Mapping[str, Any]
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of `url` and the path within it."""
    return url_to_fs(url, **dict(storage_options))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def write_bytes(url: str, data: bytes, storage_options: Mapping[str, Any]) -> FileRef:
    fs, path = filesystem(url, storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)
    return FileRef(url, len(data), xxhash.xxh3_64_hexdigest(data))


def read_verified(ref: FileRef, storage_options: Mapping[str, Any]) -> bytes:
    fs, path = filesystem(ref.path, storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as e:
        raise MissingCheckpointDataError(f"checkpoint file {ref.path} is missing") from e
    verify(ref, data)
    return data


def verify(ref: FileRef, data: bytes) -> None:
    """CorruptCheckpointError unless `data` has the size and checksum that `ref` records."""
    _verify(ref, len(data), xxhash.xxh3_64_hexdigest(data))


def upload_file(local_path: str, url: str, storage_options: Mapping[str, Any]) -> FileRef:
    fs, path = filesystem(url, storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.put_file(local_path, path)
    return FileRef(url, os.path.getsize(local_path), _file_checksum(local_path))


def download_verified(ref: FileRef, local_path: str, storage_options: Mapping[str, Any]) -> None:
    fs, path = filesystem(ref.path, storage_options)
    try:
        fs.get_file(path, local_path)
    except FileNotFoundError as e:
        raise MissingCheckpointDataError(f"checkpoint file {ref.path} is missing") from e
    _verify(ref, os.path.getsize(local_path), _file_checksum(local_path))


def delete_file(url: str, storage_options: Mapping[str, Any]) -> None:
    """Delete one checkpoint file; a file that is already gone is fine."""
    fs, path = filesystem(url, storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def _verify(ref: FileRef, size: int, checksum: str) -> None:
    if size != ref.size or checksum != ref.checksum:
        raise CorruptCheckpointError(
            f"checkpoint file {ref.path} is corrupted: expected {ref.size} bytes with xxh3 "
            f"{ref.checksum}, found {size} bytes with xxh3 {checksum}"
        )


def _file_checksum(local_path: str) -> str:
    digest = xxhash.xxh3_64()
    with open(local_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
