"""Soak: a bounded run of mixed load on every backend while Redis faults come and go.

For ``SOAK_SECONDS`` seconds, workers hammer a PostgresMemory (the direct path and its
coalescing), a RedisMemory and a CachedMemory (both behind a fault proxy that cycles through
freeze, reset-mid-reply, slow and refused connections) and check every answer. Samples taken in
windows show whether anything drifts: pooled connections checked out beyond the one a memory
keeps, live Python objects, server sessions, and PostgreSQL latency.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_cache_support import factory, private_redis
from test_fault_redis import TIMEOUT, apply, proxied, proxy_url

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.errors import BackendUnavailableError
from lionagi_qe.testing.faults import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
__all__ = ["factory", "private_redis", "proxied"]

SOAK_SECONDS = 36.0
WINDOWS = 6
WORKERS = 12
FAULTS = ["freeze", "reset", "slow", "refuse"]


class Samples:
    """What one window of the run saw."""

    def __init__(self) -> None:
        self.pg_latencies: list[float] = []
        self.calls = 0
        self.unavailable = 0


async def test_mixed_load_with_faults_does_not_drift(
    aqe_engine: AsyncEngine, factory: Any, proxied: tuple[Any, FaultProxy]
) -> None:
    _, proxy = proxied
    url = proxy_url(proxy)
    sql = PostgresMemory(aqe_engine)
    redis = RedisMemory(
        url=url,
        prefix="soak:",
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        pool_timeout=5.0,
    )
    cached = factory.cached(redis_url=url, breaker_reset=0.3)
    windows = [Samples() for _ in range(WINDOWS)]
    started = time.monotonic()
    stop = asyncio.Event()
    problems: list[str] = []

    def window() -> Samples:
        index = int((time.monotonic() - started) / (SOAK_SECONDS / WINDOWS))
        return windows[min(index, WINDOWS - 1)]

    async def worker(number: int) -> None:
        rng = random.Random(number)
        acked: dict[str, dict[str, Any]] = {"sql": {}, "redis": {}, "cached": {}}
        counters = {"sql": 0, "cached": 0}
        stores = {"sql": sql, "redis": redis, "cached": cached}
        round_ = 0
        while not stop.is_set():
            round_ += 1
            name = rng.choice(list(stores))
            memory: Any = stores[name]
            key = f"aqe/soak/{name}/{number}/{rng.randrange(8)}"
            samples = window()
            samples.calls += 1
            begin = time.perf_counter()
            try:
                choice = rng.random()
                if choice < 0.4:
                    value = {"w": number, "r": round_}
                    acked[name].pop(key, None)  # ambiguous until acknowledged
                    await memory.store(key, value, ttl=60)
                    acked[name][key] = value
                elif choice < 0.8:
                    found = await memory.retrieve(key)
                    if key in acked[name] and found != acked[name][key]:
                        problems.append(f"{name} {key}: {found!r} != {acked[name][key]!r}")
                elif name in counters:
                    total = await memory.increment(f"aqe/soak/{name}/{number}/counter", 1)
                    if total <= counters[name]:
                        problems.append(f"{name} counter went from {counters[name]} to {total}")
                    counters[name] = total
                else:
                    await memory.search(f"aqe/soak/{name}/{number}/*")
            except BackendUnavailableError:
                samples.unavailable += 1
                if name == "sql":
                    problems.append("PostgreSQL call failed while it was healthy")
            else:
                if name == "sql":
                    samples.pg_latencies.append(time.perf_counter() - begin)
            await asyncio.sleep(0)

    async def faults() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            await asyncio.sleep(1.5)
            fault = rng.choice(FAULTS)
            apply(proxy, fault)
            await asyncio.sleep(0.6)
            proxy.pass_through()

    async def sample(into: list[tuple[int, int, int]]) -> None:
        while not stop.is_set():
            await asyncio.sleep(SOAK_SECONDS / WINDOWS)
            gc.collect()
            checked_out = aqe_engine.pool.checkedout()
            async with aqe_engine.connect() as conn:
                sessions = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            into.append((len(gc.get_objects()), checked_out, int(sessions or 0)))

    points: list[tuple[int, int, int]] = []
    tasks = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
    helpers = [asyncio.create_task(faults()), asyncio.create_task(sample(points))]
    try:
        await asyncio.sleep(SOAK_SECONDS)
    finally:
        stop.set()
        proxy.pass_through()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                problems.append(f"worker died: {task.exception()!r}")
        await redis.close()
        await sql.close()
        await cached.close()

    assert problems == [], problems[:10]
    assert all(w.calls > 50 for w in windows), [w.calls for w in windows]
    assert sum(w.unavailable for w in windows) > 0, "the faults never reached the calls"
    assert len(points) >= WINDOWS - 1, points
    objects = [p[0] for p in points]
    # After the first window (caches and pools filled) the heap stays flat.
    assert max(objects[1:]) - objects[1] < 25_000, objects
    # In flight under load, never beyond the pool; back to none once the memories are closed.
    pool_limit = aqe_engine.pool.size() + aqe_engine.pool.overflow() + 10
    assert all(p[1] <= pool_limit for p in points), points
    assert max(p[2] for p in points) <= 40, f"server sessions grew: {points}"
    first = statistics.median(windows[1].pg_latencies)
    last = statistics.median(windows[-1].pg_latencies)
    assert last < 5 * first + 0.005, (first, last)
    assert aqe_engine.pool.checkedout() == 0, "a connection leaked"
    print(
        f"soak: calls per window {[w.calls for w in windows]}, unavailable "
        f"{[w.unavailable for w in windows]}, samples {points}, pg p50 {first:.4f}->{last:.4f}"
    )
