"""The original import path of ``RedisMemory`` (kept for compatibility)."""

from lionagi_qe.backends.redis import RedisMemory

__all__ = ["RedisMemory"]
