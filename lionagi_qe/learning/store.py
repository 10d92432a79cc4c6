"""Plumbing of the Q-learning store: retention settings, connections, error translation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from lionagi_qe.db.manager import Database
from lionagi_qe.db.translate import FOREIGN_KEY_VIOLATION, sqlstate_of, translate
from lionagi_qe.errors import InvalidArgumentError, PersistenceError
from lionagi_qe.keys import validate_ttl

__all__ = ["DEFAULT_RETENTION", "LearningStore"]

#: Thirty days, in seconds: how long a Q-value lives after its last use, and a trajectory step
#: after it was stored (the original kept both for thirty days).
DEFAULT_RETENTION = 30 * 86400.0

_SUBJECTS = {
    "agent_type": "agent type {!r}",
    "session_id": "session {}",
    "trajectory_id": "trajectory {}",
}
_SUFFIXES = {
    "agent_type": "_agent_types",
    "session_id": "_sessions",
    "trajectory_id": "_trajectories",
}


def _missing_reference(exc: BaseException, refs: dict[str, Any]) -> str:
    """Name the missing row of a foreign-key violation: by its constraint (PostgreSQL), or the
    one reference the call made (SQLite does not say which constraint failed)."""
    cause = getattr(getattr(exc, "orig", None), "__cause__", None)
    constraint = str(getattr(cause, "constraint_name", "") or "")
    named = [name for name, suffix in _SUFFIXES.items() if constraint.endswith(suffix)]
    candidates = named or [name for name in _SUBJECTS if refs.get(name) is not None]
    if len(candidates) == 1:
        (name,) = candidates
        hint = " (add it with register_agent_type)" if name == "agent_type" else ""
        return f"unknown {_SUBJECTS[name].format(refs.get(name))}{hint}"
    given = ", ".join(_SUBJECTS[name].format(refs[name]) for name in candidates)
    return f"a referenced row does not exist: one of {given}"


def translate_learning(exc: BaseException, refs: dict[str, Any]) -> PersistenceError:
    """Driver error → lionagi_qe error; a reference to a missing row is a bad argument."""
    if sqlstate_of(exc) == FOREIGN_KEY_VIOLATION:
        return InvalidArgumentError(_missing_reference(exc, refs))
    return translate(exc)


class LearningStore(Database):
    """A :class:`Database` with the learning store's settings and connection handling.

    Args:
        q_value_retention: seconds a Q-value lives after its last use (read or write); None
            keeps Q-values for ever. Default thirty days.
        trajectory_retention: seconds a trajectory step lives after it is stored; None keeps
            steps for ever. Default thirty days.
        cleanup_batch_size: rows :meth:`cleanup_expired_data` deletes per statement.
    """

    def __init__(
        self,
        database_url: str,
        min_connections: int = 2,
        max_connections: int = 10,
        *,
        q_value_retention: float | None = DEFAULT_RETENTION,
        trajectory_retention: float | None = DEFAULT_RETENTION,
        cleanup_batch_size: int = 1000,
        **engine_options: Any,
    ) -> None:
        self.q_value_retention = validate_ttl(q_value_retention)
        self.trajectory_retention = validate_ttl(trajectory_retention)
        if (
            isinstance(cleanup_batch_size, bool)
            or not isinstance(cleanup_batch_size, int)
            or cleanup_batch_size < 1
        ):
            raise InvalidArgumentError("cleanup_batch_size must be an int >= 1")
        self.cleanup_batch_size = cleanup_batch_size
        super().__init__(database_url, min_connections, max_connections, **engine_options)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def _bind(
        self, *, write: bool = True, atomic: bool = False, **refs: Any
    ) -> AsyncIterator[AsyncConnection]:
        """A connection for one call; driver errors come out translated.

        PostgreSQL: a single statement runs in autocommit (one round trip, no BEGIN/COMMIT;
        it is atomic on its own), ``atomic`` work in a transaction. SQLite: writes in a
        transaction (each driver call is a hop to aiosqlite's thread, and switching a
        connection to autocommit and back costs two more), reads without one. ``refs`` (the
        call's agent_type, session_id, trajectory_id) name a missing referenced row.
        """
        engine = self.engine  # ClosedError once closed
        try:
            if atomic or (write and self.dialect == "sqlite"):
                async with engine.begin() as conn:
                    yield conn
            else:
                source = engine if self.dialect == "sqlite" else self._autocommit
                async with source.connect() as conn:
                    yield conn
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate_learning(exc, refs) from exc
