"""The settings of a `streamlet://` Faust store, and the compactors its databases share.

Options are streamlet's configuration keys (docs/configuration.md) that concern a table's
databases, and the store's own `flush.interval`; they come from streamlet's `STREAMLET_*`
environment variables (those of these keys; others are not the store's and are ignored),
overridden by the store URL's query string, overridden by the table's `options` mapping (see
docs/faust.md):

- `state.dir` (required): the DFS URL (fsspec: `s3://`, `file://`, ...) the tables live under, one
  LSM database per table partition at `<state.dir>/<app id>/<table>/<partition>`; a URL with a
  scheme fsspec knows (a bare path could differ from node to node);
- `dfs.storage-options`: fsspec options for it (JSON in a URL: endpoint, credentials, ...);
- `state.local-dir`: the local directory (the LSM's file cache, standby replicas); default
  `<Faust tabledir>/streamlet`;
- `compaction.mode` (`local` or `remote`), `compaction.service.address`,
  `compaction.service.token`, `compaction.client.*`, and for `job:` addresses
  `cluster.jobmanager` and `cluster.token`: where compactions run, as for a streamlet job;
- `lsm.*`: the LSM's tuning;
- `flush.interval`: how often the store makes its partitions durable (`500ms`, `3s`, ...); default
  Faust's `broker_commit_interval`.

Any other key, or a bad value, raises `ImproperlyConfigured` naming it. The values are checked by
streamlet's own `Configuration`, and the compaction mode is set up by `streamlet.compaction`, as
for a job. Databases with the same compaction settings in one process share one compactor.
"""

import dataclasses
import os
import threading
from collections.abc import Mapping
from typing import Any

from faust.exceptions import ImproperlyConfigured
from fsspec import get_filesystem_class
from fsspec.core import split_protocol
from yarl import URL

from statebackend.dfs import join
from statebackend.lsm.backend import parse_options
from statebackend.lsm.compactor import IN_PROCESS_PROTOCOLS, Compactor, create_compactor
from statebackend.lsm.options import PREFIX as LSM_PREFIX
from statebackend.lsm.options import LsmOptions
from streamlet.compaction import backend_config
from streamlet.config import OPTIONS, Configuration
from streamlet.config_types import ConfigError, parse_positive_duration

FLUSH_INTERVAL = "flush.interval"
_KEYS = frozenset(
    {"state.dir", "state.local-dir", "dfs.storage-options", "cluster.jobmanager", "cluster.token"}
)
_PREFIXES = ("compaction.", LSM_PREFIX)
_COMPACTION_OPTION = "compaction_"


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """Where a store keeps its databases and how it opens them."""

    dfs: str  # state.dir: the tables live below it
    local_dir: str  # this table's local directory
    storage_options: Mapping[str, Any]
    lsm: LsmOptions
    backend_options: Mapping[str, Any]  # the compaction mode's options (`compaction_*`)
    flush_interval_s: float

    def root(self, app_id: str, table: str, partition: int) -> str:
        """The DFS root of one partition's database."""
        return join(self.table_root(app_id, table), str(partition))

    def table_root(self, app_id: str, table: str) -> str:
        return join(self.dfs, app_id, table)

    def options_for(self, local_dir: str) -> LsmOptions:
        """The LSM options of a database whose local files go below `local_dir`."""
        return dataclasses.replace(self.lsm, local_dir=local_dir)

    def compactor(self, root: str) -> Compactor:
        """The compactor of the compaction settings for a database at `root`, shared by every
        database of this process with the same settings."""
        in_process = (split_protocol(root)[0] or "file") in IN_PROCESS_PROTOCOLS
        return _shared_compactor(self.backend_options, in_process)


def store_settings(
    url: URL | str, options: Mapping[str, Any], tabledir: str, commit_interval_s: float,
    table: str,
) -> StoreSettings:
    """The settings of a store of `table` from the environment, its URL and its table's
    `options`; Faust's `tabledir` and `broker_commit_interval` give the defaults."""
    url = URL(str(url))
    if url.host or url.path not in ("", "/"):
        raise ImproperlyConfigured(
            f"streamlet store URL {str(url)!r}: give the DFS location as the state.dir option "
            f"(streamlet://?state.dir=s3://bucket/prefix), not in the URL's host or path"
        )
    given: dict[str, Any] = {**_from_environment(os.environ), **url.query, **options}
    flush = given.pop(FLUSH_INTERVAL, None)
    unknown = sorted(key for key in given if not _is_store_option(key))
    if unknown:
        raise ImproperlyConfigured(
            f"streamlet store option(s) {', '.join(unknown)} unknown: the store takes "
            f"{', '.join(sorted(_KEYS))}, compaction.*, lsm.* and {FLUSH_INTERVAL}"
        )
    if not given.get("state.dir"):
        raise ImproperlyConfigured(
            "the streamlet store needs the state.dir option: the DFS URL its tables live under, "
            "e.g. store='streamlet://?state.dir=s3://bucket/faust'"
        )
    _check_state_dir(str(given["state.dir"]))
    try:
        config = Configuration(given)
        interval_ms = (
            parse_positive_duration(flush) if flush is not None else commit_interval_s * 1000
        )
    except (ConfigError, ValueError) as e:
        raise ImproperlyConfigured(f"streamlet store options: {e}") from e
    backend = backend_config(config)
    local = given.get("state.local-dir") or os.path.join(tabledir, "streamlet")
    lsm = {
        name.removeprefix(LSM_PREFIX): value
        for name, value in backend.options.items()
        if name.startswith(LSM_PREFIX)
    }
    compaction = {
        name: value
        for name, value in backend.options.items()
        if not name.startswith(LSM_PREFIX)
    }
    return StoreSettings(
        dfs=backend.checkpoint_dir.rstrip("/"),
        local_dir=os.path.join(local, table),
        storage_options=dict(backend.storage_options),
        lsm=parse_options(lsm),
        backend_options=compaction,
        flush_interval_s=interval_ms / 1000,
    )


def _is_store_option(key: str) -> bool:
    return key in _KEYS or key.startswith(_PREFIXES)


def _from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The store's options that `STREAMLET_*` variables set (a secret such as
    STREAMLET_COMPACTION_SERVICE_TOKEN stays out of the URL, which Faust logs)."""
    return {
        option.key: environ[option.env_var]
        for option in OPTIONS
        if option.env_var in environ and _is_store_option(option.key)
    }


def _check_state_dir(url: str) -> None:
    protocol = split_protocol(url)[0]
    if protocol is None:
        raise ImproperlyConfigured(
            f"streamlet store option state.dir {url!r} is not a URL: give the DFS location with "
            f"its scheme, e.g. s3://bucket/faust or file:///shared/faust"
        )
    try:
        get_filesystem_class(protocol)
    except (ValueError, ImportError) as e:
        raise ImproperlyConfigured(
            f"streamlet store option state.dir {url!r}: no file system for {protocol}:// ({e})"
        ) from e


_compactors: dict[tuple[Any, ...], Compactor] = {}
_compactors_lock = threading.Lock()


def _shared_compactor(options: Mapping[str, Any], in_process: bool) -> Compactor:
    """One compactor per compaction mode, file system kind and `compaction_*` options: the
    lsm backend's rule (`LsmStoreFactory`), for the databases of Faust stores."""
    mode = str(options.get("compaction_mode") or "local")
    settings = sorted(
        (name, value) for name, value in options.items() if name.startswith(_COMPACTION_OPTION)
    )
    key = (mode, in_process, *settings)
    with _compactors_lock:
        if key not in _compactors:
            _compactors[key] = create_compactor(mode, options, in_process)
        return _compactors[key]
