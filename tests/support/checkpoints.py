"""Finding the checkpoint files that a state handle or checkpoint metadata references."""

from typing import Any


def referenced_files(node: Any) -> list[str]:
    """Paths of every file reference (a mapping with `path` and `checksum`) inside `node`."""
    found: list[str] = []
    if isinstance(node, dict):
        if "path" in node and "checksum" in node:
            found.append(node["path"])
        for child in node.values():
            found.extend(referenced_files(child))
    elif isinstance(node, list):
        for child in node:
            found.extend(referenced_files(child))
    return found
