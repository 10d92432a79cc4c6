"""Plumbing of the Q-learning store: retention settings, connections, error translation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from lionagi_qe.db.manager import Database
from lionagi_qe.db.translate import FOREIGN_KEY_VIOLATION, sqlstate_of, translate
from lionagi_qe.errors import InvalidArgumentError, PersistenceError
from lionagi_qe.keys import validate_ttl

__all__ = ["DEFAULT_PARTITION_ROWS", "DEFAULT_RETENTION", "LearningStore", "check_stale_ok"]

T = TypeVar("T")

#: Thirty days, in seconds: how long a Q-value lives after its last use, and a trajectory step
#: after it was stored (the original kept both for thirty days).
DEFAULT_RETENTION = 30 * 86400.0

#: Ids per ``trajectories`` partition (PostgreSQL). A million steps of about 200 bytes plus
#: four indexes is roughly 0.4 GB: small enough to drop in milliseconds, few enough that a
#: query which cannot prune partitions (newest steps of an agent type) probes a handful.
DEFAULT_PARTITION_ROWS = 1_000_000

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


def check_stale_ok(value: object) -> bool:
    """``stale_ok`` as given: a bool, nothing else (a truthy string is a bug, not a yes)."""
    if not isinstance(value, bool):
        raise InvalidArgumentError("stale_ok must be True or False")
    return value


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{what} must be an int >= 1")
    return value


class LearningStore(Database):
    """A :class:`Database` with the learning store's settings and connection handling.

    Args:
        q_value_retention: seconds a Q-value lives after its last use (read or write); None
            keeps Q-values for ever. Default thirty days.
        trajectory_retention: seconds a trajectory step lives after it is stored; None keeps
            steps for ever. Default thirty days.
        cleanup_batch_size: rows :meth:`cleanup_expired_data` deletes per statement.
        trajectory_partition_rows: ids per ``trajectories`` partition that maintenance creates
            (PostgreSQL). Default a million.
        trajectory_partitions_ahead: how many partitions' worth of ids above the next one
            maintenance keeps created. Default 2.
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
        trajectory_partition_rows: int = DEFAULT_PARTITION_ROWS,
        trajectory_partitions_ahead: int = 2,
        **engine_options: Any,
    ) -> None:
        self.q_value_retention = validate_ttl(q_value_retention)
        self.trajectory_retention = validate_ttl(trajectory_retention)
        self.cleanup_batch_size = _positive_int(cleanup_batch_size, "cleanup_batch_size")
        self.trajectory_partition_rows = _positive_int(
            trajectory_partition_rows, "trajectory_partition_rows"
        )
        self.trajectory_partitions_ahead = _positive_int(
            trajectory_partitions_ahead, "trajectory_partitions_ahead"
        )
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

    async def _read_only(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, stale_ok: bool
    ) -> T:
        """Run ``work``, which only reads (``select()`` statements), and return its result.

        ``stale_ok`` with replicas configured: :meth:`Database.read` picks the server (a
        replica when one is fresh enough and past this store's own writes, else the primary,
        also when the replica fails mid-read, so ``work`` may run twice). Otherwise the primary
        answers through :meth:`_bind`, as every other read does: on SQLite that avoids the
        two extra driver hops an autocommit connection costs, and errors are translated the
        same way on both paths.
        """
        if stale_ok and self.replicas is not None:
            return await self.read(work, stale_ok=True)
        async with self._bind(write=False) as conn:
            return await work(conn)
