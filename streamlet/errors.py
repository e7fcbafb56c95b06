"""Errors the runtime raises, each naming what a user needs to find the problem.

`OperatorError` names the operator, the record and the place in the user's code that raised;
`JobLoadError` names the job file; `JobDefinitionError` a mistake in building the job graph;
`CheckpointError` a checkpoint that cannot be written or restored; `SavepointError` a savepoint
that cannot be taken (the job goes on).
"""

import traceback
from pathlib import Path
from typing import Any

import statebackend

_RUNTIME_DIR = Path(__file__).resolve().parent
# Frames in these packages are the library's, not the user's (a state that refuses a value raises
# inside statebackend, called from the user's line).
_LIBRARY_DIRS = (_RUNTIME_DIR, Path(statebackend.__file__).resolve().parent)
_RECORD_REPR_LIMIT = 200


class StreamletError(Exception):
    """Base of the runtime's errors."""


class JobDefinitionError(StreamletError):
    """The job graph is invalid (for example a set_parallelism on a union)."""


class JobLoadError(StreamletError):
    """A job module cannot be loaded or defines no job."""


class CheckpointError(StreamletError):
    """A checkpoint cannot be written, read or restored."""


class SavepointError(CheckpointError):
    """A savepoint cannot be taken or disposed of (a bad target, a job that is not running, an
    operator that failed to write its state); a running job goes on."""


class OperatorError(StreamletError):
    """User code in an operator raised while handling a record (or a timer)."""

    def __init__(self, operator: str, subject: str, cause: BaseException) -> None:
        self.operator = operator
        self.location = user_code_location(cause)
        where = f" at {self.location}" if self.location else ""
        super().__init__(
            f"operator '{operator}' failed{where} on {subject}: {type(cause).__name__}: {cause}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled from its message and attributes: the cause's traceback does not travel.
        return (type(self).__new__, (type(self), *self.args), self.__dict__)


def describe_record(value: Any) -> str:
    """`record <repr>`, cut to a readable length."""
    text = repr(value)
    if len(text) > _RECORD_REPR_LIMIT:
        text = text[:_RECORD_REPR_LIMIT] + "..."
    return f"record {text}"


def user_code_location(error: BaseException) -> str | None:
    """`file:line` of the innermost traceback frame outside the runtime and the state backends."""
    location = None
    for frame in traceback.extract_tb(error.__traceback__):
        parents = Path(frame.filename).resolve().parents
        if not any(library in parents for library in _LIBRARY_DIRS):
            location = f"{frame.filename}:{frame.lineno}"
    return location
