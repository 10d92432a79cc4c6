"""The original import path of the memory backends (kept for compatibility)."""

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory

__all__ = ["PostgresMemory", "RedisMemory"]
