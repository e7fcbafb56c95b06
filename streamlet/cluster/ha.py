"""HA metadata on the DFS: every job's record (status, deployment attempt, latest checkpoint,
configuration) and the files it was submitted with, so that a restarted job manager recovers the
jobs that were running.

Layout under `cluster.dir`: `ha/jobs/<job id>.json` (written to a temporary name and moved into
place, so a job manager killed while writing leaves the previous version) and
`jobs/<job id>/files/<name>` (the submitted module or archive). Methods are blocking: the job
manager calls them through `asyncio.to_thread`.
"""

import json
import logging
from collections.abc import Mapping
from typing import Any

import fsspec

from streamlet.cluster.model import JobRecord

log = logging.getLogger("streamlet.cluster.ha")


class HaStore:
    def __init__(self, url: str, storage_options: Mapping[str, Any]) -> None:
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = root.rstrip("/")

    def _record_path(self, job_id: str) -> str:
        return f"{self.root}/ha/jobs/{job_id}.json"

    def job_url(self, job_id: str) -> str:
        """Where a job's own data lives (its default checkpoint and state directories)."""
        return f"{self.url}/jobs/{job_id}"

    def save(self, record: JobRecord) -> None:
        path = self._record_path(record.id)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path + ".tmp", json.dumps(record.to_json()).encode())
        self.fs.mv(path + ".tmp", path)

    def load_all(self) -> list[JobRecord]:
        """Every job record that parses (an unreadable one is logged and skipped)."""
        try:
            paths = self.fs.ls(f"{self.root}/ha/jobs", detail=False, refresh=True)
        except FileNotFoundError:
            return []
        records = []
        for path in sorted(str(p) for p in paths):
            if not path.endswith(".json"):
                continue
            try:
                records.append(JobRecord.from_json(json.loads(self.fs.cat_file(path))))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("skipping unreadable job metadata %s: %s", path, e)
        return records

    def _file_path(self, job_id: str, name: str) -> str:
        return f"{self.root}/jobs/{job_id}/files/{name}"

    def write_file(self, job_id: str, name: str, data: bytes) -> None:
        path = self._file_path(job_id, name)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    def read_file(self, job_id: str, name: str) -> bytes:
        return self.fs.cat_file(self._file_path(job_id, name))
