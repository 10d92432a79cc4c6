"""The cache tier's own surface: construction, statistics, what Redis holds, ownership, close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from test_cache_support import KEY, Factory, cached_value, factory, until

from lionagi_qe import ClosedError, InvalidArgumentError, MemoryBackend, codec
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import BreakerState, CachedMemory

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
__all__ = ["factory"]


async def test_satisfies_the_protocol_and_reports_cache_statistics(factory: Factory) -> None:
    memory = factory.cached()
    assert isinstance(memory, MemoryBackend)
    await memory.store(KEY, {"v": 1})
    for _ in range(3):
        assert await memory.retrieve(KEY) == {"v": 1}
    stats = await memory.get_stats()
    assert stats["backend"] == "cached"
    assert stats["database_backend"] == "postgresql"
    assert stats["total_keys"] == 1 and stats["partitions"] == {"default": 1}
    assert stats["cache_hits"] == 2
    assert stats["cache_misses"] == 1
    assert stats["cache_fills"] == 1
    assert stats["cache_invalidations"] == 1
    assert stats["cache_database_reads"] == 1
    assert stats["breaker_state"] == "closed"
    assert memory.breaker_state is BreakerState.CLOSED


async def test_a_cached_null_is_not_a_miss(factory: Factory) -> None:
    memory = factory.cached()
    raw = factory.raw()
    await memory.store(KEY, None)
    assert await memory.retrieve(KEY, default="MISSING") is None
    assert await memory.retrieve(KEY, default="MISSING") is None  # from the cache
    assert await cached_value(raw, memory, KEY) == b"null"
    assert await memory.retrieve("aqe/cache/absent", default="MISSING") == "MISSING"
    assert await memory.retrieve("aqe/cache/absent", default="MISSING") == "MISSING"  # cached
    assert (await raw.get(memory._tier.record("aqe/cache/absent"))).startswith(b"A")
    assert await memory.exists(KEY) is True
    assert await memory.exists("aqe/cache/absent") is False
    assert (await memory.get_stats())["cache_hits"] >= 3


async def test_redis_holds_the_databases_json_text(factory: Factory) -> None:
    memory = factory.cached()
    raw = factory.raw()
    value = {"b": 1e16, "a": [0.1, None, "é"], "z": {"nested": True}}
    await memory.store(KEY, value)
    await memory.retrieve(KEY)
    record = await raw.get(memory._tier.record(KEY))
    row = await memory.database.get_entry(KEY)
    assert row is not None
    assert record.startswith(b"V0::")  # a value of generation 0 that never expires
    assert record.endswith(codec.encode(value).encode())  # our JSON text, never a pickle
    assert await cached_value(raw, memory, KEY) == codec.encode(value).encode()
    assert await memory.retrieve(KEY) == value == row.value


async def test_retrieve_many_mixes_hits_misses_and_absences(factory: Factory) -> None:
    memory, other = factory.cached(), factory.cached()
    await memory.store_many({"aqe/cache/m/1": 1, "aqe/cache/m/2": None, "aqe/cache/m/3": [3]})
    await memory.retrieve("aqe/cache/m/1")  # a hit in the batch below
    await memory.retrieve("aqe/cache/m/0")  # a cached absence
    keys = [f"aqe/cache/m/{i}" for i in range(5)]
    expected = {"aqe/cache/m/1": 1, "aqe/cache/m/2": None, "aqe/cache/m/3": [3]}
    assert await memory.retrieve_many(keys) == expected
    reads = memory.database_reads
    assert await memory.retrieve_many(reversed(keys)) == expected
    assert memory.database_reads == reads, "all from the cache the second time"
    assert list(await other.retrieve_many(keys)) == list(expected)


async def test_a_big_batch_is_looked_up_and_filled_in_chunks(factory: Factory) -> None:
    memory = factory.cached()
    items = {f"aqe/cache/big/{i:05d}": i for i in range(2500)}
    await memory.store_many(items)
    assert await memory.retrieve_many(items) == items
    assert await memory.retrieve_many(items) == items
    stats = await memory.get_stats()
    assert stats["cache_fills"] == 2500 and stats["cache_database_reads"] == 1


async def test_flush_cache_disowns_every_record(factory: Factory) -> None:
    memory = factory.cached()
    await memory.store(KEY, "v")
    await memory.retrieve(KEY)
    assert await memory.flush_cache() is True
    reads = memory.database_reads
    assert await memory.retrieve(KEY) == "v"
    assert memory.database_reads == reads + 1


async def test_a_write_cancelled_after_its_commit_still_invalidates(factory: Factory) -> None:
    memory, other = factory.cached(), factory.cached()
    await memory.store(KEY, "old")
    assert await other.retrieve(KEY) == "old"
    hold = memory.hold_next_write()
    write = asyncio.create_task(memory.store(KEY, "new"))
    await asyncio.wait_for(hold.reached.wait(), 10)  # committed, about to invalidate
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    hold.release()  # the invalidation outlives the cancelled caller
    await until(lambda: not memory._background)
    assert await other.retrieve(KEY) == "new"


async def test_search_list_stats_and_cleanup_come_from_the_database(factory: Factory) -> None:
    memory = factory.cached()
    await memory.store("aqe/cache/s/1", 1)
    await memory.retrieve("aqe/cache/s/1")
    await memory.database.store("aqe/cache/s/2", 2)  # behind the cache's back
    assert await memory.search("aqe/cache/s/*") == {"aqe/cache/s/1": 1, "aqe/cache/s/2": 2}
    assert await memory.list_keys("aqe/cache/s/") == ["aqe/cache/s/1", "aqe/cache/s/2"]
    assert (await memory.get_stats())["total_keys"] == 2
    assert await memory.cleanup_expired() == 0


async def test_close_closes_redis_and_the_database(factory: Factory) -> None:
    memory = factory.cached()
    await memory.store(KEY, 1)
    await memory.close()
    await memory.close()  # idempotent
    with pytest.raises(ClosedError):
        await memory.retrieve(KEY)
    with pytest.raises(ClosedError):
        await memory.database.retrieve(KEY)
    assert "closed" in repr(memory)


async def test_a_callers_client_is_used_and_left_open(
    aqe_engine: AsyncEngine, aqe_redis_url: str, factory: Factory
) -> None:
    client = aioredis.Redis.from_url(aqe_redis_url, socket_timeout=2)
    try:
        memory = CachedMemory(PostgresMemory(aqe_engine), client=client, prefix=factory.prefix)
        await memory.store(KEY, "v")
        assert await memory.retrieve(KEY) == "v"
        assert await memory.retrieve(KEY) == "v"
        assert (await memory.get_stats())["cache_hits"] == 1
        await memory.close()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_session_factory_database_is_fine(
    aqe_engine: AsyncEngine, aqe_redis_url: str, factory: Factory
) -> None:
    sessions = async_sessionmaker(aqe_engine, expire_on_commit=False)
    memory = CachedMemory(PostgresMemory(sessions), redis_url=aqe_redis_url, prefix=factory.prefix)
    try:
        await memory.store(KEY, "v")
        assert await memory.retrieve(KEY) == "v"
        assert await memory.get_entry(KEY) is not None
    finally:
        await memory.close()


async def test_construction_is_checked(aqe_engine: AsyncEngine, aqe_redis_url: str) -> None:
    database = PostgresMemory(aqe_engine)
    url = aqe_redis_url
    bad: list[dict[str, Any]] = [
        {},
        {"redis_url": url, "client": aioredis.Redis.from_url(url)},
        {"redis_url": url, "prefix": ""},
        {"redis_url": url, "cache_ttl": 0},
        {"redis_url": url, "socket_timeout": -1},
        {"redis_url": url, "lock_wait": True},
        {"redis_url": url, "breaker_reset": 0},
        {"redis_url": url, "breaker_failures": 0},
        {"redis_url": url, "max_connections": 0},
    ]
    for options in bad:
        with pytest.raises(InvalidArgumentError):
            CachedMemory(database, **options)
    with pytest.raises(TypeError):
        CachedMemory("postgresql+asyncpg://x/y", redis_url=url)  # type: ignore[arg-type]
    async with AsyncSession(aqe_engine) as session:
        with pytest.raises(InvalidArgumentError, match="commits each call"):
            CachedMemory(PostgresMemory(session), redis_url=url)


async def test_repr_shows_no_credentials(aqe_engine: AsyncEngine) -> None:
    memory = CachedMemory(
        PostgresMemory(aqe_engine), redis_url="redis://agent:s3cret@127.0.0.1:1/0"
    )
    assert "s3cret" not in repr(memory)
    await memory.close()


async def test_sqlite_as_the_source_of_truth(aqe_sqlite_url: str, factory: Factory) -> None:
    memory = CachedMemory(
        PostgresMemory(aqe_sqlite_url), redis_url=factory.redis_url, prefix=factory.prefix
    )
    try:
        await memory.store(KEY, {"v": 1}, ttl=30, metadata={"by": "sqlite"})
        from_database = await memory.database.get_entry(KEY)
        assert await memory.get_entry(KEY) == from_database  # the fill
        assert await memory.get_entry(KEY) == from_database  # the hit
        remaining = await memory.ttl(KEY)
        assert remaining is not None and 29 < remaining <= 30
        assert await memory.retrieve_many([KEY, "aqe/cache/none"]) == {KEY: {"v": 1}}
        await memory.store(KEY, {"v": 2})
        assert await memory.retrieve(KEY) == {"v": 2}
        assert await memory.ttl(KEY) is None
        assert (await memory.get_stats())["database_backend"] == "sqlite"
    finally:
        await memory.close()
