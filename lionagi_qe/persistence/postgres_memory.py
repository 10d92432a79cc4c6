"""The original import path of ``PostgresMemory`` (kept for compatibility)."""

from lionagi_qe.backends.sql import PostgresMemory

__all__ = ["PostgresMemory"]
