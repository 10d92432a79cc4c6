"""lionagi_qe: persistence for fleets of QE agents (memory, coordination, Q-learning)."""

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.config import Settings
from lionagi_qe.coordination import AgentMemory, Job, WorkQueue
from lionagi_qe.entry import MemoryEntry, ScannedEntry
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    KeyNotFoundError,
    LeaseLostError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
    ValueTooLargeError,
    VersionConflictError,
)
from lionagi_qe.factory import open_memory
from lionagi_qe.learning.db_manager import DatabaseManager

__version__ = "0.1.0"

__all__ = [
    "AgentMemory",
    "BackendUnavailableError",
    "CachedMemory",
    "ClosedError",
    "DatabaseManager",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidPartitionError",
    "InvalidPatternError",
    "InvalidTTLError",
    "Job",
    "KeyNotFoundError",
    "LeaseLostError",
    "MemoryBackend",
    "MemoryEntry",
    "PersistenceError",
    "PostgresMemory",
    "RedisMemory",
    "ScannedEntry",
    "SchemaMissingError",
    "SerializationError",
    "Settings",
    "ValueTooLargeError",
    "VersionConflictError",
    "WorkQueue",
    "__version__",
    "open_memory",
]
