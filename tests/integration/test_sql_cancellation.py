"""A cancelled PostgresMemory write never lands after the same caller's next write.

A statement cancelled after it was sent may still run on the server (the driver drops the
connection and its pending cancel request with it); if the cancelled call returned at once, the
caller's next write of that key could go out on another connection and commit first, and the
older write would then overwrite it. See :mod:`lionagi_qe.backends.settle`.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from pg_activity import app_args, app_name, backends, dsn

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db.engine import create_engine

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def _waiting_for_a_lock(admin: asyncpg.Connection) -> None:
    for _ in range(500):
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        if await admin.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store never waited for the row lock")


@pytest.mark.parametrize("old_write", ["store", "delete", "increment", "expire"])
async def test_a_cancelled_write_settles_before_the_caller_goes_on(
    aqe_database_url: str, old_write: str
) -> None:
    """The write waits on a row lock in the server; cancelling the caller does not stop it
    there (the connection is dropped, the statement keeps waiting), so the caller must not
    go on until the statement has settled, or its next write could land first."""
    memory = PostgresMemory(aqe_database_url, pool_size=2)
    key = f"aqe/sql-cancel/locked/{old_write}"
    await memory.store(key, 1)
    locker = await asyncpg.connect(dsn(aqe_database_url))
    admin = await asyncpg.connect(dsn(aqe_database_url))
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM qe_memory WHERE key = $1 FOR UPDATE", key)
        writes = {
            "store": lambda: memory.store(key, 2),
            "delete": lambda: memory.delete(key),
            "increment": lambda: memory.increment(key),
            "expire": lambda: memory.expire(key, 3600),
        }
        task = asyncio.create_task(writes[old_write]())
        await _waiting_for_a_lock(admin)
        task.cancel()
        await asyncio.sleep(0.3)
        assert not task.done(), "the cancelled write returned while its statement still ran"
        await lock.rollback()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
        entry = await memory.get_entry(key)
        expected = {"store": 2, "delete": None, "increment": 2, "expire": 1}[old_write]
        assert (None if entry is None else entry.value) == expected  # it did land
        await memory.store(key, "next")
        assert await memory.retrieve(key) == "next"
    finally:
        await locker.close()
        await admin.close()
        await memory.delete(key)
        await memory.close()


async def test_overflow_connections_are_closed_not_leaked(aqe_database_url: str) -> None:
    """A pool above its ``pool_size`` closes the connections handed back to it; on the direct
    path that close must really happen (it needs a greenlet), or the server sessions stay open
    and forgotten until the server runs out of connections."""
    app = app_name()
    engine = create_engine(
        aqe_database_url, pool_size=1, max_overflow=10, pool_timeout=20, **app_args(app)
    )
    memory = PostgresMemory(engine)
    other = PostgresMemory(engine)  # a second memory: its calls need connections of their own
    try:
        for round_ in range(5):
            await asyncio.gather(
                *(m.store(f"aqe/overflow/{n}", round_) for m in (memory, other) for n in range(8)),
                *(m.retrieve(f"aqe/overflow/{n}") for m in (memory, other) for n in range(8)),
            )
        # Beyond pool_size (1) and the two memories' kept connections, nothing stays open.
        assert engine.pool.overflow() <= 2  # type: ignore[attr-defined]
        limit = 1 + 2 + 1  # the pool's one, the two kept ones, the one counting
        for _ in range(200):  # sessions end asynchronously after a close
            count = await backends(engine, app)
            if count <= limit:
                break
            await asyncio.sleep(0.05)
        assert count <= limit, f"{count} server sessions for a pool of 1 (+2 kept)"
    finally:
        await memory.close()
        await other.close()
        await engine.dispose()
