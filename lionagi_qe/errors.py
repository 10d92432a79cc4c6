"""The typed errors of lionagi_qe, all under one root, :class:`PersistenceError`.

Driver errors are translated at the repository boundary (by SQLSTATE, never by message text)
and always chained with ``raise ... from exc``. Bad input errors are raised before any I/O.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ClosedError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidPartitionError",
    "InvalidPatternError",
    "InvalidTTLError",
    "KeyNotFoundError",
    "LeaseLostError",
    "PersistenceError",
    "SchemaMissingError",
    "SerializationError",
    "ValueTooLargeError",
    "VersionConflictError",
]


class PersistenceError(Exception):
    """Root of every error this library raises on purpose."""


class InvalidKeyError(PersistenceError, ValueError):
    """A key is not a string in the namespace, is too long or holds control characters."""


class InvalidPatternError(PersistenceError, ValueError):
    """A search pattern is malformed (unterminated class, trailing escape, bad regex)."""


class SerializationError(PersistenceError, ValueError):
    """A value has no JSON form (NaN, infinity, NUL in a string, an unknown object)."""


class ValueTooLargeError(PersistenceError, ValueError):
    """A value's JSON form is larger than ``Settings.max_value_bytes``."""


class InvalidArgumentError(PersistenceError, ValueError):
    """An argument other than a key, pattern or value is out of range or of the wrong type."""


class InvalidTTLError(InvalidArgumentError):
    """A TTL is not a positive, finite number of seconds."""


class InvalidPartitionError(InvalidArgumentError):
    """A partition name is empty, longer than 64 characters or holds control characters."""


class KeyNotFoundError(PersistenceError, KeyError):
    """The key has no live entry."""

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "key not found"


class VersionConflictError(PersistenceError):
    """A conditional write found a different version (or an entry where none was expected)."""


class LeaseLostError(PersistenceError):
    """A job's lease lapsed and another consumer claimed it."""


class ClosedError(PersistenceError):
    """The backend was closed; create a new one."""


class SchemaMissingError(PersistenceError):
    """The database has no lionagi_qe schema; run ``lionagi-qe db upgrade``."""


class BackendUnavailableError(PersistenceError):
    """The server could not be reached, timed out or refused the work."""
