"""Promise (c): one database fill per hot key per expiry, across concurrent readers.

Database reads are counted through the test seam (every load of a fill goes through
``_load_from_database``). The first load is held until every reader has started, so the
readers are truly concurrent whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_cache_support import KEY, Factory, NaiveCacheAside, factory, until

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
__all__ = ["factory"]

VALUE = {"config": "shared", "threshold": 0.8}


def fails(kind: str, why: str) -> Any:
    return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=why))


async def stampede(memories: list[Any], readers_each: int) -> list[Any]:
    """Start ``readers_each`` readers per instance while the first load is held; return values."""
    holds = [memory.hold_next_read() for memory in memories]
    tasks = [
        asyncio.create_task(memory.retrieve(KEY))
        for memory in memories
        for _ in range(readers_each)
    ]
    first = asyncio.create_task(
        asyncio.wait(
            [asyncio.create_task(h.reached.wait()) for h in holds],
            return_when=asyncio.FIRST_COMPLETED,
        )
    )
    await asyncio.wait_for(first, 10)
    await asyncio.sleep(0.1)  # every other reader has looked the key up by now
    for hold in holds:
        hold.release()
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize(
    "kind", ["cached", fails("naive", "every reader of a cold key goes to the database")]
)
async def test_100_concurrent_readers_of_a_cold_key_cost_one_database_read(
    factory: Factory, kind: str
) -> None:
    memory = factory.cached() if kind == "cached" else factory.naive(NaiveCacheAside)
    await factory.cached().store(KEY, VALUE)
    assert await stampede([memory], 100) == [VALUE] * 100
    assert memory.database_reads == 1
    if kind == "cached":
        # In-process single-flight: each reader ran the lease lookup at most once (none if its
        # MGET came after the fill) and then awaited the holder's load in this process; nobody
        # polled Redis for the fill.
        assert memory.lookups <= 100
    assert await memory.retrieve(KEY) == VALUE
    assert memory.database_reads == 1


@pytest.mark.parametrize(
    "kind", ["cached", fails("naive", "each process's readers go to the database")]
)
async def test_two_processes_of_50_readers_cost_one_database_read(
    factory: Factory, kind: str
) -> None:
    def make() -> Any:
        # lock_wait well above the held load, so waiting readers never give up in this test.
        return factory.cached(lock_wait=5.0) if kind == "cached" else factory.naive()

    first, second = make(), make()
    await factory.cached().store(KEY, VALUE)
    assert await stampede([first, second], 50) == [VALUE] * 100
    assert first.database_reads + second.database_reads == 1


async def test_every_read_path_shares_the_one_load(factory: Factory) -> None:
    memory = factory.cached()
    await factory.cached().store(KEY, VALUE, ttl=60)
    hold = memory.hold_next_read()
    calls = [memory.retrieve, memory.get_entry, memory.exists, memory.ttl]
    tasks = [asyncio.create_task(call(KEY)) for call in calls * 10]
    await asyncio.wait_for(hold.reached.wait(), 10)
    await asyncio.sleep(0.05)
    hold.release()
    results = await asyncio.gather(*tasks)
    assert memory.database_reads == 1
    assert results[0] == VALUE and results[1].value == VALUE and results[2] is True
    assert 59 < results[3] <= 60


async def test_one_fill_per_expiry(factory: Factory) -> None:
    memory = factory.cached(cache_ttl=0.3)
    await factory.cached().store(KEY, VALUE)
    await asyncio.gather(*(memory.retrieve(KEY) for _ in range(50)))
    assert memory.database_reads == 1
    await asyncio.sleep(0.45)  # the cache record expired; the entry did not
    assert await stampede([memory], 50) == [VALUE] * 50
    assert memory.database_reads == 2
    assert (await memory.get_stats())["cache_fills"] == 2


async def test_a_vanished_lease_holder_costs_one_wait(factory: Factory) -> None:
    """A holder that never fills: another process waits lock_wait, then takes the lease over."""
    stuck, other = factory.cached(), factory.cached(lock_wait=0.2)
    await factory.cached().store(KEY, VALUE)
    hold = stuck.hold_next_read()
    held = asyncio.create_task(stuck.retrieve(KEY))
    await asyncio.wait_for(hold.reached.wait(), 10)
    started = time.monotonic()
    assert await other.retrieve(KEY) == VALUE
    waited = time.monotonic() - started
    assert 0.15 < waited < 1.5
    assert other.database_reads == 1
    assert (await other.get_stats())["cache_fills"] == 1, "the taker filled"
    reads = other.database_reads
    assert await other.retrieve(KEY) == VALUE
    assert other.database_reads == reads, "then it was a hit"
    hold.release()
    assert await held == VALUE
    assert (await stuck.get_stats())["cache_fills"] == 0, "the old holder's fill was refused"


async def test_waiters_survive_a_cancelled_lease_holder(factory: Factory) -> None:
    memory = factory.cached()
    await factory.cached().store(KEY, VALUE)
    hold = memory.hold_next_read()
    leader = asyncio.create_task(memory.retrieve(KEY))
    await asyncio.wait_for(hold.reached.wait(), 10)
    waiters = [asyncio.create_task(memory.retrieve(KEY)) for _ in range(10)]
    await asyncio.sleep(0.05)
    leader.cancel()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [VALUE] * 10
    with pytest.raises(asyncio.CancelledError):
        await leader
    await until(lambda: not memory._tier._flights)


async def test_database_errors_reach_every_waiter_as_the_database_raises_them(
    factory: Factory,
) -> None:
    from lionagi_qe import ClosedError

    memory = factory.cached()
    await factory.cached().store(KEY, VALUE)
    hold = memory.hold_next_read()
    leader = asyncio.create_task(memory.retrieve(KEY))
    await asyncio.wait_for(hold.reached.wait(), 10)
    waiter = asyncio.create_task(memory.retrieve(KEY))
    await asyncio.sleep(0.05)
    await memory.database.close()  # the source of truth goes away under the waiters
    hold.release()
    assert await leader == VALUE  # it had read already
    assert await waiter == VALUE  # it shared the leader's load
    with pytest.raises(ClosedError):
        await memory.retrieve("aqe/cache/cold")
