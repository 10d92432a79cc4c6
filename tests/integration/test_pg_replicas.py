"""Read replicas on a real primary/replica pair: routing, read-your-writes, lag, replica loss.

The pair is private to this module (per xdist worker): tests here pause replay and stop the
replica, which must never disturb the contract suite's shared pair. Which server answered is
proved by making the replica observably different: with replay paused, a row written on the
primary exists there and not on the replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import pytest_asyncio
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lionagi_qe import DatabaseManager
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.manager import Database
from lionagi_qe.models import QValue
from lionagi_qe.testing.helpers import run_sync
from lionagi_qe.testing.replication import (
    ReplicaPair,
    pause_replay,
    resume_replay,
    start_replica_pair,
    wait_for_replay,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: Upper bound of every polling loop below (a hang guard, not a speed assertion).
DEADLINE = 30.0
#: ``replica_retry_after`` of the replica-loss test.
RETRY_AFTER = 0.5


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    """A private primary/replica pair with the schema migrated and replayed."""
    started = start_replica_pair()

    async def upgrade() -> None:
        engine = create_engine(started.primary_url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()
        async with asyncio.timeout(DEADLINE):
            await wait_for_replay(started.primary_url, started.replica_url)

    try:
        run_sync(upgrade)
        yield started
    finally:
        started.close()


@pytest_asyncio.fixture(loop_scope="session")
async def primary(pair: ReplicaPair) -> AsyncIterator[AsyncEngine]:
    """An engine on the primary; the memory tables are emptied before and after the test."""
    engine = create_engine(pair.primary_url)
    await _empty(engine)
    try:
        yield engine
    finally:
        await resume_replay(pair.replica_url)  # whatever the test did
        await _empty(engine)
        await engine.dispose()


async def _empty(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM qe_memory"))
        await conn.execute(text("DELETE FROM partitions WHERE name <> 'default'"))


def _replica_reads(memory: PostgresMemory) -> int:
    assert memory.replicas is not None
    reads: int = memory.replicas.replicas[0].reads
    return reads


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until true (bounded by DEADLINE)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


async def _warm(memory: PostgresMemory) -> None:
    """Read until the replica serves (the router learns it is fresh in the background)."""

    async def served() -> bool:
        before = _replica_reads(memory)
        await memory.list_keys("aqe/")
        return _replica_reads(memory) > before

    await _until(served)


async def test_stale_ok_reads_go_to_the_replica_point_reads_to_the_primary(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    writer = PostgresMemory(primary)
    reader = PostgresMemory(primary, replicas=[pair.replica_url], replica_max_lag=60.0)
    try:
        await writer.store("aqe/route/old", "before")
        async with asyncio.timeout(DEADLINE):
            await wait_for_replay(pair.primary_url, pair.replica_url)
        await _warm(reader)
        await pause_replay(pair.replica_url)
        await writer.store("aqe/route/new", "after")  # on the primary only, from now on

        # Stale-ok reads: the replica answers (it lacks the new key; the primary has it).
        assert await reader.search("aqe/route/*") == {"aqe/route/old": "before"}
        assert await reader.list_keys("aqe/route/") == ["aqe/route/old"]
        assert [entry.key async for entry in reader.scan("aqe/route/")] == ["aqe/route/old"]
        assert (await reader.get_stats())["total_keys"] == 1
        # Point reads: the primary answers.
        assert await reader.retrieve("aqe/route/new") == "after"
        assert (await reader.get_entry("aqe/route/new")) is not None
        assert await reader.exists("aqe/route/new")

        await resume_replay(pair.replica_url)
        async with asyncio.timeout(DEADLINE):
            await wait_for_replay(pair.primary_url, pair.replica_url)
        before = _replica_reads(reader)
        assert await reader.list_keys("aqe/route/") == ["aqe/route/new", "aqe/route/old"]
        assert _replica_reads(reader) == before + 1
    finally:
        await writer.close()
        await reader.close()


@pytest.mark.parametrize("wait", [0.0, 0.3], ids=["no-wait", "wait"])
async def test_read_your_writes_while_the_replica_lags(
    pair: ReplicaPair, primary: AsyncEngine, wait: float
) -> None:
    memory = PostgresMemory(
        primary, replicas=[pair.replica_url], replica_max_lag=60.0, replica_wait=wait
    )
    try:
        await _warm(memory)
        await pause_replay(pair.replica_url)
        await memory.store("aqe/ryw/a", 1)
        await memory.store_many({"aqe/ryw/b": 2, "aqe/ryw/c": 3}, partition="ryw")
        await memory.increment("aqe/ryw/n")
        replica_reads = _replica_reads(memory)

        # A naive "stale-ok reads always go to the replica" fails every line below.
        assert await memory.search("aqe/ryw/[a-c]") == {
            "aqe/ryw/a": 1,
            "aqe/ryw/b": 2,
            "aqe/ryw/c": 3,
        }
        assert await memory.search("ryw/[ab]$", regex=True) == {"aqe/ryw/a": 1, "aqe/ryw/b": 2}
        assert await memory.list_keys("aqe/ryw/") == [f"aqe/ryw/{k}" for k in "abcn"]
        assert [e.key async for e in memory.scan("aqe/ryw/", batch_size=2)] == [
            f"aqe/ryw/{k}" for k in "abcn"
        ]
        stats = await memory.get_stats()
        assert stats["total_keys"] == 4
        assert stats["partitions"]["ryw"] == 2
        assert await memory.delete("aqe/ryw/a")
        assert "aqe/ryw/a" not in await memory.list_keys("aqe/ryw/")
        assert _replica_reads(memory) == replica_reads  # all of them from the primary

        await resume_replay(pair.replica_url)

        async def replica_serves_again() -> bool:
            before = _replica_reads(memory)
            keys = await memory.list_keys("aqe/ryw/")
            assert keys == [f"aqe/ryw/{k}" for k in "bcn"]  # never stale, whoever answers
            return _replica_reads(memory) > before

        await _until(replica_serves_again)
    finally:
        await memory.close()


async def test_a_replica_lagging_beyond_the_bound_is_skipped(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    writer = PostgresMemory(primary)
    reader = PostgresMemory(primary, replicas=[pair.replica_url], replica_max_lag=0.5)
    try:
        await _warm(reader)
        await pause_replay(pair.replica_url)
        await writer.store("aqe/lag/k", "v")  # another process's write: no read-your-writes

        # Without a staleness bound the reader would keep asking the paused replica and never
        # see the key; with it, the replica is skipped once it is 0.5 s behind.
        async def seen() -> bool:
            return await reader.search("aqe/lag/*") == {"aqe/lag/k": "v"}

        await _until(seen)
        assert reader.replicas is not None
        assert reader.replicas.stats()["replicas"][0]["state"] == "lagging"
    finally:
        await writer.close()
        await reader.close()


async def test_a_primary_given_as_replica_is_never_used(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    # A misconfiguration (or a promoted replica): it is not in recovery, so it no longer
    # follows the primary's writes. It is skipped, and nothing fails.
    memory = PostgresMemory(primary, replicas=[pair.primary_url], replica_wait=1.0)
    try:
        await memory.store("aqe/misconfigured/k", 1)
        assert await memory.search("aqe/misconfigured/*") == {"aqe/misconfigured/k": 1}
        assert await memory.list_keys("aqe/misconfigured/") == ["aqe/misconfigured/k"]
        assert memory.replicas is not None
        state = memory.replicas.stats()["replicas"][0]
        assert state["reads"] == 0
        assert state["state"] == "down"
        assert "not a replica" in state["last_error"]
    finally:
        await memory.close()


async def test_cancelled_replica_reads_leak_no_connection(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    memory = PostgresMemory(primary, replicas=[pair.replica_url], replica_max_lag=60.0)
    try:
        await memory.store_many({f"aqe/cancel/{i:03d}": "x" * 200 for i in range(300)})
        async with asyncio.timeout(DEADLINE):
            await wait_for_replay(pair.primary_url, pair.replica_url)
        await _warm(memory)
        assert memory.replicas is not None
        replica = memory.replicas.replicas[0]
        for delay in (0, 0.0005, 0.001, 0.002, 0.005):
            tasks = [asyncio.create_task(memory.search("aqe/cancel/*")) for _ in range(8)]
            await asyncio.sleep(delay)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert replica.reads > 0
        held = 0 if replica.runner is None else replica.runner.held
        assert replica.engine.sync_engine.pool.checkedout() == held  # type: ignore[attr-defined]
        assert await memory.search("aqe/cancel/00?") == {
            f"aqe/cancel/00{i}": "x" * 200 for i in range(10)
        }
    finally:
        await memory.close()


async def test_database_read_hook_routes_and_sees_its_own_writes(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    db = Database(pair.primary_url, replicas=[pair.replica_url], replica_max_lag=60.0)

    async def in_recovery(conn: AsyncConnection) -> bool:
        return bool(await conn.scalar(text("SELECT pg_is_in_recovery()")))

    async def labels(conn: AsyncConnection) -> set[str]:
        return set((await conn.scalars(text("SELECT name FROM partitions"))).all())

    try:
        assert db.replicas is not None
        assert await db.read(in_recovery) is False  # stale_ok defaults to False

        async def replica_answers() -> bool:
            return await db.read(in_recovery, stale_ok=True)

        await _until(replica_answers)
        await pause_replay(pair.replica_url)
        # A write through the Database's own sessions (as the Q-learning store makes them)
        # is noticed by its engine: the next stale-ok read goes to the primary.
        async with db.session() as session:
            await session.execute(text("INSERT INTO partitions (name) VALUES ('db-hook')"))
        assert "db-hook" in await db.read(labels, stale_ok=True)
        assert await db.read(in_recovery, stale_ok=True) is False
    finally:
        await db.close()
        async with primary.begin() as conn:
            await conn.execute(text("DELETE FROM partitions WHERE name = 'db-hook'"))


async def test_a_transaction_counts_as_written_once_committed(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    # The router may catch up with a transaction's statements before its COMMIT: the commit
    # itself (the connection going back to the pool) must count as a write again.
    db = Database(pair.primary_url, replicas=[pair.replica_url], replica_max_lag=60.0)
    served = 0

    async def labels(conn: AsyncConnection) -> set[str]:
        return set((await conn.scalars(text("SELECT name FROM partitions"))).all())

    async def on_replica() -> bool:
        nonlocal served
        assert db.replicas is not None
        await db.read(labels, stale_ok=True)
        return db.replicas.replicas[0].reads > served

    try:
        assert db.replicas is not None
        async with db.session() as session:
            await session.execute(text("INSERT INTO partitions (name) VALUES ('late-commit')"))
            served = db.replicas.replicas[0].reads
            await _until(on_replica)  # the replica has replayed the uncommitted INSERT
            await pause_replay(pair.replica_url)
        assert "late-commit" in await db.read(labels, stale_ok=True)
    finally:
        await db.close()
        async with primary.begin() as conn:
            await conn.execute(text("DELETE FROM partitions WHERE name = 'late-commit'"))


async def test_learning_store_writes_count_for_read_your_writes(
    pair: ReplicaPair, primary: AsyncEngine
) -> None:
    # The Q-learning store writes in autocommit through DatabaseManager.engine; the router sees
    # those writes through engine events, so a stale-ok read after them goes to the primary.
    manager = DatabaseManager(pair.primary_url, replicas=[pair.replica_url], replica_max_lag=60.0)
    agent_type = (await manager.list_agent_types())[0]["agent_type"]

    async def q_value(conn: AsyncConnection) -> float | None:
        found = await conn.scalar(
            select(QValue.q_value).where(
                QValue.agent_type == agent_type,
                QValue.state_hash == "replica-state",
                QValue.action_hash == "replica-action",
            )
        )
        return None if found is None else float(found)

    async def in_recovery(conn: AsyncConnection) -> bool:
        return bool(await conn.scalar(select(func.pg_is_in_recovery())))

    try:
        await _until(lambda: manager.read(in_recovery, stale_ok=True))
        await pause_replay(pair.replica_url)
        await manager.upsert_q_value(agent_type, "replica-state", "replica-action", 0.75)
        assert await manager.read(q_value, stale_ok=True) == 0.75
    finally:
        async with primary.begin() as conn:
            await conn.execute(delete(QValue).where(QValue.state_hash == "replica-state"))
        await manager.close()


async def test_replica_stopped_mid_load_then_back(pair: ReplicaPair, primary: AsyncEngine) -> None:
    seed = {f"aqe/load/{i:03d}": i for i in range(40)}
    writer = PostgresMemory(primary)
    reader = PostgresMemory(
        primary, replicas=[pair.replica_url], replica_max_lag=5.0, replica_retry_after=RETRY_AFTER
    )
    errors: list[BaseException] = []
    reads = 0
    stop = asyncio.Event()

    async def load() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                async with asyncio.timeout(10):  # a hang guard: no read may stall
                    assert await reader.search("aqe/load/*") == seed
                    assert await reader.list_keys("aqe/load/") == sorted(seed)
                    assert (await reader.get_stats())["total_keys"] == len(seed)
                reads += 3
            except BaseException as exc:
                errors.append(exc)
                return
            await asyncio.sleep(0)

    try:
        await writer.store_many(seed)
        async with asyncio.timeout(DEADLINE):
            await wait_for_replay(pair.primary_url, pair.replica_url)
        await _warm(reader)
        workers = [asyncio.create_task(load()) for _ in range(6)]
        await _until(lambda: _true(reads > 60))
        await asyncio.to_thread(pair.stop_replica, "immediate")
        assert not pair.replica_running()
        after_stop = reads
        await _until(lambda: _true(reads > after_stop + 60 or bool(errors)))
        assert not errors, errors
        assert reader.replicas is not None
        state = reader.replicas.stats()["replicas"][0]
        assert state["state"] != "ok"
        assert state["last_error"] is not None
        # Skipped while down, and retried by the background probe only: through several
        # retry_after periods of load, no reader tries the dead replica again.
        failures = state["failures"]
        served = _replica_reads(reader)
        await asyncio.sleep(4 * RETRY_AFTER)
        assert not errors, errors
        assert reader.replicas.replicas[0].failures == failures
        assert _replica_reads(reader) == served
        assert reader.replicas.stats()["replicas"][0]["state"] != "ok"

        await asyncio.to_thread(pair.start_replica)
        await _until(lambda: _true(_replica_reads(reader) > served or bool(errors)))
        stop.set()
        await asyncio.gather(*workers)
        assert not errors, errors
        assert reader.replicas.stats()["replicas"][0]["state"] == "ok"
    finally:
        stop.set()
        await writer.close()
        await reader.close()
        if not pair.replica_running():
            await asyncio.to_thread(pair.start_replica)


async def _true(value: bool) -> bool:
    return value
