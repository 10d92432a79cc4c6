"""The partitions of ``trajectories`` on PostgreSQL: read the layout, create ahead, retire.

``trajectories`` is ``PARTITION BY RANGE (id)`` (migration 0005): ids grow with time, so each
partition holds one span of history. The layout is read from the catalog every time (never
from names or a cache): another process may have created or dropped partitions meanwhile.

Statements here are DDL and catalog reads that only make sense on PostgreSQL; callers check
:meth:`PartitionRepository.layout` is not None first (SQLite, or a schema before 0005, keeps a
plain table). Like every repository, these never commit: the caller's transaction decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import text

from lionagi_qe.repositories.learning_base import LearningRepository

__all__ = ["TABLE", "IdPartition", "PartitionRepository"]

TABLE = "trajectories"

_BOUNDS = re.compile(r"FOR VALUES FROM \((?P<lower>[^)]*)\) TO \((?P<upper>[^)]*)\)")

_IS_PARTITIONED = text(
    "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t))"
)
_LAYOUT = text(
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i"
    " JOIN pg_class AS c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
)
_SEQUENCE = text("SELECT pg_get_serial_sequence(:t, 'id')")


@dataclass(frozen=True, slots=True)
class IdPartition:
    """One partition: ids ``lower <= id < upper`` (None: unbounded), or the default one."""

    name: str
    lower: int | None
    upper: int | None
    default: bool = False


def _bound(value: str) -> int | None:
    value = value.strip().strip("'")
    return None if value in ("MINVALUE", "MAXVALUE") else int(value)


def parse_bound(name: str, expression: str) -> IdPartition:
    """``pg_get_expr(relpartbound)`` of a partition as an :class:`IdPartition`."""
    if expression.strip() == "DEFAULT":
        return IdPartition(name, None, None, default=True)
    match = _BOUNDS.fullmatch(expression.strip())
    if match is None:
        raise ValueError(f"unexpected partition bound of {name}: {expression!r}")
    return IdPartition(name, _bound(match["lower"]), _bound(match["upper"]))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PartitionRepository(LearningRepository):
    """Catalog reads and DDL on the partitions of ``trajectories`` (PostgreSQL only)."""

    async def layout(self) -> list[IdPartition] | None:
        """Every partition, bounded ones by ``lower`` (the default last); None: not partitioned."""
        if self.dialect != "postgresql":
            return None
        if not (await self._execute(_IS_PARTITIONED, {"t": TABLE})).scalar():
            return None
        rows = (await self._execute(_LAYOUT, {"t": TABLE})).all()
        # A partition another transaction is dropping right now has no bound any more (the
        # catalog snapshot still lists it): it is not part of the layout.
        found = [parse_bound(str(name), str(bound)) for name, bound in rows if bound is not None]
        lowest = -(2**63)
        return sorted(
            found,
            key=lambda p: (p.default, lowest if p.lower is None else p.lower),
        )

    async def next_id(self) -> int:
        """The id the next stored step will get (without taking one from the sequence).

        ``last_value`` is the last id handed out, or — after a restart, before any call
        (``is_called`` false) — the next one.
        """
        sequence = (await self._execute(_SEQUENCE, {"t": TABLE})).scalar_one()
        statement = text(
            "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
            f" FROM {sequence}"  # as pg_get_serial_sequence quoted it
        )
        return int((await self._execute(statement, {})).scalar_one())

    async def max_id(self, partition: IdPartition) -> int | None:
        """The highest id stored in ``partition`` (its primary-key index answers), or None."""
        statement = text(f"SELECT max(id) FROM {_quoted(partition.name)}")
        found = (await self._execute(statement, {})).scalar()
        return None if found is None else int(found)

    async def lock_for_creation(self, lock_timeout_ms: int) -> None:
        """Hold off new steps until commit (reads go on) while partitions are created."""
        await self._execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"), {})
        await self._execute(text(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE"), {})

    async def create(self, lower: int, upper: int) -> str:
        """Create the partition for ids ``lower <= id < upper``; return its name."""
        name = f"{TABLE}_p{lower}"
        await self._execute(
            text(
                f"CREATE TABLE {_quoted(name)} PARTITION OF {TABLE}"
                f" FOR VALUES FROM ({int(lower)}) TO ({int(upper)})"
            ),
            {},
        )
        return name

    async def has_live_rows(self, partition: IdPartition) -> bool:
        """True if a step in ``partition`` has not expired (or never expires).

        Two probes of the partition's ``expires_at`` index, whatever the partition's size.
        """
        statement = text(
            f"SELECT EXISTS (SELECT 1 FROM {_quoted(partition.name)}"
            " WHERE expires_at IS NULL OR expires_at > statement_timestamp())"
        )
        return bool((await self._execute(statement, {})).scalar())

    async def clear_reward_references(
        self, partition: IdPartition, batch: int | None = None
    ) -> int:
        """Set ``rewards.trajectory_id`` to NULL for up to ``batch`` (None: all) rewards that
        refer to a step of ``partition``; return how many.

        What ``ON DELETE SET NULL`` does for a deleted row, done by hand: dropping a partition
        deletes no rows, so no foreign-key action runs (and PostgreSQL refuses to detach a
        partition that is still referenced).
        """
        where = []
        params: dict[str, int] = {}
        if partition.lower is not None:
            where.append("trajectory_id >= :lower")
            params["lower"] = partition.lower
        if partition.upper is not None:
            where.append("trajectory_id < :upper")
            params["upper"] = partition.upper
        condition = " AND ".join(where) if where else "trajectory_id IS NOT NULL"
        if batch is None:
            statement = text(f"UPDATE rewards SET trajectory_id = NULL WHERE {condition}")
        else:
            statement = text(
                "UPDATE rewards SET trajectory_id = NULL WHERE id IN"
                f" (SELECT id FROM rewards WHERE {condition} LIMIT :batch)"
            )
            params["batch"] = batch
        result = await self._execute(statement, params)
        return int(result.rowcount)

    async def lock_partition(self, partition: IdPartition, lock_timeout_ms: int) -> None:
        """Lock ``partition`` against every other use until commit (waiting at most so long)."""
        await self._execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"), {})
        await self._execute(
            text(f"LOCK TABLE {_quoted(partition.name)} IN ACCESS EXCLUSIVE MODE"), {}
        )

    async def count(self, partition: IdPartition) -> int:
        """How many steps ``partition`` holds."""
        statement = text(f"SELECT count(*) FROM {_quoted(partition.name)}")
        return int((await self._execute(statement, {})).scalar_one())

    async def drop(self, partition: IdPartition) -> None:
        """Detach ``partition`` from ``trajectories`` and drop it."""
        await self._execute(
            text(f"ALTER TABLE {TABLE} DETACH PARTITION {_quoted(partition.name)}"), {}
        )
        await self._execute(text(f"DROP TABLE {_quoted(partition.name)}"), {})
