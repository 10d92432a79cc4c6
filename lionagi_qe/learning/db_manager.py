"""``DatabaseManager``: the Q-learning store over one engine (original import path kept)."""

from __future__ import annotations

from lionagi_qe.db.manager import Database

__all__ = ["DatabaseManager"]


class DatabaseManager(Database):
    """The original lionagi-qe database manager: an engine and pool plus the Q-learning API.

    ``DatabaseManager(database_url, min_connections=2, max_connections=10, **engine_options)``
    takes ``postgresql://`` (asyncpg implied), ``postgresql+asyncpg://`` or an SQLite URL.
    """
