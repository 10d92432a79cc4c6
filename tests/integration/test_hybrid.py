"""PostgreSQL for permanent data beside Redis for short-lived data, and moving data between them."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]


async def test_permanent_and_ephemeral_side_by_side(
    postgres_memory: Any, redis_memory: Any
) -> None:
    await postgres_memory.store("aqe/results/gen-1", {"tests": 42}, partition="agent_results")
    await redis_memory.store("aqe/heartbeat/gen-1", {"alive": True}, ttl=30)
    await redis_memory.store("aqe/cache/plan", {"steps": 3}, ttl=60, partition="cache")

    assert await postgres_memory.list_keys() == ["aqe/results/gen-1"]
    assert await redis_memory.list_keys() == ["aqe/cache/plan", "aqe/heartbeat/gen-1"]
    assert await postgres_memory.retrieve("aqe/heartbeat/gen-1") is None
    assert await redis_memory.retrieve("aqe/results/gen-1") is None
    assert (await postgres_memory.get_stats())["total_keys"] == 1
    assert (await redis_memory.get_stats())["partitions"] == {"cache": 1, "default": 1}
    assert await postgres_memory.ttl("aqe/results/gen-1") is None
    remaining = await redis_memory.ttl("aqe/heartbeat/gen-1")
    assert remaining is not None and 0 < remaining <= 30


async def test_copy_from_redis_to_postgres_compares_equal(
    postgres_memory: Any, redis_memory: Any
) -> None:
    values: dict[str, Any] = {
        "aqe/migrate/none": None,
        "aqe/migrate/float": 0.1 + 0.2,
        "aqe/migrate/big": 2**62,
        "aqe/migrate/text": "unicodé ✓ 𝄞",
        "aqe/migrate/nested": {"a": [1, 2.5, {"b": None}], "c": "d"},
    }
    await redis_memory.store_many(values, partition="moving")
    await redis_memory.store("aqe/migrate/session", {"user": "gen-1"}, ttl=120, metadata={"m": 1})

    for key in await redis_memory.list_keys("aqe/migrate/"):
        entry = await redis_memory.get_entry(key)
        assert entry is not None
        ttl = await redis_memory.ttl(key)
        await postgres_memory.store(
            key, entry.value, ttl=ttl, partition=entry.partition, metadata=entry.metadata
        )

    keys = await redis_memory.list_keys("aqe/migrate/")
    assert await postgres_memory.list_keys("aqe/migrate/") == keys
    assert await postgres_memory.retrieve_many(keys) == await redis_memory.retrieve_many(keys)
    for key in keys:
        source, copy = await redis_memory.get_entry(key), await postgres_memory.get_entry(key)
        assert source is not None and copy is not None
        assert (copy.value, copy.partition, copy.metadata) == (
            source.value,
            source.partition,
            source.metadata,
        )
        assert type(copy.value) is type(source.value)
    copied_ttl = await postgres_memory.ttl("aqe/migrate/session")
    assert copied_ttl is not None and 100 < copied_ttl <= 120
    pg_stats, redis_stats = await postgres_memory.get_stats(), await redis_memory.get_stats()
    for field in ("total_keys", "partitions", "size_bytes"):
        assert pg_stats[field] == redis_stats[field], field
