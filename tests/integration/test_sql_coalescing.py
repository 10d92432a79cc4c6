"""PostgreSQL hot path: coalesced concurrent calls and the kept connection (SPEC §10, §11).

Concurrent ``retrieve`` and plain ``store`` calls are sent as multi-row statements; each call
must still get its own result and its own error. A trigger records the transaction id of every
row written, which shows how many statements a burst of stores became, and can poison one key
so that the database refuses it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.errors import PersistenceError, VersionConflictError

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
async def spy(aqe_engine: AsyncEngine) -> AsyncIterator[str]:
    """A key prefix whose writes are logged by transaction id; ``<prefix>poison`` is refused."""
    prefix = f"aqe/coalesce-{uuid.uuid4().hex[:8]}/"
    statements = [
        "CREATE TABLE IF NOT EXISTS coalesce_log (key text, txid bigint)",
        f"""
        CREATE OR REPLACE FUNCTION coalesce_spy() RETURNS trigger AS $$
        BEGIN
            IF NEW.key = '{prefix}poison' THEN
                RAISE EXCEPTION 'poisoned key %', NEW.key USING ERRCODE = 'P0001';
            END IF;
            INSERT INTO coalesce_log VALUES (NEW.key, txid_current());
            RETURN NEW;
        END $$ LANGUAGE plpgsql
        """,
        "DROP TRIGGER IF EXISTS coalesce_spy ON qe_memory",
        f"""
        CREATE TRIGGER coalesce_spy BEFORE INSERT OR UPDATE ON qe_memory FOR EACH ROW
        WHEN (NEW.key LIKE '{prefix}%') EXECUTE FUNCTION coalesce_spy()
        """,
    ]
    async with aqe_engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))
    try:
        yield prefix
    finally:
        async with aqe_engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS coalesce_spy ON qe_memory"))
            await conn.execute(text("DROP TABLE IF EXISTS coalesce_log"))


async def _transactions(engine: AsyncEngine, prefix: str) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(DISTINCT txid) FROM coalesce_log WHERE key LIKE :p"),
            {"p": prefix + "%"},
        )
    return int(count or 0)


async def test_concurrent_stores_share_statements_and_keep_their_versions(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine, spy: str
) -> None:
    await postgres_memory.store(f"{spy}warm", 0)
    keys = [f"{spy}k{i:03d}" for i in range(200)]
    versions = await asyncio.gather(
        *(
            postgres_memory.store(key, {"i": i}, ttl=60 if i % 2 else None)
            for i, key in enumerate(keys)
        )
    )
    assert versions == [1] * 200
    # 200 stores from 200 tasks became far fewer statements (each its own transaction).
    assert await _transactions(aqe_engine, spy) < 100
    assert await postgres_memory.retrieve_many(keys) == {
        key: {"i": i} for i, key in enumerate(keys)
    }
    entry = await postgres_memory.get_entry(keys[1])
    assert entry is not None and entry.expires_at is not None
    entry = await postgres_memory.get_entry(keys[0])
    assert entry is not None and entry.expires_at is None


async def test_concurrent_stores_of_one_key_each_get_their_own_version(
    postgres_memory: PostgresMemory, spy: str
) -> None:
    # One statement cannot upsert a key twice: duplicates must go in order, not fail.
    key = f"{spy}same"
    versions = await asyncio.gather(*(postgres_memory.store(key, i) for i in range(60)))
    assert sorted(versions) == list(range(1, 61))
    last = versions.index(60)
    assert await postgres_memory.retrieve(key) == last


async def test_a_refused_row_fails_only_its_own_call(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine, spy: str
) -> None:
    calls = [postgres_memory.store(f"{spy}n{i:03d}", i) for i in range(80)]
    calls.insert(40, postgres_memory.store(f"{spy}poison", "refused"))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failed) == 1
    assert isinstance(outcomes[40], PersistenceError)
    assert "poisoned key" in str(outcomes[40])
    assert all(outcome == 1 for i, outcome in enumerate(outcomes) if i != 40)
    assert await postgres_memory.retrieve(f"{spy}poison") is None
    found = await postgres_memory.retrieve_many([f"{spy}n{i:03d}" for i in range(80)])
    assert len(found) == 80


async def test_concurrent_reads_get_their_own_values(postgres_memory: PostgresMemory) -> None:
    await postgres_memory.store_many({f"aqe/reads/{i:03d}": {"n": i} for i in range(100)})
    await postgres_memory.store("aqe/reads/short", "gone", ttl=0.05)
    await asyncio.sleep(0.1)
    keys = [f"aqe/reads/{i % 120:03d}" for i in range(300)] + ["aqe/reads/short"] * 5
    values = await asyncio.gather(*(postgres_memory.retrieve(key, default="none") for key in keys))
    expected = [{"n": i % 120} if i % 120 < 100 else "none" for i in range(300)] + ["none"] * 5
    assert values == expected


async def test_conditional_writes_are_never_coalesced_away(postgres_memory: PostgresMemory) -> None:
    # if_absent / expected_version keep their own statements: exactly one claim wins.
    outcomes = await asyncio.gather(
        *(postgres_memory.store("aqe/claim/x", i, if_absent=True) for i in range(30)),
        return_exceptions=True,
    )
    assert outcomes.count(1) == 1
    assert sum(isinstance(o, VersionConflictError) for o in outcomes) == 29


async def test_the_kept_connection_goes_back_on_close(aqe_engine: AsyncEngine) -> None:
    pool = aqe_engine.pool
    before = pool.checkedout()
    memory = PostgresMemory(aqe_engine)
    for i in range(20):
        await memory.store(f"aqe/kept/{i}", i)
        assert await memory.retrieve(f"aqe/kept/{i}") == i
    assert memory.held_connections == 1
    assert pool.checkedout() == before + 1
    await asyncio.gather(*(memory.retrieve(f"aqe/kept/{i}") for i in range(20)))
    assert pool.checkedout() == before + memory.held_connections
    await memory.close()
    assert memory.held_connections == 0
    assert pool.checkedout() == before


async def test_a_kept_connection_closed_by_the_server_is_replaced(
    aqe_engine: AsyncEngine,
) -> None:
    memory = PostgresMemory(aqe_engine)
    try:
        await memory.store("aqe/kept/killed", "before")
        async with aqe_engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'idle'"
                )
            )
        assert killed and killed >= 1
        await asyncio.sleep(0.2)  # the client sees the socket close
        assert await memory.retrieve("aqe/kept/killed") == "before"
        assert await memory.store("aqe/kept/killed", "after") == 2
    finally:
        await memory.close()
