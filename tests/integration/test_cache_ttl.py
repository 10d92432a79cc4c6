"""Promise (b): a cache record never outlives its entry's TTL (the database clock decides)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_cache_support import KEY, Factory, NaiveCacheAside, cached_value, factory

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
__all__ = ["factory"]


def fails(kind: str, why: str) -> Any:
    return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=why))


async def test_record_lifetime_is_at_most_the_entrys_remaining_time(factory: Factory) -> None:
    memory = factory.cached()
    raw = factory.raw()
    await memory.store(KEY, "v", ttl=5)
    assert await memory.retrieve(KEY) == "v"  # fills
    remaining = await memory.database.ttl(KEY)  # the database clock, read first
    record_ms = await raw.pttl(memory._tier.record(KEY))  # then the record, read later
    assert remaining is not None
    assert 0 < record_ms <= remaining * 1000
    assert remaining * 1000 - record_ms < 1000, "and not needlessly shorter"


async def test_cache_ttl_caps_the_record(factory: Factory) -> None:
    memory = factory.cached(cache_ttl=0.3)
    raw = factory.raw()
    await memory.store(KEY, "forever")
    await memory.retrieve(KEY)
    assert 0 < await raw.pttl(memory._tier.record(KEY)) <= 300
    await memory.store("aqe/cache/long", "v", ttl=60)
    await memory.retrieve("aqe/cache/long")
    assert 0 < await raw.pttl(memory._tier.record("aqe/cache/long")) <= 300


@pytest.mark.parametrize(
    "kind", ["cached", fails("naive", "a fixed cache TTL serves the entry after it expired")]
)
async def test_no_read_after_the_entry_expired(factory: Factory, kind: str) -> None:
    memory = factory.cached() if kind == "cached" else factory.naive(NaiveCacheAside)
    await factory.cached().store(KEY, "short-lived", ttl=0.5)
    assert await memory.retrieve(KEY) == "short-lived"
    assert await memory.retrieve(KEY) == "short-lived"  # a hit
    await asyncio.sleep(0.7)
    assert await memory.retrieve(KEY) is None


async def test_the_record_is_gone_whenever_the_database_says_the_entry_is(
    factory: Factory,
) -> None:
    """Sample both clocks in lockstep: database first, record second, so the order is fair."""
    memory = factory.cached()
    raw = factory.raw()
    await memory.store(KEY, "v", ttl=0.6)
    await memory.retrieve(KEY)
    assert await cached_value(raw, memory, KEY) == b'"v"'
    deadline = time.monotonic() + 3
    while await memory.database.exists(KEY):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert await cached_value(raw, memory, KEY) is None, "the record outlived the entry"


async def test_ttl_and_entry_from_the_cache_agree_with_the_database(factory: Factory) -> None:
    memory = factory.cached()
    await memory.store(KEY, {"v": 1}, ttl=30, partition="sessions", metadata={"by": "agent-7"})
    from_database = await memory.database.get_entry(KEY)
    assert await memory.get_entry(KEY) == from_database  # the fill
    assert await memory.get_entry(KEY) == from_database  # the hit
    database_ttl = await memory.database.ttl(KEY)
    cached_ttl = await memory.ttl(KEY)
    assert database_ttl is not None and cached_ttl is not None
    assert 29 < cached_ttl <= database_ttl + 0.001
    assert (await memory.get_stats())["cache_hits"] >= 2
    await memory.store("aqe/cache/forever", 1)
    assert await memory.ttl("aqe/cache/forever") is None
    assert await memory.ttl("aqe/cache/forever") is None  # from the cache


async def test_expire_shortens_what_the_cache_keeps(factory: Factory) -> None:
    memory, other = factory.cached(), factory.cached()
    await memory.store(KEY, "v")
    await memory.retrieve(KEY)
    assert await other.retrieve(KEY) == "v"
    assert await memory.expire(KEY, 0.3) is True
    await asyncio.sleep(0.45)
    assert await other.retrieve(KEY) is None
    assert await other.exists(KEY) is False


async def test_an_entry_about_to_expire_is_not_cached(factory: Factory) -> None:
    memory = factory.cached()
    raw = factory.raw()
    await memory.store(KEY, "v", ttl=0.004)
    value = await memory.retrieve(KEY)
    assert value in ("v", None)
    record = memory._tier.record(KEY)
    if await cached_value(raw, memory, KEY) is not None:
        assert await raw.pttl(record) <= 4
