"""One benchmark run: every chosen backend, in one process, against the same servers.

:func:`run_bench` sets each backend up in a place of its own (a throwaway PostgreSQL database,
a temporary SQLite file, Redis key prefixes of the run's own), runs its sections beside their raw
twins, tears everything down (also when interrupted) and returns the report: one JSON-ready
document with ``config``, ``environment``, ``results``, ``targets`` and ``seed``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import asyncpg
import redis
import redis.asyncio as aredis
import sqlalchemy

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.bench.harness import BenchInterrupted, Harness, summarize
from lionagi_qe.bench.learning import RETENTION, LearningBench
from lionagi_qe.bench.memory import PER_PREFIX, MemoryBench, Sizes
from lionagi_qe.bench.queue import QueueBench
from lionagi_qe.bench.raw import RawCached, RawPostgres, RawRedis, RawSqlite
from lionagi_qe.bench.report import seed_rows, targets
from lionagi_qe.bench.servers import (
    asyncpg_kwargs,
    delete_prefix,
    postgres_database,
    run_id,
    sqlite_database,
)
from lionagi_qe.cache import CachedMemory
from lionagi_qe.config import mask_url
from lionagi_qe.coordination import WorkQueue
from lionagi_qe.db import migrate
from lionagi_qe.learning.db_manager import DatabaseManager

__all__ = [
    "BACKENDS",
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_URL",
    "BenchInterrupted",
    "BenchOptions",
    "run_bench",
]

BACKENDS = ("postgres", "sqlite", "redis", "cached")
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
POOL_SIZE = 10


@dataclass(frozen=True)
class BenchOptions:
    """What to run and how much (defaults: the full §10 run)."""

    backends: tuple[str, ...] = BACKENDS
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    ops: int = 2000
    repeats: int = 5
    store_size: int = 100_000
    batch: int = 10_000
    tasks: int = 50
    smoke: bool = False

    @classmethod
    def smoke_run(cls, **overrides: Any) -> BenchOptions:
        """A few operations at tiny sizes: checks the machinery in seconds, measures nothing."""
        base = cls(ops=20, repeats=1, store_size=500, batch=200, tasks=10, smoke=True)
        return replace(base, **overrides)

    def check(self) -> None:
        """Raise ValueError on options that cannot run."""
        unknown = sorted(set(self.backends) - set(BACKENDS))
        if unknown or not self.backends:
            raise ValueError(f"--backend must be among {', '.join(BACKENDS)}, got {unknown}")
        if self.ops < 1 or self.repeats < 1 or self.batch < 1 or self.tasks < 1:
            raise ValueError("--ops, --repeat, batch and tasks must be at least 1")
        if self.store_size < 8 * PER_PREFIX or self.store_size % PER_PREFIX:
            raise ValueError(
                f"--size must be a multiple of {PER_PREFIX}, at least {8 * PER_PREFIX}"
            )

    @property
    def sizes(self) -> Sizes:
        """The per-section amounts of work."""
        return Sizes(self.ops, self.repeats, self.store_size, self.batch, self.tasks)


@dataclass
class _Run:
    h: Harness
    options: BenchOptions
    run: str
    environment: dict[str, Any]


@contextlib.asynccontextmanager
async def _asyncpg(url: sqlalchemy.URL) -> AsyncIterator[tuple[Any, Any]]:
    conn = await asyncpg.connect(**asyncpg_kwargs(url))
    try:
        pool = await asyncpg.create_pool(
            **asyncpg_kwargs(url), min_size=POOL_SIZE, max_size=POOL_SIZE
        )
        try:
            yield conn, pool
        finally:
            await pool.close()
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _redis_clients(url: str) -> AsyncIterator[tuple[aredis.Redis, aredis.Redis]]:
    """One client for sequential calls, one on a blocking pool of 10 for concurrent ones."""
    conn = aredis.Redis.from_url(url)
    pool = aredis.Redis(
        connection_pool=aredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE)
    )
    try:
        yield conn, pool
    finally:
        await conn.aclose()
        await pool.aclose()


async def _postgres(r: _Run) -> None:
    # Each phase closes its pools before the next opens its own: a shared server has a
    # connection limit, and a run should hold at most about 21 connections at a time.
    sizes = r.options.sizes
    async with (
        postgres_database(r.options.database_url, r.run) as url,
        _asyncpg(url) as (conn, pool),
    ):
        dsn = url.render_as_string(hide_password=False)
        r.environment["postgresql"] = await conn.fetchval("SHOW server_version")
        memory = PostgresMemory(dsn, pool_size=POOL_SIZE)
        try:
            assert memory.engine is not None
            await migrate.upgrade(memory.engine)
            raw, raw_pool = RawPostgres(conn), RawPostgres(pool)
            await MemoryBench(r.h, "postgres", memory, raw, raw_pool, sizes).run()
        finally:
            await memory.close()

        manager = DatabaseManager(
            dsn,
            min_connections=POOL_SIZE,
            max_connections=POOL_SIZE,
            q_value_retention=RETENTION,
        )
        try:
            await manager.connect()
            await LearningBench(r.h, manager, conn, pool, sizes).run()
        finally:
            await manager.close()

        queue = WorkQueue(dsn, f"bench-ours-{r.run}")
        try:
            await QueueBench(r.h, queue, f"bench-raw-{r.run}", conn, pool, sizes).run()
        finally:
            await queue.close()


async def _sqlite(r: _Run) -> None:
    async with sqlite_database(r.run) as path, contextlib.AsyncExitStack() as stack:
        memory = PostgresMemory(f"sqlite+aiosqlite:///{path}", pool_size=POOL_SIZE)
        stack.push_async_callback(memory.close)
        assert memory.engine is not None
        await migrate.upgrade(memory.engine)
        raw = await RawSqlite.connect(str(path))
        stack.push_async_callback(raw.close)
        # One aiosqlite connection serves the concurrent tasks too: what a raw user would share.
        await MemoryBench(r.h, "sqlite", memory, raw, raw, r.options.sizes).run()


async def _redis(r: _Run) -> None:
    url = r.options.redis_url
    ours_prefix, raw_prefix = f"aqe-bench:{r.run}:", f"aqe-bench-raw:{r.run}:"
    async with _redis_clients(url) as (conn, pool):
        memory = RedisMemory(url=url, prefix=ours_prefix, max_connections=POOL_SIZE)
        try:
            r.environment["redis"] = (await conn.info("server"))["redis_version"]
            bench = MemoryBench(
                r.h,
                "redis",
                memory,
                RawRedis(conn, raw_prefix),
                RawRedis(pool, raw_prefix),
                r.options.sizes,
            )
            await bench.run()
        finally:
            await memory.close()
            for prefix in (ours_prefix, raw_prefix):
                await delete_prefix(conn, prefix)


async def _cached(r: _Run) -> None:
    sizes = r.options.sizes
    ours_prefix, raw_prefix = f"aqe-bench-cache:{r.run}:", f"aqe-bench-cache-raw:{r.run}:"
    async with (
        postgres_database(r.options.database_url, f"{r.run}_cached") as url,
        _redis_clients(r.options.redis_url) as (rconn, rpool),
        contextlib.AsyncExitStack() as stack,
    ):
        dsn = url.render_as_string(hide_password=False)
        database = PostgresMemory(dsn, pool_size=POOL_SIZE)
        assert database.engine is not None
        await migrate.upgrade(database.engine)
        cached = CachedMemory(database, redis_url=r.options.redis_url, prefix=ours_prefix)
        stack.push_async_callback(delete_prefix, rconn, raw_prefix)
        stack.push_async_callback(delete_prefix, rconn, ours_prefix)
        stack.push_async_callback(cached.close)  # closes the database too
        conn, pool = await stack.enter_async_context(_asyncpg(url))
        raw = RawCached(RawPostgres(conn), rconn, raw_prefix)
        raw_concurrent = RawCached(RawPostgres(pool), rpool, raw_prefix)
        await MemoryBench(r.h, "cached", cached, raw, raw_concurrent, sizes, cached=True).run()
        stats = await cached.get_stats()
        r.environment["cache_stats"] = {k: v for k, v in stats.items() if "cache" in k}


_RUNNERS = {"postgres": _postgres, "sqlite": _sqlite, "redis": _redis, "cached": _cached}


async def run_bench(
    options: BenchOptions, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every chosen backend's sections; the report (see the module docstring)."""
    options.check()
    h = Harness(options.repeats, log) if log is not None else Harness(options.repeats)
    r = _Run(
        h,
        options,
        run_id(),
        {
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "asyncpg": asyncpg.__version__,
            "redis_py": redis.__version__,
            "cpus": os.cpu_count(),
        },
    )
    h.log(f"run {r.run}")

    # What a long-running service does after start-up: move the objects of every imported
    # module out of the collector's reach, so a full collection costs milliseconds, not the
    # tens of milliseconds of walking SQLAlchemy, pydantic and asyncpg (both sides alike).
    gc.collect()
    gc.freeze()
    r.environment["gc_frozen_objects"] = gc.get_freeze_count()

    async def every_backend() -> None:
        async with h.ticking():
            for backend in options.backends:
                h.check()
                await _RUNNERS[backend](r)

    try:
        await h.guarded(every_backend())
    finally:
        gc.unfreeze()
    results = [summarize(section) for section in h.sections]
    config = asdict(options)
    config["run_id"] = r.run
    config["backends"] = list(options.backends)
    config["database_url"] = mask_url(options.database_url)
    config["redis_url"] = mask_url(options.redis_url)
    return {
        "config": config,
        "environment": r.environment,
        "results": results,
        "targets": [] if options.smoke else targets(results, options.store_size),
        "seed": seed_rows(results),
    }
