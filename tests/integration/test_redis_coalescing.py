"""RedisMemory: concurrent retrieves coalesce into one script call, each keeping its own value."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lionagi_qe.backends.redis import RedisMemory

pytestmark = [pytest.mark.integration, pytest.mark.redis]


async def test_concurrent_reads_get_their_own_values(redis_memory: RedisMemory) -> None:
    await redis_memory.store_many({f"aqe/reads/{i:03d}": {"n": i} for i in range(100)})
    await redis_memory.store("aqe/reads/short", "gone", ttl=0.05)
    await asyncio.sleep(0.1)
    keys = [f"aqe/reads/{i % 120:03d}" for i in range(300)] + ["aqe/reads/short"] * 5
    values = await asyncio.gather(*(redis_memory.retrieve(key, default="none") for key in keys))
    expected = [{"n": i % 120} if i % 120 < 100 else "none" for i in range(300)] + ["none"] * 5
    assert values == expected


async def test_concurrent_reads_share_round_trips(redis_memory: RedisMemory) -> None:
    await redis_memory.store_many({f"aqe/rt/{i:03d}": i for i in range(200)})
    calls: list[str] = []
    client: Any = redis_memory.client
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return await original(*args, **kwargs)

    client.execute_command = counting
    try:
        values = await asyncio.gather(
            *(redis_memory.retrieve(f"aqe/rt/{i:03d}") for i in range(200))
        )
    finally:
        client.execute_command = original
    assert values == list(range(200))
    assert len(calls) < 100, f"200 concurrent reads took {len(calls)} commands"


# -- plain stores ----------------------------------------------------------------------------


async def _counting_commands(memory: RedisMemory) -> tuple[list[str], Any]:
    calls: list[str] = []
    client: Any = memory.client
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return await original(*args, **kwargs)

    client.execute_command = counting
    return calls, original


async def test_concurrent_stores_share_round_trips_and_keep_their_versions(
    redis_memory: RedisMemory,
) -> None:
    await redis_memory.store_many({f"aqe/ws/{i:03d}": 0 for i in range(0, 200, 2)})
    calls, original = await _counting_commands(redis_memory)
    try:
        versions = await asyncio.gather(
            *(redis_memory.store(f"aqe/ws/{i:03d}", {"n": i}, partition="p") for i in range(200))
        )
    finally:
        redis_memory.client.execute_command = original  # type: ignore[method-assign]
    # Keys stored once before are at version 2, the others at 1: each call its own version.
    assert versions == [2 if i % 2 == 0 else 1 for i in range(200)]
    assert len(calls) < 100, f"200 concurrent stores took {len(calls)} commands"
    got = await redis_memory.retrieve_many([f"aqe/ws/{i:03d}" for i in range(200)])
    assert got == {f"aqe/ws/{i:03d}": {"n": i} for i in range(200)}
    entry = await redis_memory.get_entry("aqe/ws/007")
    assert entry is not None and entry.partition == "p" and entry.version == 1
    assert sorted(await redis_memory.list_keys("aqe/ws/")) == [
        f"aqe/ws/{i:03d}" for i in range(200)
    ]


async def test_concurrent_stores_of_one_key_apply_in_call_order(
    redis_memory: RedisMemory,
) -> None:
    # Start 300 calls at once, 100 of them to one key: they share batches, and within a batch
    # the duplicates must apply in the order the calls were made.
    calls = [
        redis_memory.store("aqe/dup/hot" if i % 3 == 0 else f"aqe/dup/{i}", i, ttl=None)
        for i in range(300)
    ]
    versions = await asyncio.gather(*calls)
    hot = [versions[i] for i in range(0, 300, 3)]
    assert sorted(hot) == list(range(1, 101)), "each call gets its own version"
    # The first calls run alone, on connections of their own, in whatever order Redis gets
    # them (as one command per call would); every call after them waited, and the batches
    # apply the waiting duplicates in the order the calls were made.
    in_flight = redis_memory.COALESCE_INFLIGHT
    waited = [versions[i] for i in range(0, 300, 3) if i >= in_flight]
    assert waited == sorted(waited), "duplicates in a batch did not apply in call order"
    last = max(range(0, 300, 3), key=lambda i: versions[i])
    assert await redis_memory.retrieve("aqe/dup/hot") == last
    entry = await redis_memory.get_entry("aqe/dup/hot")
    assert entry is not None and entry.version == 100


async def test_a_store_the_server_refuses_fails_alone(redis_memory: RedisMemory) -> None:
    """A key whose entry holds another Redis type (WRONGTYPE): only its own store fails."""
    from lionagi_qe.backends.redis_support import keyspace
    from lionagi_qe.errors import BackendUnavailableError

    space = keyspace(redis_memory.prefix)
    await redis_memory.client.set(space + "e:aqe/bad/poisoned", "not a hash")
    await redis_memory.client.set(space + "p:poisoned-partition", "not a set")
    keys = [f"aqe/bad/{i}" for i in range(60)]
    calls = [redis_memory.store(key, i) for i, key in enumerate(keys)]
    calls.insert(17, redis_memory.store("aqe/bad/poisoned", "x"))
    calls.insert(40, redis_memory.store("aqe/bad/other", "x", partition="poisoned-partition"))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [17, 40], outcomes
    assert all(isinstance(outcomes[i], BackendUnavailableError) for i in failed)
    assert "WRONGTYPE" in str(outcomes[17])
    assert [o for i, o in enumerate(outcomes) if i not in failed] == [1] * 60
    assert await redis_memory.retrieve_many(keys) == {key: i for i, key in enumerate(keys)}
    # The refused stores changed nothing.
    assert await redis_memory.client.get(space + "e:aqe/bad/poisoned") in (
        b"not a hash",
        "not a hash",
    )
    assert not await redis_memory.exists("aqe/bad/other")
