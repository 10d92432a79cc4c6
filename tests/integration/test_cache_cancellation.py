"""Cancellation and the order of writes under the cache (the store→retrieve bug of the storm).

Root cause: a store cancelled while its coalesced batch had already started returned at once,
while the batch went on (waiting for a pool connection). The caller's next store of the same key
could then commit first and the abandoned one after it, so a store returned and a read (from the
database, through the cache) served the older value. These tests pin the fix: a cancelled caller
whose request is already in a running batch is held until that batch has finished.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from lionagi_qe import CachedMemory
from lionagi_qe.backends.coalesce import Coalescer
from lionagi_qe.backends.sql import PostgresMemory

pytestmark = [pytest.mark.integration]

Write = tuple[str, str]


class Table:
    """A key-value table whose writes each wait on a gate the test opens (a slow connection)."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.applied: list[Write] = []
        self.gates: dict[Write, asyncio.Event] = {}

    def gate(self, write: Write) -> asyncio.Event:
        return self.gates.setdefault(write, asyncio.Event())

    async def one(self, write: Write) -> int:
        await self.gate(write).wait()
        self.rows[write[0]] = write[1]
        self.applied.append(write)
        return len(self.applied)

    async def many(self, writes: Sequence[Write]) -> list[int | BaseException]:
        return [await self.one(write) for write in writes]


async def _until(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds (Redis round trips may take a while)."""
    for attempt in range(5000):
        if condition():
            return
        await asyncio.sleep(0 if attempt < 100 else 0.002)
    raise AssertionError("condition never held")


async def test_cancelled_write_in_a_started_batch_is_applied_before_the_callers_next() -> None:
    table = Table()
    coalescer: Coalescer[Write, int] = Coalescer(table.one, table.many, max_inflight=2)
    fillers = [asyncio.create_task(coalescer.submit(("f", str(n)))) for n in range(2)]
    await _until(lambda: coalescer._inflight == 2)
    old, new = ("k", "old"), ("k", "new")
    cancelled_at_once: list[bool] = []

    async def caller() -> None:
        task = asyncio.create_task(coalescer.submit(old))
        await _until(lambda: old in [request for request, _ in coalescer._waiting])
        table.gate(("f", "0")).set()  # a slot frees: the batch holding `old` starts, and waits
        await _until(lambda: old in table.gates and coalescer._inflight == 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        cancelled_at_once.append(old not in table.applied)
        await coalescer.submit(new)  # the same caller goes on: its next store of the key

    going = asyncio.create_task(caller())
    await _until(lambda: old in table.gates)
    table.gate(("f", "1")).set()
    table.gate(new).set()
    for _ in range(50):  # let `new` overtake if it can
        await asyncio.sleep(0)
    table.gate(old).set()
    await asyncio.gather(going, *fillers)
    assert table.rows["k"] == "new", f"applied in order {table.applied}"
    assert cancelled_at_once == [False], "the cancelled call returned before its batch ended"


async def test_a_waiting_request_cancelled_before_its_batch_starts_is_dropped() -> None:
    table = Table()
    coalescer: Coalescer[Write, int] = Coalescer(table.one, table.many, max_inflight=1)
    filler = asyncio.create_task(coalescer.submit(("f", "0")))
    await _until(lambda: coalescer._inflight == 1)
    dropped = asyncio.create_task(coalescer.submit(("k", "dropped")))
    await _until(lambda: len(coalescer._waiting) == 1)
    dropped.cancel()
    await asyncio.gather(dropped, return_exceptions=True)  # returns without waiting on anything
    assert dropped.cancelled()
    table.gate(("f", "0")).set()
    await filler
    assert "k" not in table.rows and not coalescer._batches


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_cached_store_cancelled_while_batched_never_beats_the_next_store(
    aqe_database_url: str, aqe_redis_url: str
) -> None:
    """Many rounds of store→retrieve on one's own key, stores cancelled while batched."""
    from lionagi_qe.db.engine import create_engine

    engine = create_engine(aqe_database_url, pool_size=2, max_overflow=0, pool_timeout=20)
    cached = CachedMemory(
        PostgresMemory(engine), redis_url=aqe_redis_url, prefix=f"aqe-test:{uuid.uuid4().hex}:"
    )
    try:
        for round_ in range(40):
            keys = [f"aqe/cc/{n}" for n in range(12)]
            stores = [asyncio.create_task(cached.store(key, f"old{round_}")) for key in keys]
            # Cancel once a slot has freed: a batch of the waiting stores has just started.
            await asyncio.wait(stores, return_when=asyncio.FIRST_COMPLETED)
            for task in stores:
                task.cancel()
            await asyncio.gather(*stores, return_exceptions=True)
            for key in keys:
                await cached.store(key, f"new{round_}")
            got = await asyncio.gather(*(cached.retrieve(key) for key in keys))
            assert got == [f"new{round_}"] * len(keys), f"round {round_}: {got}"
    finally:
        await cached.close()
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.redis
async def test_a_reader_sharing_the_load_of_a_cancelled_lease_holder_is_not_left_waiting(
    aqe_database_url: str, aqe_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder cancelled just after its lookup took the lease must release its flight.

    Reader B of the same process meets A's lease and awaits A's load (single-flight); A is
    then cancelled before it starts loading. Without the release, B awaits forever.
    """
    from lionagi_qe.db.engine import create_engine

    engine = create_engine(aqe_database_url, pool_size=4, max_overflow=0)
    cached = CachedMemory(
        PostgresMemory(engine), redis_url=aqe_redis_url, prefix=f"aqe-test:{uuid.uuid4().hex}:"
    )
    try:
        key = "aqe/cc/flight"
        await cached.database.store(key, "value")
        tier = cached._tier
        lookup = tier._lookup
        leased = asyncio.Event()
        resume = asyncio.Event()

        async def lookup_then_cancelled(*args: Any) -> list[Any]:
            replies = await lookup(*args)
            if asyncio.current_task() is holder:
                leased.set()
                await resume.wait()
                raise asyncio.CancelledError  # the cancellation lands after the reply
            return replies

        monkeypatch.setattr(tier, "_lookup", lookup_then_cancelled)
        holder = asyncio.create_task(cached.retrieve(key))
        await leased.wait()
        sharer = asyncio.create_task(cached.retrieve(key))
        await _until(lambda: any(f._callbacks for f in tier._flights.values()))
        resume.set()
        await asyncio.gather(holder, return_exceptions=True)
        # Bounded only so that a hang fails here instead of at the global timeout.
        async with asyncio.timeout(10):
            assert await sharer == "value"
    finally:
        await cached.close()
        await engine.dispose()
