"""Memory backends: the public API on each store."""

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory

__all__ = ["MemoryBackend", "PostgresMemory", "RedisMemory"]
