"""CachedMemory beside raw redis.asyncio (cache hits) and beside PostgresMemory (misses, writes).

Usage::

    python benchmarks/bench_cache.py [--database-url URL] [--redis-url URL] [--ops N]
                                     [--repeats R] [--json]

Same method as ``bench_sql.py`` (the measurement code is ``harness.py``'s): each operation is
interleaved call by call with its twin, the order flipping every repetition, in one process and
one run; a 1 ms ticker charges event-loop stalls to the side whose calls overlapped them.

- ``retrieve (hit)``: ``CachedMemory.retrieve`` of a cached key beside a raw ``GET`` of the same
  JSON text plus ``json.loads`` (SPEC §10: within 1.3x).
- ``retrieve_many 10 (hits)``: ten cached keys beside a raw ``MGET`` of ten.
- ``retrieve x50 tasks (hits)``: fifty concurrent tasks of hits beside fifty of raw ``GET``.
- ``retrieve (miss + fill)``: a key in the database that the cache has never seen (lookup and
  lease, one database read, the fill) beside ``PostgresMemory.retrieve`` of such a key.
- ``store (+ invalidate)``: ``CachedMemory.store`` beside ``PostgresMemory.store``.

Redis keys are written under a prefix of the run's own and deleted by that prefix afterwards
(never ``FLUSHDB``); database keys under ``aqe/bench/cache/``. ``--private-redis`` runs both
sides against a throwaway ``redis-server`` on a free loopback port instead: a Redis shared with
other work can stall for a second on someone else's script, which trips the cache's breaker (as
it should) and spoils the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis
import redis.asyncio as aioredis
import sqlalchemy
from harness import (
    CALLS,
    NAME,
    RATIO_MEAN,
    RATIO_P50,
    SIDES,
    TASKS,
    Column,
    Harness,
    Op,
    Side,
    busy_stall,
    check_sizes,
    comparison_table,
    config,
    delete_prefix,
    emit,
    environment,
    make_parser,
    open_database,
    stall_target,
    targets_table,
    value,
    verdicts,
)
from rich.console import Console

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.db import migrate

PREFIX = "aqe/bench/cache/"
CLEANUP_SQL = "DELETE FROM qe_memory WHERE key >= 'aqe/bench/cache/' AND key < 'aqe/bench/cache0'"
HOT_KEYS = 50
BATCH = 10


@dataclass
class CacheBench:
    """Both sides' handles and the run's parameters."""

    cached: CachedMemory
    database: PostgresMemory
    raw: aioredis.Redis
    raw_prefix: str
    ops: int
    h: Harness

    # the raw twins

    async def raw_get(self, i: int) -> Any:
        text = await self.raw.get(f"{self.raw_prefix}{i % HOT_KEYS}")
        return None if text is None else json.loads(text)

    async def raw_mget(self, i: int) -> dict[str, Any]:
        keys = [f"{self.raw_prefix}{(i + j) % HOT_KEYS}" for j in range(BATCH)]
        texts = await self.raw.mget(keys)
        return {k: json.loads(t) for k, t in zip(keys, texts, strict=True) if t is not None}

    # sections

    async def set_up(self) -> None:
        """Hot keys in the database, in the cache and as raw JSON; cold keys for the misses."""
        self.h.log.log("set-up")
        hot = {f"{PREFIX}hot/{i}": value(i) for i in range(HOT_KEYS)}
        await self.cached.store_many(hot)
        async with self.raw.pipeline(transaction=False) as pipe:
            for i in range(HOT_KEYS):
                pipe.set(f"{self.raw_prefix}{i}", json.dumps(value(i), separators=(",", ":")))
            await pipe.execute()
        for _ in range(20):
            for key in hot:
                await self.cached.retrieve(key)
                await self.raw_get(0)
        cold = self.ops * self.h.repeats
        for side in SIDES:
            for start in range(0, cold, 10_000):
                batch = range(start, min(cold, start + 10_000))
                await self.database.store_many(
                    {f"{PREFIX}cold/{side}/{i}": value(i) for i in batch}
                )
        for i in range(self.ops):
            await self.cached.store(f"{PREFIX}store/ours/{i}", value(i))
            await self.database.store(f"{PREFIX}store/raw/{i}", value(i))

    async def interleave(self, name: str, ours: Op, raw: Op, calls: int | None = None) -> None:
        """``calls`` (default ``ops``) per repetition, interleaved; indices run on across reps."""
        section = self.h.open(name)
        await self.h.interleave(section, calls or self.ops, ours, raw, running_index=True)

    async def hits(self) -> None:
        cached = self.cached
        await self.interleave(
            "retrieve (hit)", lambda i: cached.retrieve(f"{PREFIX}hot/{i % HOT_KEYS}"), self.raw_get
        )
        await self.interleave(
            f"retrieve_many {BATCH} (hits)",
            lambda i: cached.retrieve_many(
                [f"{PREFIX}hot/{(i + j) % HOT_KEYS}" for j in range(BATCH)]
            ),
            self.raw_mget,
            calls=max(1, self.ops // 4),
        )

    async def concurrent_hits(self) -> None:
        per_task = max(1, self.ops // TASKS)
        section = self.h.open(f"retrieve x{TASKS} tasks (hits)", concurrent=True)

        def call(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            i = task * per_task + j
            if side == "ours":
                return self.cached.retrieve(f"{PREFIX}hot/{i % HOT_KEYS}")
            return self.raw_get(i)

        await self.h.blocks(section, per_task, call)

    async def misses_and_stores(self) -> None:
        cached, database = self.cached, self.database
        await self.interleave(
            "retrieve (miss + fill)",
            lambda i: cached.retrieve(f"{PREFIX}cold/ours/{i}"),
            lambda i: database.retrieve(f"{PREFIX}cold/raw/{i}"),
        )
        values = [value(i) for i in range(self.ops)]
        await self.interleave(
            "store (+ invalidate)",
            lambda i: cached.store(f"{PREFIX}store/ours/{i % self.ops}", values[i % self.ops]),
            lambda i: database.store(f"{PREFIX}store/raw/{i % self.ops}", values[i % self.ops]),
        )

    async def run(self) -> list[dict[str, Any]]:
        await self.set_up()
        await self.hits()
        await self.concurrent_hits()
        await self.misses_and_stores()
        return self.h.summaries()


TWINS = {
    "retrieve (hit)": "raw GET + json.loads",
    f"retrieve_many {BATCH} (hits)": f"raw MGET of {BATCH}",
    f"retrieve x{TASKS} tasks (hits)": f"raw GET, {TASKS} tasks",
    "retrieve (miss + fill)": "PostgresMemory.retrieve",
    "store (+ invalidate)": "PostgresMemory.store",
}


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The §10 targets that concern the cache, measured."""
    by_name = {r["name"]: r for r in results}
    hit = by_name["retrieve (hit)"]
    rows = [
        ("cache hit ≤ 1.3x raw GET (mean)", hit["ratio_mean"], "x", hit["ratio_mean"] <= 1.3),
        ("cache hit ≤ 1.3x raw GET (p50)", hit["ratio_p50"], "x", hit["ratio_p50"] <= 1.3),
        stall_target(results, show_wall=False),
    ]
    return verdicts(rows)


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the results and the targets."""
    env = report["environment"]
    console.print(
        f"Redis {env['redis_version']} · Python {env['python']} · redis-py {env['redis_py']} · "
        f"SQLAlchemy {env['sqlalchemy']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    twin = Column("twin", lambda r: TWINS[r["name"]], "left", no_wrap=True)
    table = comparison_table(
        "CachedMemory vs its twin (interleaved, same run)",
        report["operations"],
        leading=(NAME, twin, replace(CALLS, no_wrap=True)),
        rate_label="ops/s",
        trailing=(RATIO_P50, RATIO_MEAN, busy_stall("busy stall ms")),
    )
    console.print(table)
    console.print(targets_table("§10 targets (cache)", report["targets"]))
    console.print(f"cache statistics after the run: {report['cache_stats']}")
    if report["cache_stats"]["cache_errors"]:
        console.print(
            "[red]Redis calls failed during the run (the breaker bypassed the cache for a while);"
            " the figures are not clean. Try --private-redis.[/]"
        )


@contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--private-redis needs the redis-server binary")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", directory]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            probe = redis.Redis(port=port, socket_timeout=0.5)
            for _ in range(200):
                try:
                    if probe.ping():
                        break
                except redis.ConnectionError:
                    time.sleep(0.02)
            probe.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    url = await open_database(args.database_url)
    database = PostgresMemory(url.render_as_string(hide_password=False), pool_size=10)
    assert database.engine is not None
    await migrate.upgrade(database.engine)
    run_prefix = f"aqe-bench-cache:{uuid.uuid4().hex[:8]}:"
    cached = CachedMemory(database, redis_url=args.redis_url, prefix=run_prefix)
    raw = aioredis.Redis.from_url(args.redis_url)
    h = Harness(args.repeats, Console(stderr=True))
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql(CLEANUP_SQL)
    try:
        async with h.ticking():
            bench = CacheBench(cached, database, raw, f"{run_prefix}raw:", args.ops, h)
            results = await bench.run()
            cache_stats = {k: v for k, v in (await cached.get_stats()).items() if "cache" in k}
            redis_version = (await raw.info("server"))["redis_version"]
    finally:
        await delete_prefix(raw, run_prefix, batch_size=500)
        await raw.aclose()
        async with database.engine.begin() as conn:
            await conn.exec_driver_sql(CLEANUP_SQL)
        await cached.close()  # closes (and disposes) the database too
    return {
        "config": config(("database", url.render_as_string(hide_password=True)), args),
        "environment": environment(
            ("redis_version", redis_version),
            redis_py=redis.__version__,
            sqlalchemy=sqlalchemy.__version__,
        ),
        "operations": results,
        "targets": targets(results),
        "cache_stats": cache_stats,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = make_parser(__doc__, database=True, redis=True)
    parser.add_argument(
        "--private-redis",
        action="store_true",
        help="run against a throwaway redis-server on a free port (needs the binary)",
    )
    return check_sizes(parser, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    if args.private_redis:
        with private_redis() as url:
            args.redis_url = url
            report = asyncio.run(main_async(args))
    else:
        report = asyncio.run(main_async(args))
    emit(report, render, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
