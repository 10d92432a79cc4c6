"""Read-replica configuration: typed errors before any I/O, masked credentials, zero cost off.

Nothing here connects: engines are created lazily, and every check runs in the constructors.
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from lionagi_qe import open_memory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.config import Settings
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.manager import Database
from lionagi_qe.errors import InvalidArgumentError

SECRET = "r3plica-Pa55"
PRIMARY = f"postgresql+asyncpg://agent:{SECRET}@127.0.0.1:1/aqe"
REPLICA = f"postgresql+asyncpg://agent:{SECRET}@127.0.0.1:2/aqe"


@pytest.mark.parametrize(
    "options",
    [
        {"replicas": REPLICA},  # one string, not a list
        {"replicas": ["sqlite+aiosqlite:///replica.db"]},
        {"replicas": [REPLICA], "replica_wait": 5.0, "replica_max_lag": 5.0},
        {"replicas": [REPLICA], "replica_max_lag": 0},
        {"replicas": [REPLICA], "replica_retry_after": -1},
        {"replicas": [REPLICA], "replica_wait": -0.1},
    ],
    ids=["string", "sqlite-replica", "wait-not-below-lag", "lag-zero", "retry-negative", "wait<0"],
)
async def test_bad_replica_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        PostgresMemory(PRIMARY, **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        Database(PRIMARY, **options)  # type: ignore[arg-type]


async def test_replicas_need_a_postgresql_primary_and_an_engine() -> None:
    with pytest.raises(InvalidArgumentError):
        PostgresMemory("sqlite+aiosqlite:///:memory:", replicas=[REPLICA])
    engine = create_engine(PRIMARY)
    try:
        with pytest.raises(InvalidArgumentError):
            PostgresMemory(async_sessionmaker(engine), replicas=[REPLICA])
    finally:
        await engine.dispose()


async def test_replicas_given_twice_are_refused() -> None:
    db = Database(PRIMARY, replicas=[REPLICA])
    try:
        with pytest.raises(InvalidArgumentError):
            PostgresMemory(db, replicas=[REPLICA])
        memory = PostgresMemory(db)
        assert memory.replicas is db.replicas  # one router: one view of the owner's writes
        await memory.close()
    finally:
        await db.close()


async def test_credentials_never_reach_reprs() -> None:
    db = Database(PRIMARY, replicas=[REPLICA])
    memory = PostgresMemory(PRIMARY, replicas=[REPLICA])
    try:
        for text in (repr(db), repr(db.replicas), repr(memory.replicas), str(memory.get_stats)):
            assert SECRET not in text
        assert "127.0.0.1:2" in repr(db)
        assert memory.replicas is not None
        assert SECRET not in str(memory.replicas.stats())
    finally:
        await memory.close()
        await db.close()


async def test_no_replicas_means_no_router_and_no_hooks() -> None:
    engine = create_engine(PRIMARY)
    memory = PostgresMemory(engine)
    db = Database(PRIMARY)
    try:
        assert memory.replicas is None
        assert db.replicas is None
        assert not engine.sync_engine.dispatch.after_execute
        assert not engine.sync_engine.pool.dispatch.checkin
    finally:
        await memory.close()
        await db.close()
        await engine.dispose()


async def test_router_hooks_are_removed_on_close() -> None:
    engine = create_engine(PRIMARY)
    memory = PostgresMemory(engine, replicas=[REPLICA])
    assert engine.sync_engine.dispatch.after_execute
    assert engine.sync_engine.pool.dispatch.checkin
    await memory.close()
    assert not engine.sync_engine.dispatch.after_execute
    assert not engine.sync_engine.pool.dispatch.checkin
    await engine.dispose()


async def test_open_memory_takes_replicas_from_settings_for_its_own_database() -> None:
    settings = Settings(database_url=PRIMARY, database_replicas=[REPLICA])
    from_settings = open_memory(settings=settings)
    other = open_memory("postgresql+asyncpg://agent@127.0.0.1:3/other", settings=settings)
    explicit = open_memory("postgresql+asyncpg://agent@127.0.0.1:3/other", replicas=[REPLICA])
    try:
        assert isinstance(from_settings, PostgresMemory)
        assert from_settings.replicas is not None
        assert isinstance(other, PostgresMemory)
        assert other.replicas is None  # replicas of one database never serve another
        assert isinstance(explicit, PostgresMemory)
        assert explicit.replicas is not None
    finally:
        for memory in (from_settings, other, explicit):
            await memory.close()
    with pytest.raises(InvalidArgumentError):
        open_memory("redis://127.0.0.1:1/0", replicas=[REPLICA])
