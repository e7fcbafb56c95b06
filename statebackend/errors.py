"""Exceptions raised by the state backends.

Every error names what is wrong (the backend, state, type or file involved) and is raised before any
state is changed, so a caller that catches it loses nothing.
"""


class StateError(Exception):
    """Base class of every error raised by `statebackend`."""


class UnknownBackendError(StateError, ValueError):
    """A backend name that no registered backend answers to."""


class SerializationError(StateError, TypeError):
    """A key or value that its serializer cannot turn into bytes (or back)."""


class StateTypeConflictError(StateError, TypeError):
    """A descriptor of one state type registered under a name that holds another type."""


class NoCurrentKeyError(StateError, RuntimeError):
    """Keyed state accessed before `set_current_key`."""


class KeyGroupOutOfRangeError(StateError, ValueError):
    """A key whose key group is not owned by this backend's subtask."""


class RestoreError(StateError):
    """A snapshot handle that cannot be restored."""


class InvalidHandleError(RestoreError, ValueError):
    """A handle that is malformed, of another backend, or for another key-group range."""


class MissingCheckpointDataError(RestoreError, FileNotFoundError):
    """A file that a handle references is missing from checkpoint storage."""


class CorruptCheckpointError(RestoreError):
    """A file that a handle references has the wrong size or checksum."""


class CompactionError(StateError, RuntimeError):
    """Compactions of an LSM database failed for good (after retries); names the database."""
