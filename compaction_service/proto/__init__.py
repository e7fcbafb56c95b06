"""The compaction service's protocol: `compaction.proto` and the Python code generated from it.

The generated modules (`compaction_pb2*.py`, `compaction_pb2.pyi`) are kept in the repository;
regenerate them with `python -m compaction_service.proto.generate` after editing the .proto (a
test fails while they are stale).
"""
