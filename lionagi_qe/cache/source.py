"""The database read behind a cache fill: live rows with their remaining TTL, in one statement."""

from __future__ import annotations

from collections.abc import Sequence

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.repositories.memory import EntryRow

__all__ = ["SourceRow", "read_rows"]

#: A live row as the database returned it (value and metadata still JSON text), with
#: ``remaining``: seconds it had left by the database clock when read (None: never expires).
SourceRow = EntryRow


async def read_rows(database: PostgresMemory, keys: Sequence[str]) -> dict[str, SourceRow]:
    """The live rows among ``keys``; raises what :class:`PostgresMemory` raises."""
    return await database.read_entries(keys)
