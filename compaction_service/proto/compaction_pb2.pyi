from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableOptions(_message.Message):
    __slots__ = ("block_size", "bloom_bits_per_key", "compression", "compression_level")
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOOM_BITS_PER_KEY_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    block_size: int
    bloom_bits_per_key: int
    compression: str
    compression_level: int
    def __init__(self, block_size: _Optional[int] = ..., bloom_bits_per_key: _Optional[int] = ..., compression: _Optional[str] = ..., compression_level: _Optional[int] = ...) -> None: ...

class TableMeta(_message.Message):
    __slots__ = ("name", "size", "smallest", "largest", "entries", "tombstones", "min_expiry_ms", "creator", "root", "clip_start", "clip_end")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SMALLEST_FIELD_NUMBER: _ClassVar[int]
    LARGEST_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    MIN_EXPIRY_MS_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    CLIP_START_FIELD_NUMBER: _ClassVar[int]
    CLIP_END_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    smallest: bytes
    largest: bytes
    entries: int
    tombstones: int
    min_expiry_ms: int
    creator: str
    root: str
    clip_start: bytes
    clip_end: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., smallest: _Optional[bytes] = ..., largest: _Optional[bytes] = ..., entries: _Optional[int] = ..., tombstones: _Optional[int] = ..., min_expiry_ms: _Optional[int] = ..., creator: _Optional[str] = ..., root: _Optional[str] = ..., clip_start: _Optional[bytes] = ..., clip_end: _Optional[bytes] = ...) -> None: ...

class CompactionInput(_message.Message):
    __slots__ = ("level", "tables")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    level: int
    tables: _containers.RepeatedCompositeFieldContainer[TableMeta]
    def __init__(self, level: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableMeta, _Mapping]]] = ...) -> None: ...

class KeyRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: bytes
    end: bytes
    def __init__(self, start: _Optional[bytes] = ..., end: _Optional[bytes] = ...) -> None: ...

class CompactionSpec(_message.Message):
    __slots__ = ("spec_version", "compaction_id", "db_root", "inputs", "output_level", "target_file_size", "bottommost", "ttl_cutoff_ms", "output_prefix", "table_options", "key_range", "score")
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_ID_FIELD_NUMBER: _ClassVar[int]
    DB_ROOT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LEVEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BOTTOMMOST_FIELD_NUMBER: _ClassVar[int]
    TTL_CUTOFF_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TABLE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    KEY_RANGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    spec_version: int
    compaction_id: str
    db_root: str
    inputs: _containers.RepeatedCompositeFieldContainer[CompactionInput]
    output_level: int
    target_file_size: int
    bottommost: bool
    ttl_cutoff_ms: int
    output_prefix: str
    table_options: TableOptions
    key_range: KeyRange
    score: float
    def __init__(self, spec_version: _Optional[int] = ..., compaction_id: _Optional[str] = ..., db_root: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[CompactionInput, _Mapping]]] = ..., output_level: _Optional[int] = ..., target_file_size: _Optional[int] = ..., bottommost: _Optional[bool] = ..., ttl_cutoff_ms: _Optional[int] = ..., output_prefix: _Optional[str] = ..., table_options: _Optional[_Union[TableOptions, _Mapping]] = ..., key_range: _Optional[_Union[KeyRange, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...

class CompactionStats(_message.Message):
    __slots__ = ("input_entries", "output_entries", "dropped_tombstones", "dropped_expired", "input_bytes", "output_bytes", "cpu_seconds", "wall_seconds")
    INPUT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    input_entries: int
    output_entries: int
    dropped_tombstones: int
    dropped_expired: int
    input_bytes: int
    output_bytes: int
    cpu_seconds: float
    wall_seconds: float
    def __init__(self, input_entries: _Optional[int] = ..., output_entries: _Optional[int] = ..., dropped_tombstones: _Optional[int] = ..., dropped_expired: _Optional[int] = ..., input_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., wall_seconds: _Optional[float] = ...) -> None: ...

class CompactionResult(_message.Message):
    __slots__ = ("result_version", "compaction_id", "outputs", "stats")
    RESULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    result_version: int
    compaction_id: str
    outputs: _containers.RepeatedCompositeFieldContainer[TableMeta]
    stats: CompactionStats
    def __init__(self, result_version: _Optional[int] = ..., compaction_id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[TableMeta, _Mapping]]] = ..., stats: _Optional[_Union[CompactionStats, _Mapping]] = ...) -> None: ...

class CompactRequest(_message.Message):
    __slots__ = ("spec", "allow_subcompactions")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SUBCOMPACTIONS_FIELD_NUMBER: _ClassVar[int]
    spec: CompactionSpec
    allow_subcompactions: bool
    def __init__(self, spec: _Optional[_Union[CompactionSpec, _Mapping]] = ..., allow_subcompactions: _Optional[bool] = ...) -> None: ...

class CompactResponse(_message.Message):
    __slots__ = ("result", "subcompactions", "queue_seconds")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SUBCOMPACTIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    result: CompactionResult
    subcompactions: int
    queue_seconds: float
    def __init__(self, result: _Optional[_Union[CompactionResult, _Mapping]] = ..., subcompactions: _Optional[int] = ..., queue_seconds: _Optional[float] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("db_root", "compaction_id")
    DB_ROOT_FIELD_NUMBER: _ClassVar[int]
    COMPACTION_ID_FIELD_NUMBER: _ClassVar[int]
    db_root: str
    compaction_id: str
    def __init__(self, db_root: _Optional[str] = ..., compaction_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("cancelled",)
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    def __init__(self, cancelled: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("compaction_id", "db_root", "worker", "running_seconds")
    COMPACTION_ID_FIELD_NUMBER: _ClassVar[int]
    DB_ROOT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    RUNNING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    compaction_id: str
    db_root: str
    worker: int
    running_seconds: float
    def __init__(self, compaction_id: _Optional[str] = ..., db_root: _Optional[str] = ..., worker: _Optional[int] = ..., running_seconds: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker", "alive", "queued", "queued_bytes", "running_compaction_id", "completed", "busy_seconds")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_COMPACTION_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    BUSY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker: int
    alive: bool
    queued: int
    queued_bytes: int
    running_compaction_id: str
    completed: int
    busy_seconds: float
    def __init__(self, worker: _Optional[int] = ..., alive: _Optional[bool] = ..., queued: _Optional[int] = ..., queued_bytes: _Optional[int] = ..., running_compaction_id: _Optional[str] = ..., completed: _Optional[int] = ..., busy_seconds: _Optional[float] = ...) -> None: ...

class Totals(_message.Message):
    __slots__ = ("accepted", "completed", "failed", "cancelled", "rejected", "input_bytes", "output_bytes", "cpu_seconds")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    completed: int
    failed: int
    cancelled: int
    rejected: int
    input_bytes: int
    output_bytes: int
    cpu_seconds: float
    def __init__(self, accepted: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., rejected: _Optional[int] = ..., input_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("policy", "queued", "queue_capacity", "running", "workers", "totals")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    queued: int
    queue_capacity: int
    running: _containers.RepeatedCompositeFieldContainer[JobStatus]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    totals: Totals
    def __init__(self, policy: _Optional[str] = ..., queued: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., running: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ...) -> None: ...
