"""The memory contract, part 4: partitions, statistics, namespace, cleanup."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe import InvalidKeyError, InvalidPartitionError

pytestmark = pytest.mark.integration


async def test_partitions_are_labels(memory: Any) -> None:
    await memory.store("aqe/test/p/a1", 1, partition="alpha")
    await memory.store("aqe/test/p/a2", 2, partition="alpha")
    await memory.store("aqe/test/p/b1", 3, partition="beta")
    await memory.store("aqe/test/p/d1", 4)
    stats = await memory.get_stats()
    assert stats["partitions"] == {"alpha": 2, "beta": 1, "default": 1}


async def test_clear_partition_removes_only_that_partition(memory: Any) -> None:
    await memory.store_many({f"aqe/test/cp/a{i}": i for i in range(5)}, partition="alpha")
    await memory.store_many({f"aqe/test/cp/b{i}": i for i in range(3)}, partition="beta")
    assert await memory.clear_partition("alpha") == 5
    assert await memory.list_keys("aqe/test/cp/") == [f"aqe/test/cp/b{i}" for i in range(3)]
    assert await memory.clear_partition("alpha") == 0
    assert await memory.clear_partition("never-used") == 0
    assert (await memory.get_stats())["partitions"] == {"beta": 3}


async def test_clear_partition_counts_live_entries_only(memory: Any) -> None:
    await memory.store("aqe/test/cl/live", 1, partition="tmp")
    await memory.store("aqe/test/cl/dead", 1, partition="tmp", ttl=0.2)
    await asyncio.sleep(0.45)
    assert await memory.clear_partition("tmp") == 1
    assert (await memory.get_stats())["total_expired"] == 0


async def test_moving_an_entry_between_partitions(memory: Any) -> None:
    await memory.store("aqe/test/move", 1, partition="alpha")
    await memory.store("aqe/test/move", 2, partition="beta")
    assert (await memory.get_stats())["partitions"] == {"beta": 1}
    assert await memory.clear_partition("alpha") == 0
    assert await memory.retrieve("aqe/test/move") == 2


async def test_stats_shape_and_sizes(memory: Any) -> None:
    empty = await memory.get_stats()
    assert empty["total_keys"] == 0
    assert empty["size_bytes"] == 0
    for field in ("backend", "total_keys", "total_expired", "partitions", "size_bytes", "size_mb"):
        assert field in empty
    await memory.store("aqe/test/s1", "x" * 1000)
    await memory.store("aqe/test/s2", {"k": "v"})
    stats = await memory.get_stats()
    assert stats["total_keys"] == 2
    expected = len("aqe/test/s1") + 1002 + len("aqe/test/s2") + len('{"k":"v"}')
    assert stats["size_bytes"] == expected
    assert stats["size_mb"] == pytest.approx(expected / 1024 / 1024, abs=1e-6)


async def test_stats_size_follows_counters(memory: Any) -> None:
    await memory.increment("aqe/test/size-counter", 7)
    await memory.increment("aqe/test/size-counter", 1000)
    await memory.increment("aqe/test/size-counter", 0.5)
    assert (await memory.get_stats())["size_bytes"] == len("aqe/test/size-counter") + len("1007.5")


async def test_stats_size_counts_utf8_bytes(memory: Any) -> None:
    await memory.store("aqe/test/é", "ü")
    assert (await memory.get_stats())["size_bytes"] == len("aqe/test/é".encode()) + len(
        '"ü"'.encode()
    )


@pytest.mark.parametrize(
    "key",
    ["test/key", "", "AQE/x", "aqe", " aqe/x", "/aqe/x", "aqe\\x"],
)
async def test_namespace_enforced_everywhere(memory: Any, key: str) -> None:
    for call in (
        memory.store(key, 1),
        memory.retrieve(key),
        memory.get_entry(key),
        memory.exists(key),
        memory.ttl(key),
        memory.expire(key, 5),
        memory.delete(key),
        memory.increment(key),
        memory.store_many({key: 1}),
        memory.retrieve_many([key]),
    ):
        with pytest.raises(InvalidKeyError, match="must start with 'aqe/' namespace"):
            await call
    assert (await memory.get_stats())["total_keys"] == 0


async def test_namespace_error_is_a_value_error(memory: Any) -> None:
    with pytest.raises(ValueError, match="must start with 'aqe/' namespace"):
        await memory.store("outside", 1)


@pytest.mark.parametrize("partition", ["", "x" * 65, "bad\npartition", None, 7])
async def test_bad_partition(memory: Any, partition: Any) -> None:
    with pytest.raises(InvalidPartitionError):
        await memory.store("aqe/test/bp", 1, partition=partition)
    with pytest.raises(InvalidPartitionError):
        await memory.clear_partition(partition)
    assert await memory.exists("aqe/test/bp") is False


async def test_partition_of_64_chars_is_fine(memory: Any) -> None:
    name = "p" * 64
    await memory.store("aqe/test/long-partition", 1, partition=name)
    assert (await memory.get_stats())["partitions"] == {name: 1}
    assert await memory.clear_partition(name) == 1


async def test_cleanup_removes_only_expired(memory: Any) -> None:
    await memory.store_many({f"aqe/test/c/keep{i}": i for i in range(10)})
    await memory.store_many({f"aqe/test/c/drop{i}": i for i in range(25)}, ttl=0.2)
    await asyncio.sleep(0.45)
    removed = await memory.cleanup_expired()
    assert removed in (0, 25)  # Redis may have purged them itself
    assert await memory.list_keys("aqe/test/c/") == sorted(f"aqe/test/c/keep{i}" for i in range(10))
    stats = await memory.get_stats()
    assert stats["total_keys"] == 10 and stats["total_expired"] == 0
