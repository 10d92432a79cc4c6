"""The memory contract, part 2: TTLs decided by the server clock; no read path sees the dead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe import InvalidTTLError, KeyNotFoundError

pytestmark = pytest.mark.integration

SHORT = 0.4  # seconds: long enough to read before expiry, short enough to wait for


async def _expired(memory: Any, key: str, value: Any = "v") -> None:
    await memory.store(key, value, ttl=SHORT)
    await asyncio.sleep(SHORT + 0.25)


async def test_default_ttl_is_none(memory: Any) -> None:
    await memory.store("aqe/test/forever", 1)
    assert await memory.ttl("aqe/test/forever") is None
    entry = await memory.get_entry("aqe/test/forever")
    assert entry is not None and entry.expires_at is None


async def test_value_readable_before_expiry_and_gone_after(memory: Any) -> None:
    await memory.store("aqe/test/ttl", {"hb": 1}, ttl=SHORT)
    assert await memory.retrieve("aqe/test/ttl") == {"hb": 1}
    remaining = await memory.ttl("aqe/test/ttl")
    assert remaining is not None and 0 < remaining <= SHORT
    await asyncio.sleep(SHORT + 0.25)
    assert await memory.retrieve("aqe/test/ttl") is None
    assert await memory.exists("aqe/test/ttl") is False
    assert await memory.get_entry("aqe/test/ttl") is None
    with pytest.raises(KeyNotFoundError):
        await memory.ttl("aqe/test/ttl")


async def test_no_read_path_returns_an_expired_entry(memory: Any) -> None:
    await memory.store("aqe/test/dead/live", "alive")
    await _expired(memory, "aqe/test/dead/gone", None)
    assert await memory.search("aqe/test/dead/*") == {"aqe/test/dead/live": "alive"}
    assert await memory.search("dead", regex=True) == {"aqe/test/dead/live": "alive"}
    assert await memory.list_keys("aqe/test/dead/") == ["aqe/test/dead/live"]
    assert await memory.retrieve_many(["aqe/test/dead/gone", "aqe/test/dead/live"]) == {
        "aqe/test/dead/live": "alive"
    }
    stats = await memory.get_stats()
    assert stats["total_keys"] == 1
    assert stats["partitions"] == {"default": 1}
    assert await memory.delete("aqe/test/dead/gone") is False
    assert await memory.expire("aqe/test/dead/gone", 10) is False


async def test_float_ttl(memory: Any) -> None:
    await memory.store("aqe/test/fttl", 1, ttl=2.5)
    remaining = await memory.ttl("aqe/test/fttl")
    assert remaining is not None and 2.0 < remaining <= 2.5


async def test_overwrite_replaces_ttl(memory: Any) -> None:
    await memory.store("aqe/test/rettl", 1, ttl=SHORT)
    await memory.store("aqe/test/rettl", 2)
    assert await memory.ttl("aqe/test/rettl") is None
    await asyncio.sleep(SHORT + 0.25)
    assert await memory.retrieve("aqe/test/rettl") == 2
    await memory.store("aqe/test/rettl", 3, ttl=100)
    remaining = await memory.ttl("aqe/test/rettl")
    assert remaining is not None and 99 < remaining <= 100


async def test_expire_sets_and_replaces_ttl(memory: Any) -> None:
    await memory.store("aqe/test/exp", 1)
    assert await memory.expire("aqe/test/exp", SHORT) is True
    remaining = await memory.ttl("aqe/test/exp")
    assert remaining is not None and remaining <= SHORT
    await asyncio.sleep(SHORT + 0.25)
    assert await memory.retrieve("aqe/test/exp") is None
    assert await memory.expire("aqe/test/missing", 5) is False


async def test_expired_key_is_absent_for_conditional_writes(memory: Any) -> None:
    await _expired(memory, "aqe/test/lease", "old-holder")
    assert await memory.store("aqe/test/lease", "new-holder", if_absent=True) == 1
    entry = await memory.get_entry("aqe/test/lease")
    assert entry is not None and entry.version == 1 and entry.value == "new-holder"


async def test_increment_on_expired_counter_starts_over(memory: Any) -> None:
    await memory.increment("aqe/test/window", 5, ttl=SHORT)
    await asyncio.sleep(SHORT + 0.25)
    assert await memory.increment("aqe/test/window", 2) == 2


async def test_increment_keeps_ttl_unless_given(memory: Any) -> None:
    await memory.increment("aqe/test/rate", 1, ttl=60)
    await memory.increment("aqe/test/rate", 1)
    remaining = await memory.ttl("aqe/test/rate")
    assert remaining is not None and 50 < remaining <= 60
    await memory.increment("aqe/test/rate", 1, ttl=120)
    remaining = await memory.ttl("aqe/test/rate")
    assert remaining is not None and 110 < remaining <= 120


async def test_store_many_with_ttl(memory: Any) -> None:
    await memory.store_many({f"aqe/test/sessions/{i}": i for i in range(20)}, ttl=SHORT)
    assert len(await memory.list_keys("aqe/test/sessions/")) == 20
    await asyncio.sleep(SHORT + 0.25)
    assert await memory.list_keys("aqe/test/sessions/") == []


async def test_stats_count_expired_until_cleanup(memory: Any) -> None:
    await memory.store("aqe/test/keep", 1)
    for i in range(3):
        await memory.store(f"aqe/test/old/{i}", i, ttl=SHORT)
    await asyncio.sleep(SHORT + 0.25)
    stats = await memory.get_stats()
    assert stats["total_keys"] == 1
    removed = await memory.cleanup_expired()
    assert 0 <= removed <= 3
    after = await memory.get_stats()
    assert after["total_keys"] == 1
    assert after["total_expired"] == 0
    assert await memory.cleanup_expired() == 0
    assert await memory.retrieve("aqe/test/keep") == 1


@pytest.mark.parametrize("ttl", [0, -1, -0.5, float("nan"), float("inf"), True, "10", [1]])
async def test_bad_ttl_rejected(memory: Any, ttl: Any) -> None:
    with pytest.raises(InvalidTTLError):
        await memory.store("aqe/test/badttl", 1, ttl=ttl)
    with pytest.raises(ValueError):
        await memory.store_many({"aqe/test/badttl2": 1}, ttl=ttl)
    assert await memory.exists("aqe/test/badttl") is False
    assert await memory.exists("aqe/test/badttl2") is False
