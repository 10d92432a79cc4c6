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
