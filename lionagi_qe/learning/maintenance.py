"""Maintenance of the learning store: retention (``cleanup_expired_data``) and the
``trajectories`` partitions — created ahead, retired once every step in them has expired.

Decisions:

- **Ranges of ids, not of time.** Ids grow with time, so a partition is a span of history,
  and the primary key ``(id)`` contains the partition key as PostgreSQL requires, so
  ``rewards.trajectory_id`` keeps its foreign key. A partition's width is a number of steps
  (``trajectory_partition_rows``), so partitions are equally large whatever the fleet's rate.
- **Retire = every step expired.** A partition wholly below the next id whose steps have all
  expired (two index probes say so) is dropped: the steps it held are counted first, under a
  lock, so :meth:`cleanup_expired_data` reports exactly what deleting them row by row would
  have. Its rewards' ``trajectory_id`` are set to NULL first, as ``ON DELETE SET NULL`` would
  have (in bounded batches, then the stragglers under the lock). Anything else expired is
  deleted row by row as before.
- **Short locks, never a queue.** Retiring locks only the partition (reads that do not touch
  it go on), then detaches it (a brief exclusive lock on ``trajectories``). Every lock is
  requested with ``lock_timeout``: if the table is busy the partition is left for the next
  cleanup (and its expired steps are deleted row by row), rather than making every reader wait
  in the lock queue behind the drop.
- **Created ahead by maintenance, caught by a default partition.** Migration 0005 creates two
  partitions ahead; :meth:`maintain_partitions` (which :meth:`cleanup_expired_data` runs too)
  keeps ``trajectory_partitions_ahead`` partitions' worth of ids ready. Inserting never creates
  partitions (DDL on the write path would lock out every writer); should maintenance lapse,
  steps land in the ``DEFAULT`` partition and new partitions start above them.
"""

from __future__ import annotations

from typing import Any

from lionagi_qe.db.translate import sqlstate_of
from lionagi_qe.errors import PersistenceError
from lionagi_qe.learning.store import LearningStore
from lionagi_qe.repositories.learning import QValueRepository, TrajectoryRepository
from lionagi_qe.repositories.learning_partitions import IdPartition, PartitionRepository

__all__ = ["LOCK_TIMEOUT_MS", "MaintenanceMethods"]

#: How long maintenance waits for a lock before giving up until the next run.
LOCK_TIMEOUT_MS = 500
_LOCK_NOT_AVAILABLE = "55P03"
_OBJECT_IN_USE = "55006"
_UNDEFINED_TABLE = "42P01"


def _busy(exc: PersistenceError) -> bool:
    """True if ``exc`` says a lock was not granted in time (try again at the next run)."""
    return sqlstate_of(exc.__cause__ or exc) in (_LOCK_NOT_AVAILABLE, _OBJECT_IN_USE)


def _gone(exc: PersistenceError) -> bool:
    """True if ``exc`` says the partition no longer exists (a concurrent cleanup dropped it
    while this one waited for its lock)."""
    return sqlstate_of(exc.__cause__ or exc) == _UNDEFINED_TABLE


class MaintenanceMethods(LearningStore):
    """Cleanup of expired rows and upkeep of the ``trajectories`` partitions (PostgreSQL;
    partition calls are no-ops on SQLite and on a schema without partitions)."""

    async def cleanup_expired_data(self) -> dict[str, int]:
        """Delete expired Q-values and trajectory steps; return the count per table.

        On PostgreSQL, a ``trajectories`` partition whose steps have all expired is dropped
        whole (its steps counted); what remains expired is deleted ``cleanup_batch_size`` rows
        per statement, each its own short transaction, so locks stay brief and concurrent
        learning never waits long. Rows being used at that moment are skipped (PostgreSQL
        ``SKIP LOCKED``), and a value refreshed by a use is no longer expired, so knowledge in
        use is never removed. Then partitions are created ahead (:meth:`maintain_partitions`).
        """
        deleted = {"q_values": await self._delete_expired(QValueRepository)}
        retired = await self._retire_expired_partitions()
        deleted["trajectories"] = retired + await self._delete_expired(TrajectoryRepository)
        await self.maintain_partitions()
        return deleted

    async def _delete_expired(
        self, repository: type[QValueRepository] | type[TrajectoryRepository]
    ) -> int:
        """Delete expired rows in batches until a batch comes back short; how many."""
        batch = self.cleanup_batch_size
        total = 0
        while True:
            async with self._bind() as conn:
                count = await repository(conn, self.dialect).delete_expired(batch)
            total += count
            if count < batch:
                return total

    async def list_trajectory_partitions(self) -> list[dict[str, Any]]:
        """The partitions of ``trajectories``, oldest ids first (the default one last).

        Each item: ``name``, ``lower`` and ``upper`` (ids ``lower <= id < upper``; None is
        unbounded) and ``default``. Empty on SQLite or a schema without partitions.
        """
        async with self._bind(write=False) as conn:
            layout = await PartitionRepository(conn, self.dialect).layout()
        return [
            {"name": p.name, "lower": p.lower, "upper": p.upper, "default": p.default}
            for p in layout or []
        ]

    async def maintain_partitions(self) -> list[str]:
        """Create ``trajectories`` partitions ahead of the ids being handed out.

        Afterwards at least ``trajectory_partitions_ahead * trajectory_partition_rows``
        ids above the next one have a partition. New partitions start at the top of the
        existing ones, or above the highest id the default partition caught. Returns the
        names created (none on SQLite, on an unpartitioned schema, or if the table stayed
        busy for longer than :data:`LOCK_TIMEOUT_MS`).
        """
        width = self.trajectory_partition_rows
        async with self._bind(write=False) as conn:
            repo = PartitionRepository(conn, self.dialect)
            layout = await repo.layout()
            if layout is None:
                return []
            target = await repo.next_id() + self.trajectory_partitions_ahead * width
        top = _top(layout)
        if top is None or top >= target:
            return []
        created: list[str] = []
        try:
            async with self._bind(atomic=True) as conn:
                repo = PartitionRepository(conn, self.dialect)
                await repo.lock_for_creation(LOCK_TIMEOUT_MS)
                layout = await repo.layout() or []
                start = _top(layout)
                if start is None:
                    return []
                default = next((p for p in layout if p.default), None)
                caught = None if default is None else await repo.max_id(default)
                if caught is not None and caught >= start:
                    start = caught + 1
                while start < target:
                    created.append(await repo.create(start, start + width))
                    start += width
        except PersistenceError as exc:
            if _busy(exc):
                return []
            raise
        return created

    async def _retire_expired_partitions(self) -> int:
        """Drop every partition wholly below the next id whose steps have all expired.

        Returns how many steps the dropped partitions held.
        """
        async with self._bind(write=False) as conn:
            repo = PartitionRepository(conn, self.dialect)
            layout = await repo.layout()
            if layout is None:
                return 0
            next_id = await repo.next_id()
        retired = 0
        for partition in layout:
            below = partition.upper is not None and partition.upper <= next_id
            if below and not partition.default and await self._all_expired(partition):
                retired += await self._retire(partition) or 0
        return retired

    async def _all_expired(self, partition: IdPartition) -> bool:
        """True if every step in ``partition`` has expired (False if it is gone meanwhile)."""
        try:
            async with self._bind(write=False) as conn:
                return not await PartitionRepository(conn, self.dialect).has_live_rows(partition)
        except PersistenceError as exc:
            if _gone(exc):
                return False
            raise

    async def _retire(self, partition: IdPartition) -> int | None:
        """Drop ``partition`` if all its steps are still expired; how many it held (None:
        not dropped — it gained a live step, is gone already, or the table stayed busy)."""
        batch = self.cleanup_batch_size
        while True:  # rewards referring to its steps, in bounded batches, no lock held
            async with self._bind() as conn:
                cleared = await PartitionRepository(conn, self.dialect).clear_reward_references(
                    partition, batch
                )
            if cleared < batch:
                break
        try:
            async with self._bind(atomic=True) as conn:
                repo = PartitionRepository(conn, self.dialect)
                layout = await repo.layout() or []
                if partition not in layout:
                    return None  # another cleanup retired it
                await repo.lock_partition(partition, LOCK_TIMEOUT_MS)
                if await repo.has_live_rows(partition):
                    return None
                held = await repo.count(partition)
                await repo.clear_reward_references(partition)
                await repo.drop(partition)
        except PersistenceError as exc:
            if _busy(exc) or _gone(exc):
                return None
            raise
        return held


def _top(layout: list[IdPartition]) -> int | None:
    """The upper bound of the highest bounded partition (None: none, or it is unbounded)."""
    bounded = [p for p in layout if not p.default]
    if not bounded or bounded[-1].upper is None:
        return None
    return max(p.upper for p in bounded if p.upper is not None)
