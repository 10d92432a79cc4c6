"""Promise (a): after a write returns, no reader in any process gets the older value.

Each dangerous interleaving is forced deterministically through hold points (a reader held
between its database read and its fill; a writer held between its commit and its
invalidation) and run against ``CachedMemory`` and against naive caches. A naive cache that
falls into the trap is marked ``xfail(strict=True)``: the test must fail on it, so the suite
itself fails the day a scenario stops catching the bug it is about.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from test_cache_support import (
    KEY,
    Factory,
    NaiveCacheAside,
    NaiveInvalidateFirst,
    NaiveSingleFlight,
    VersionFencedCache,
    factory,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
__all__ = ["factory"]  # the fixture, imported so pytest finds it here

KINDS: dict[str, type[NaiveCacheAside]] = {
    "naive": NaiveCacheAside,
    "invalidate-first": NaiveInvalidateFirst,
    "version-fenced": VersionFencedCache,
    "naive-single-flight": NaiveSingleFlight,
}


def fails(kind: str, why: str) -> Any:
    return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=why))


def build(factory: Factory, kind: str, processes: int) -> tuple[Any, Any]:
    """A reader and a writer: one instance, or two acting as two processes."""

    def make() -> Any:
        return factory.cached() if kind == "cached" else factory.naive(KINDS[kind])

    reader = make()
    return reader, (make() if processes == 2 else reader)


async def reached(hold: Any) -> None:
    await asyncio.wait_for(hold.reached.wait(), 10)


@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "two-processes"])
@pytest.mark.parametrize(
    "kind",
    [
        "cached",
        fails("naive", "the slow reader fills the old value after the writer's DEL"),
        "version-fenced",  # the simple case is what a version fence does handle
    ],
)
async def test_slow_reader_cannot_fill_after_a_write_returned(
    factory: Factory, kind: str, processes: int
) -> None:
    reader, writer = build(factory, kind, processes)
    await writer.store(KEY, "old")
    hold = reader.hold_next_read()
    slow = asyncio.create_task(reader.retrieve(KEY))
    await reached(hold)  # the reader has read "old" from the database and not filled yet
    await writer.store(KEY, "new")  # committed and invalidated: the write has returned
    hold.release()  # now the slow reader tries to fill "old"
    assert await slow in ("old", "new")  # it was concurrent with the write: either is fine
    assert await reader.retrieve(KEY) == "new"
    assert await writer.retrieve(KEY) == "new"
    if kind == "cached":
        assert await factory.cached().retrieve(KEY) == "new"


@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "two-processes"])
@pytest.mark.parametrize(
    "kind",
    [
        "cached",
        fails("naive", "the slow reader resurrects the deleted value"),
        fails("version-fenced", "a slow reader's version 5 beats the version 1 after the delete"),
    ],
)
async def test_slow_reader_cannot_resurrect_across_delete_and_recreate(
    factory: Factory, kind: str, processes: int
) -> None:
    """Versions restart at 1 after a delete, so a version fence is no fence here."""
    reader, writer = build(factory, kind, processes)
    for generation in range(1, 6):
        assert await writer.store(KEY, f"generation-{generation}") == generation
    hold = reader.hold_next_read()
    slow = asyncio.create_task(reader.retrieve(KEY))
    await reached(hold)  # holds version 5
    assert await writer.delete(KEY) is True
    assert await writer.store(KEY, "reborn") == 1
    hold.release()
    await slow
    assert await reader.retrieve(KEY) == "reborn"
    assert await writer.retrieve(KEY) == "reborn"


@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "two-processes"])
@pytest.mark.parametrize(
    "kind",
    [
        "cached",
        "naive",  # committing first, then invalidating, is right for this interleaving
        fails("invalidate-first", "a reader refills the old value between DEL and commit"),
    ],
)
async def test_reader_between_the_writers_two_steps(
    factory: Factory, kind: str, processes: int
) -> None:
    reader, writer = build(factory, kind, processes)
    await writer.store(KEY, "old")
    assert await reader.retrieve(KEY) == "old"  # cached
    hold = writer.hold_next_write()
    write = asyncio.create_task(writer.store(KEY, "new"))
    await reached(hold)  # between the writer's two steps
    assert await reader.retrieve(KEY) in ("old", "new")  # concurrent with the write
    hold.release()
    await write
    assert await reader.retrieve(KEY) == "new"


@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "two-processes"])
async def test_fill_between_commit_and_invalidation_is_undone(
    factory: Factory, processes: int
) -> None:
    """Both hold points at once: the stale fill lands, and the writer's unlink removes it."""
    reader, writer = build(factory, "cached", processes)
    await writer.store(KEY, "old")
    read_hold = reader.hold_next_read()
    slow = asyncio.create_task(reader.retrieve(KEY))
    await reached(read_hold)  # read "old", lease held
    write_hold = writer.hold_next_write()
    write = asyncio.create_task(writer.store(KEY, "new"))
    await reached(write_hold)  # "new" committed, not invalidated
    read_hold.release()
    assert await slow == "old"  # filled: the lease was still valid, the write had not returned
    assert (await reader.get_stats())["cache_fills"] == 1
    write_hold.release()
    await write
    assert await reader.retrieve(KEY) == "new"


@pytest.mark.parametrize(
    "kind",
    ["cached", fails("naive-single-flight", "a late reader joins a load that began too early")],
)
async def test_single_flight_never_hands_out_a_load_older_than_the_call(
    factory: Factory, kind: str
) -> None:
    reader, writer = build(factory, kind, 2)
    await writer.store(KEY, "old")
    hold = reader.hold_next_read()
    first = asyncio.create_task(reader.retrieve(KEY))
    await reached(hold)  # a load of "old" is in flight in the reader's process
    await writer.store(KEY, "new")  # returned
    late = asyncio.create_task(reader.retrieve(KEY))  # begins after the write returned
    await asyncio.sleep(0.05)
    hold.release()
    assert await late == "new"
    await first


@pytest.mark.parametrize("method", ["get_entry", "exists", "ttl", "retrieve_many"])
async def test_every_cached_read_path_refuses_the_stale_fill(factory: Factory, method: str) -> None:
    reader, writer = build(factory, "cached", 2)
    await writer.store(KEY, "old", ttl=60)
    read = {
        "get_entry": lambda: reader.get_entry(KEY),
        "exists": lambda: reader.exists(KEY),
        "ttl": lambda: reader.ttl(KEY),
        "retrieve_many": lambda: reader.retrieve_many([KEY, "aqe/cache/other"]),
    }[method]
    hold = reader.hold_next_read()
    slow = asyncio.create_task(read())
    await reached(hold)
    await writer.delete(KEY)
    hold.release()
    await slow
    assert await reader.exists(KEY) is False
    assert await reader.retrieve_many([KEY]) == {}
    assert await reader.get_entry(KEY) is None


async def test_writes_of_every_kind_invalidate_other_processes(factory: Factory) -> None:
    reader, writer = build(factory, "cached", 2)

    async def prime(*keys: str) -> None:
        for key in keys:
            await reader.retrieve(key)
            await reader.retrieve(key)

    await writer.store_many({"aqe/cache/a": 1, "aqe/cache/b": 2}, partition="p")
    await prime("aqe/cache/a", "aqe/cache/b")
    await writer.store_many(iter([("aqe/cache/a", 10), ("aqe/cache/b", 20)]))
    assert await reader.retrieve_many(["aqe/cache/a", "aqe/cache/b"]) == {
        "aqe/cache/a": 10,
        "aqe/cache/b": 20,
    }
    await prime("aqe/cache/a")
    assert await writer.increment("aqe/cache/a", 5) == 15
    assert await reader.retrieve("aqe/cache/a") == 15
    await prime("aqe/cache/a")
    assert await writer.expire("aqe/cache/a", 30) is True
    remaining = await reader.ttl("aqe/cache/a")
    assert remaining is not None and 29 < remaining <= 30
    entry = await reader.get_entry("aqe/cache/a")
    assert entry is not None and entry.version == 4 and entry.expires_at is not None
    await prime("aqe/cache/a", "aqe/cache/missing")
    assert await reader.retrieve("aqe/cache/missing") is None  # a cached absence
    await writer.store("aqe/cache/missing", "now here", if_absent=True)
    assert await reader.retrieve("aqe/cache/missing") == "now here"
    stats = await reader.get_stats()
    assert stats["cache_hits"] > 0


async def test_clear_partition_disowns_cached_entries_of_the_partition(factory: Factory) -> None:
    reader, writer = build(factory, "cached", 2)
    await writer.store("aqe/cache/tmp/1", "x", partition="tmp")
    await writer.store("aqe/cache/keep", "y", partition="keep")
    for key in ("aqe/cache/tmp/1", "aqe/cache/keep"):
        await reader.retrieve(key)
    assert await writer.clear_partition("tmp") == 1
    assert await reader.retrieve("aqe/cache/tmp/1") is None
    assert await reader.exists("aqe/cache/tmp/1") is False
    assert await reader.retrieve("aqe/cache/keep") == "y"
    assert (await writer.get_stats())["cache_flushes"] == 1
    assert await writer.clear_partition("tmp") == 0
    assert (await writer.get_stats())["cache_flushes"] == 1, "nothing deleted, nothing flushed"


async def test_clear_partition_during_a_fill(factory: Factory) -> None:
    reader, writer = build(factory, "cached", 2)
    await writer.store("aqe/cache/tmp/2", "x", partition="tmp")
    hold = reader.hold_next_read()
    slow = asyncio.create_task(reader.retrieve("aqe/cache/tmp/2"))
    await reached(hold)
    assert await writer.clear_partition("tmp") == 1
    hold.release()
    await slow
    assert await reader.retrieve("aqe/cache/tmp/2") is None


async def test_random_interleavings_never_read_behind_a_returned_write(factory: Factory) -> None:
    """Linearizability check: a read started after write n returned sees n or later."""
    instances = [factory.cached() for _ in range(3)]
    writer = instances[0]
    await writer.store(KEY, 0)
    returned = 0
    stop = asyncio.Event()
    violations: list[tuple[int, Any]] = []
    rng = random.Random(7)

    async def write_loop() -> None:
        nonlocal returned
        for n in range(1, 121):
            await writer.store(KEY, n)
            returned = n
            await asyncio.sleep(rng.random() * 0.004)
        stop.set()

    async def read_loop(memory: Any) -> None:
        while not stop.is_set():
            floor = returned
            value = await memory.retrieve(KEY)
            if value < floor:
                violations.append((floor, value))
            await asyncio.sleep(rng.random() * 0.002)

    await asyncio.gather(write_loop(), *(read_loop(m) for m in instances for _ in range(4)))
    assert violations == []
    assert await instances[2].retrieve(KEY) == 120
    stats = [await memory.get_stats() for memory in instances]
    fills = sum(s["cache_fills"] for s in stats)
    hits = sum(s["cache_hits"] for s in stats)
    assert fills > 0 and hits > 0, "the cache was exercised, not bypassed"
