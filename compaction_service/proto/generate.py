"""Regenerates the Python code for `compaction.proto` (grpcio-tools, a dev dependency).

`python -m compaction_service.proto.generate` rewrites the generated files in place;
`generate(out_dir)` writes them under another directory (the staleness test compares the two).
The .proto is compiled relative to the repository root, so the generated gRPC module imports
`compaction_service.proto.compaction_pb2` by its package path.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO = "compaction_service/proto/compaction.proto"
GENERATED = ("compaction_pb2.py", "compaction_pb2.pyi", "compaction_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Compiles the .proto into `out_dir`; returns the generated files."""
    from grpc_tools import protoc  # dev dependency: imported only when regenerating

    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(REPO_ROOT / PROTO),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {PROTO} with status {status}")
    package = out_dir / Path(PROTO).parent
    return [package / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate(REPO_ROOT):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    sys.exit(0)
