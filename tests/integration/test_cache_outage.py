"""Promise (d): Redis down or hanging costs every call a bounded delay, and nothing stale is
served once Redis is back.

Every test runs its own ``redis-server`` on a free loopback port (never the shared one) and
stops it outright (SIGKILL), freezes it (SIGSTOP, then SIGCONT) or restarts it from its AOF
while calls continue. A frozen server with redis-py's defaults costs each call until the
server thaws (or a minute of TCP timeouts); here each call must finish within 2 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from test_cache_support import (
    KEY,
    Factory,
    NaiveCacheAside,
    cached_value,
    factory,
    private_redis,
    until,
)

from lionagi_qe.cache import BreakerState

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
__all__ = ["factory", "private_redis"]

BOUND = 2.0  # seconds any single call may take while Redis is down or frozen
OTHER = "aqe/cache/other"


def fails(kind: str, why: str) -> Any:
    return pytest.param(kind, marks=pytest.mark.xfail(strict=True, reason=why))


class Stopwatch:
    """Times every call; the slowest must stay under the bound."""

    def __init__(self) -> None:
        self.timings: list[tuple[float, str]] = []

    async def __call__(self, call: Awaitable[Any], label: str = "") -> Any:
        started = time.monotonic()
        try:
            return await call
        finally:
            self.timings.append((time.monotonic() - started, label))

    @property
    def slowest(self) -> tuple[float, str]:
        return max(self.timings)


async def exercise_everything(memory: Any, timed: Stopwatch, tag: str) -> None:
    """Every method of the contract, each timed, each checked against the database's answer."""
    assert await timed(memory.store(f"aqe/cache/{tag}/a", {"n": 1}, ttl=60), "store") == 1
    assert await timed(memory.retrieve(f"aqe/cache/{tag}/a"), "retrieve") == {"n": 1}
    entry = await timed(memory.get_entry(f"aqe/cache/{tag}/a"), "get_entry")
    assert entry is not None and entry.value == {"n": 1}
    assert await timed(memory.exists(f"aqe/cache/{tag}/a"), "exists") is True
    assert 59 < await timed(memory.ttl(f"aqe/cache/{tag}/a"), "ttl") <= 60
    items = {f"aqe/cache/{tag}/m{i}": i for i in range(5)}
    assert await timed(memory.store_many(items, partition=tag), "store_many") == 5
    assert await timed(memory.retrieve_many(list(items)), "retrieve_many") == items
    assert await timed(memory.increment(f"aqe/cache/{tag}/n", 2), "increment") == 2
    assert await timed(memory.expire(f"aqe/cache/{tag}/n", 60), "expire") is True
    assert await timed(memory.delete(f"aqe/cache/{tag}/n"), "delete") is True
    found = await timed(memory.search(f"aqe/cache/{tag}/m*"), "search")
    assert found == items
    assert await timed(memory.list_keys(f"aqe/cache/{tag}/m"), "list_keys") == sorted(items)
    assert await timed(memory.clear_partition(tag), "clear_partition") == 5
    assert (await timed(memory.get_stats(), "get_stats"))["total_keys"] > 0
    assert await timed(memory.cleanup_expired(), "cleanup_expired") >= 0


async def test_frozen_redis_costs_bounded_latency_and_nothing_stale_afterwards(
    factory: Factory, private_redis: Any
) -> None:
    server = private_redis()
    writer = factory.cached(redis_url=server.url, breaker_reset=0.3)
    reader = factory.cached(redis_url=server.url, breaker_reset=0.3)
    raw = factory.raw(server.url)
    await writer.store(KEY, "before")
    assert await reader.retrieve(KEY) == "before"  # cached in Redis
    assert await cached_value(raw, writer, KEY) == b'"before"'

    timed = Stopwatch()
    server.freeze()
    try:
        # The first write's invalidation times out: the writer's breaker trips at once.
        await timed(writer.store(OTHER, 1), "store (trips)")
        assert writer.breaker_state is not BreakerState.CLOSED
        # With the breaker open this write sends nothing to Redis: the "before" record stays.
        await timed(writer.store(KEY, "during"), "store (breaker open)")
        assert await timed(writer.retrieve(KEY)) == "during"
        # The reader's own lookups time out; it falls back to the database each time.
        assert await timed(reader.retrieve(KEY), "reader retrieve") == "during"
        reports = await asyncio.gather(
            *(timed(reader.retrieve(KEY), "concurrent") for _ in range(20)),
            *(timed(writer.get_entry(KEY), "concurrent") for _ in range(5)),
        )
        assert reports[:20] == ["during"] * 20
        await exercise_everything(writer, timed, "frozen-writer")
        await exercise_everything(reader, timed, "frozen-reader")
        assert reader.breaker_state is not BreakerState.CLOSED
        # Once open, the breaker keeps calls off the frozen server entirely.
        quick = Stopwatch()
        for _ in range(5):
            assert await quick(reader.retrieve(KEY)) == "during"
        assert quick.slowest[0] < 0.5, quick.slowest
    finally:
        server.thaw()
    assert timed.slowest[0] < BOUND, timed.slowest

    # Redis is back, still holding the pre-outage value the breaker-open write could not touch.
    assert await cached_value(raw, writer, KEY) == b'"before"'
    await until(lambda: writer.breaker_state is BreakerState.CLOSED, within=5)
    await until(lambda: reader.breaker_state is BreakerState.CLOSED, within=5)
    late = factory.cached(redis_url=server.url)  # a process that never saw the outage
    for memory in (writer, reader, late):
        for _ in range(3):
            assert await memory.retrieve(KEY) == "during"
    stats = await late.get_stats()
    assert stats["cache_hits"] >= 2 and stats["cache_fills"] <= 1, "the cache works again"
    assert (await writer.get_stats())["cache_flushes"] >= 1


@pytest.mark.parametrize(
    "kind",
    ["cached", fails("naive", "the record kept in the AOF is served after the restart")],
)
async def test_killed_redis_restarted_from_its_aof_serves_nothing_stale(
    factory: Factory, private_redis: Any, kind: str
) -> None:
    server = private_redis(appendonly=True)

    def make() -> Any:
        if kind == "cached":
            return factory.cached(redis_url=server.url, breaker_reset=0.3)
        return factory.naive(NaiveCacheAside, redis_url=server.url)

    writer, reader = make(), make()
    await writer.store(KEY, "before")
    assert await reader.retrieve(KEY) == "before"  # cached, and fsynced to the AOF

    timed = Stopwatch()
    server.kill()
    assert await timed(writer.store(KEY, "during")) in (1, 2)
    assert await timed(writer.retrieve(KEY)) == "during"
    assert await timed(reader.retrieve(KEY)) == "during"
    if kind == "cached":
        await exercise_everything(writer, timed, "killed")
        assert writer.breaker_state is not BreakerState.CLOSED
    assert timed.slowest[0] < BOUND, timed.slowest

    server.start()  # same port, same directory: the AOF brings the old records back
    if kind == "cached":
        await until(lambda: writer.breaker_state is BreakerState.CLOSED, within=5)
    late = make()
    for memory in (writer, reader, late):
        for _ in range(3):
            assert await memory.retrieve(KEY) == "during"


@pytest.mark.parametrize(
    "kind",
    ["cached", fails("naive", "redis-py's defaults wait for the frozen server")],
)
async def test_each_call_is_bounded_while_frozen(
    factory: Factory, private_redis: Any, kind: str
) -> None:
    server = private_redis()
    if kind == "cached":
        memory: Any = factory.cached(redis_url=server.url)
    else:
        defaults = {"socket_timeout": None, "socket_connect_timeout": None}
        memory = factory.naive(NaiveCacheAside, redis_url=server.url, client_options=defaults)
    await memory.store(KEY, "v")
    assert await memory.retrieve(KEY) == "v"
    server.freeze()
    thaw = asyncio.get_running_loop().call_later(4, server.thaw)  # a naive cache waits this long
    timed = Stopwatch()
    try:
        for _ in range(5):
            assert await timed(memory.retrieve(KEY)) == "v"
        await timed(memory.store(KEY, "w"))
        assert await timed(memory.retrieve(KEY)) == "w"
    finally:
        thaw.cancel()
        server.thaw()
    assert timed.slowest[0] < BOUND, timed.slowest


async def test_restart_without_persistence_heals_through_the_one_retry(
    factory: Factory, private_redis: Any
) -> None:
    """Pooled connections die with the server; the one retry on a broken connection covers it."""
    server = private_redis()
    memory = factory.cached(redis_url=server.url)
    await memory.store(KEY, "v")
    assert await memory.retrieve(KEY) == "v"
    server.kill()
    server.start()
    assert await memory.retrieve(KEY) == "v"
    assert await memory.retrieve(KEY) == "v"
    stats = await memory.get_stats()
    assert stats["cache_errors"] == 0
    assert stats["breaker_state"] == "closed"


@pytest.mark.parametrize(
    "kind",
    ["cached", fails("naive", "the snapshot brings back a value whose DEL it never saw")],
)
async def test_restart_from_an_older_snapshot_is_detected(
    factory: Factory, private_redis: Any, kind: str
) -> None:
    """A confirmed invalidation lost by a restart: only the server's new identity tells."""
    server = private_redis()

    def make() -> Any:
        if kind == "cached":
            return factory.cached(redis_url=server.url)
        return factory.naive(NaiveCacheAside, redis_url=server.url)

    writer, reader = make(), make()
    raw = factory.raw(server.url)
    await writer.store(KEY, "before")
    assert await reader.retrieve(KEY) == "before"
    await raw.save()  # the snapshot holds the cached "before"
    await writer.store(KEY, "after")  # committed; its invalidation confirmed by Redis
    assert await reader.retrieve(KEY) == "after"
    server.kill()
    server.start()  # back from the snapshot: the record of "before" is there again
    record = reader._tier.record(KEY) if kind == "cached" else reader.record(KEY)
    assert await factory.raw(server.url).exists(record)
    for memory in (reader, writer, make()):
        assert await memory.retrieve(KEY) == "after"
    if kind == "cached":
        stats = await reader.get_stats()
        assert stats["cache_flushes"] >= 1 or (await writer.get_stats())["cache_flushes"] >= 1
        assert stats["breaker_state"] == "closed", "the one retry hid the restart from the breaker"


async def test_redis_never_reachable(factory: Factory, private_redis: Any) -> None:
    server = private_redis()
    url = server.url
    server.kill()  # nothing listens on the port any more
    memory = factory.cached(redis_url=url)
    timed = Stopwatch()
    await exercise_everything(memory, timed, "unreachable")
    assert timed.slowest[0] < BOUND, timed.slowest
    stats = await memory.get_stats()
    assert stats["breaker_state"] in ("open", "half_open")
    assert stats["cache_errors"] >= 1  # the first write could not invalidate: tripped at once
    assert stats["cache_bypassed"] > 0
    await memory.close()


async def test_every_redis_key_starts_with_the_prefix(factory: Factory, private_redis: Any) -> None:
    server = private_redis()
    memory = factory.cached(redis_url=server.url)
    timed = Stopwatch()
    await exercise_everything(memory, timed, "prefix")
    await memory.retrieve("aqe/cache/never-written")
    await memory.flush_cache()
    raw = factory.raw(server.url)
    keys = await raw.keys("*")  # a private server: nothing else lives here
    assert keys
    assert all(key.startswith(memory.prefix.encode()) for key in keys), keys
    assert {await raw.type(key) for key in keys} == {b"string"}
