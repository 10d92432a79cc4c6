"""CachedMemory beside raw redis.asyncio (cache hits) and beside PostgresMemory (misses, writes).

Usage::

    python benchmarks/bench_cache.py [--database-url URL] [--redis-url URL] [--ops N]
                                     [--repeats R] [--json]

Same method as ``bench_sql.py`` (whose measurement code this reuses): each operation is
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
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
import sqlalchemy
from bench_sql import SIDES, Section, Side, Ticker, ensure_database, summarize
from rich.console import Console
from rich.table import Table

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import normalize_url

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/aqe_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PREFIX = "aqe/bench/cache/"
CLEANUP_SQL = "DELETE FROM qe_memory WHERE key >= 'aqe/bench/cache/' AND key < 'aqe/bench/cache0'"
HOT_KEYS = 50
BATCH = 10
TASKS = 50


def _value(i: int) -> dict[str, Any]:
    return {"agent": f"agent-{i % 50}", "step": i, "ok": True, "notes": "x" * 48}


@dataclass
class CacheBench:
    """Both sides' handles and the run's parameters."""

    cached: CachedMemory
    database: PostgresMemory
    raw: aioredis.Redis
    raw_prefix: str
    ops: int
    repeats: int
    ticker: Ticker
    log: Console
    sections: list[Section] = field(default_factory=list)

    def _open(self, name: str, **kw: Any) -> Section:
        gc.collect()
        self.log.log(f"[bold]{name}[/]")
        section = Section(name, "ops", **kw)
        section.started = time.perf_counter()
        self.sections.append(section)
        return section

    def _close(self, section: Section) -> None:
        section.ended = time.perf_counter()
        self.ticker.charge(section)

    async def interleave(
        self,
        section: Section,
        ours: Callable[[int], Awaitable[object]],
        raw: Callable[[int], Awaitable[object]],
        calls: int | None = None,
    ) -> None:
        """``repeats`` x ``calls``: ours and raw alternate call by call, order flipping per rep."""
        pair: list[tuple[Side, Callable[[int], Awaitable[object]]]] = [("ours", ours), ("raw", raw)]
        per_rep = calls or self.ops
        for rep in range(self.repeats):
            order = pair if rep % 2 == 0 else pair[::-1]
            for i in range(per_rep):
                for side, op in order:
                    await section.timed(side, op(rep * per_rep + i))
        self._close(section)

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
        self.log.log("set-up")
        hot = {f"{PREFIX}hot/{i}": _value(i) for i in range(HOT_KEYS)}
        await self.cached.store_many(hot)
        async with self.raw.pipeline(transaction=False) as pipe:
            for i in range(HOT_KEYS):
                pipe.set(f"{self.raw_prefix}{i}", json.dumps(_value(i), separators=(",", ":")))
            await pipe.execute()
        for _ in range(20):
            for key in hot:
                await self.cached.retrieve(key)
                await self.raw_get(0)
        cold = self.ops * self.repeats
        for side in SIDES:
            for start in range(0, cold, 10_000):
                batch = range(start, min(cold, start + 10_000))
                await self.database.store_many(
                    {f"{PREFIX}cold/{side}/{i}": _value(i) for i in batch}
                )
        for i in range(self.ops):
            await self.cached.store(f"{PREFIX}store/ours/{i}", _value(i))
            await self.database.store(f"{PREFIX}store/raw/{i}", _value(i))

    async def hits(self) -> None:
        cached = self.cached
        section = self._open("retrieve (hit)")
        await self.interleave(
            section, lambda i: cached.retrieve(f"{PREFIX}hot/{i % HOT_KEYS}"), self.raw_get
        )
        section = self._open(f"retrieve_many {BATCH} (hits)")
        await self.interleave(
            section,
            lambda i: cached.retrieve_many(
                [f"{PREFIX}hot/{(i + j) % HOT_KEYS}" for j in range(BATCH)]
            ),
            self.raw_mget,
            calls=max(1, self.ops // 4),
        )

    async def concurrent_hits(self) -> None:
        per_task = max(1, self.ops // TASKS)
        section = self._open(f"retrieve x{TASKS} tasks (hits)", concurrent=True)

        async def worker(side: Side, task: int) -> None:
            for j in range(per_task):
                i = task * per_task + j
                start = time.perf_counter()
                if side == "ours":
                    await self.cached.retrieve(f"{PREFIX}hot/{i % HOT_KEYS}")
                else:
                    await self.raw_get(i)
                section.series[side].latencies.append(time.perf_counter() - start)

        for rep in range(self.repeats):
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                start = time.perf_counter()
                await asyncio.gather(*(worker(side, t) for t in range(TASKS)))
                end = time.perf_counter()
                section.series[side].wall += end - start
                section.series[side].items += per_task * TASKS
                section.intervals.append((start, end, side))
        self._close(section)

    async def misses_and_stores(self) -> None:
        cached, database = self.cached, self.database
        section = self._open("retrieve (miss + fill)")
        await self.interleave(
            section,
            lambda i: cached.retrieve(f"{PREFIX}cold/ours/{i}"),
            lambda i: database.retrieve(f"{PREFIX}cold/raw/{i}"),
        )
        values = [_value(i) for i in range(self.ops)]
        section = self._open("store (+ invalidate)")
        await self.interleave(
            section,
            lambda i: cached.store(f"{PREFIX}store/ours/{i % self.ops}", values[i % self.ops]),
            lambda i: database.store(f"{PREFIX}store/raw/{i % self.ops}", values[i % self.ops]),
        )

    async def run(self) -> list[dict[str, Any]]:
        await self.set_up()
        await self.hits()
        await self.concurrent_hits()
        await self.misses_and_stores()
        return [summarize(section) for section in self.sections]


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
    stall = max(r["ours"]["busy_stall_ms"] for r in results)
    rows = [
        ("cache hit ≤ 1.3x raw GET (mean)", hit["ratio_mean"], "x", hit["ratio_mean"] <= 1.3),
        ("cache hit ≤ 1.3x raw GET (p50)", hit["ratio_p50"], "x", hit["ratio_p50"] <= 1.3),
        ("event-loop stall ≤ 10 ms (ours, CPU-busy)", stall, "ms", stall <= 10),
    ]
    return [{"target": t, "measured": m, "unit": u, "passed": bool(p)} for t, m, u, p in rows]


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the results and the targets."""
    env = report["environment"]
    console.print(
        f"Redis {env['redis_version']} · Python {env['python']} · redis-py {env['redis_py']} · "
        f"SQLAlchemy {env['sqlalchemy']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    table = Table(title="CachedMemory vs its twin (interleaved, same run)")
    for column in ("operation", "twin", "calls"):
        table.add_column(column, no_wrap=True, justify="left" if column != "calls" else "right")
    for side in SIDES:
        table.add_column(f"{side} ops/s", justify="right")
        table.add_column(f"{side} p50 ms", justify="right")
        table.add_column(f"{side} p99 ms", justify="right")
    table.add_column("ratio p50", justify="right")
    table.add_column("ratio mean", justify="right")
    table.add_column("busy stall ms", justify="right")
    for r in report["operations"]:
        cells = [r["name"], TWINS[r["name"]], str(r["ours"]["calls"])]
        for side in SIDES:
            s = r[side]
            cells += [f"{s['rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}"]
        cells += [
            f"{r['ratio_p50']:.2f}x",
            f"{r['ratio_mean']:.2f}x",
            f"{r['ours']['busy_stall_ms']:.1f}/{r['raw']['busy_stall_ms']:.1f}",
        ]
        table.add_row(*cells)
    console.print(table)
    verdicts = Table(title="§10 targets (cache)")
    verdicts.add_column("target")
    verdicts.add_column("measured", justify="right")
    verdicts.add_column("")
    for t in report["targets"]:
        verdicts.add_row(
            t["target"],
            f"{t['measured']:.2f} {t['unit']}",
            "[green]PASS[/]" if t["passed"] else "[red]FAIL[/]",
        )
    console.print(verdicts)
    console.print(f"cache statistics after the run: {report['cache_stats']}")
    if report["cache_stats"]["cache_errors"]:
        console.print(
            "[red]Redis calls failed during the run (the breaker bypassed the cache for a while);"
            " the figures are not clean. Try --private-redis.[/]"
        )


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    """Delete this run's Redis keys by prefix (SCAN, never FLUSHDB)."""
    batch: list[bytes] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


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
    log = Console(stderr=True)
    url = normalize_url(args.database_url)
    await ensure_database(url)
    database = PostgresMemory(url.render_as_string(hide_password=False), pool_size=10)
    assert database.engine is not None
    await migrate.upgrade(database.engine)
    run_prefix = f"aqe-bench-cache:{uuid.uuid4().hex[:8]}:"
    cached = CachedMemory(database, redis_url=args.redis_url, prefix=run_prefix)
    raw = aioredis.Redis.from_url(args.redis_url)
    ticker = Ticker()
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql(CLEANUP_SQL)
    try:
        ticker.start()
        bench = CacheBench(
            cached, database, raw, f"{run_prefix}raw:", args.ops, args.repeats, ticker, log
        )
        results = await bench.run()
        cache_stats = {k: v for k, v in (await cached.get_stats()).items() if "cache" in k}
        redis_version = (await raw.info("server"))["redis_version"]
    finally:
        await ticker.stop()
        await delete_prefix(raw, run_prefix)
        await raw.aclose()
        async with database.engine.begin() as conn:
            await conn.exec_driver_sql(CLEANUP_SQL)
        await cached.close()  # closes (and disposes) the database too
    return {
        "config": {
            "database": url.render_as_string(hide_password=True),
            "ops": args.ops,
            "repeats": args.repeats,
            "tasks": TASKS,
        },
        "environment": {
            "redis_version": redis_version,
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "cpus": os.cpu_count(),
        },
        "operations": results,
        "targets": targets(results),
        "cache_stats": cache_stats,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AQE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL URL (default: $AQE_BENCH_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("AQE_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis URL (default: $AQE_BENCH_REDIS_URL or %(default)s)",
    )
    parser.add_argument(
        "--private-redis",
        action="store_true",
        help="run against a throwaway redis-server on a free port (needs the binary)",
    )
    parser.add_argument("--ops", type=int, default=2000, help="calls per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, tables on stderr")
    args = parser.parse_args(argv)
    if args.ops < TASKS or args.repeats < 1:
        parser.error(f"need --ops >= {TASKS} and --repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    if args.private_redis:
        with private_redis() as url:
            args.redis_url = url
            report = asyncio.run(main_async(args))
    else:
        report = asyncio.run(main_async(args))
    console = Console(stderr=args.json)
    console.width = max(console.width, 200)
    render(console, report)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
