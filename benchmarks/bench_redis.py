"""RedisMemory beside raw redis.asyncio doing the same work, in one process and one run (SPEC §10).

Usage::

    python benchmarks/bench_redis.py [--redis-url URL] [--ops N] [--repeats R] [--store-size N]
                                     [--json]

The measurement machinery (interleaving, the 1 ms ticker, per-side stall charging, summaries,
tables) is ``harness.py``'s, shared with ``bench_sql.py``, so both benchmarks report alike. The
raw side does what a hand-written client would: the same payload JSON under
``SET``/``GET``/``MSET``, and for ordered ranges its own sorted-set index (``ZRANGEBYLEX`` +
``MGET``). One extra section runs the search the naive way (``SCAN MATCH`` over the database) to
show what the index saves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aredis
from harness import (
    POOL_SIZE,
    TASKS,
    Harness,
    Side,
    TaskOp,
    add_store_size,
    check_sizes,
    comparison_table,
    config,
    delete_prefix,
    dumps,
    emit,
    environment,
    make_parser,
    prefix_upper,
    seed_expectations_table,
    size_label,
    stall_target,
    targets_table,
    value,
    verdicts,
)
from rich.console import Console

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.config import mask_url

NAMESPACE = "aqe/bench/"
STORE_MANY_BATCH = 10_000
SEARCH_STORE_SIZE = 100_000  # --store-size
PER_AGENT = 50  # keys under each agent prefix: SEARCH_STORE_SIZE / PER_AGENT agents


def section_names(store_size: int) -> tuple[str, str]:
    """The search and list_keys sections' names for a store of ``store_size`` keys."""
    label = size_label(store_size)
    return f"search ({PER_AGENT} of {label})", f"list_keys ({PER_AGENT} of {label})"


@dataclass
class Bench:
    """Both sides' handles and the run's parameters."""

    memory: RedisMemory
    conn: aredis.Redis  # raw, one connection's worth of sequential calls
    pool: aredis.Redis  # raw, a blocking pool of POOL_SIZE for the concurrent sections
    raw_prefix: str
    ops: int
    store_size: int
    h: Harness

    # raw twins of each operation

    def _raw(self, key: str) -> str:
        return self.raw_prefix + key

    async def raw_store(self, client: aredis.Redis, key: str, value: Any) -> None:
        await client.set(self._raw(key), dumps(value))

    async def raw_retrieve(self, client: aredis.Redis, key: str) -> Any:
        raw = await client.get(self._raw(key))
        return None if raw is None else json.loads(raw)

    async def raw_store_many(self, items: dict[str, Any]) -> int:
        await self.conn.mset({self._raw(key): dumps(value) for key, value in items.items()})
        return len(items)

    async def raw_index(self, keys: Sequence[str]) -> None:
        await self.conn.zadd(self._raw("idx"), dict.fromkeys(keys, 0))

    async def raw_list(self, prefix: str) -> list[str]:
        members = cast(
            "list[bytes]",
            await self.conn.zrangebylex(self._raw("idx"), "[" + prefix, "(" + prefix_upper(prefix)),
        )
        return [member.decode() for member in members]

    async def raw_search(self, prefix: str) -> dict[str, Any]:
        keys = await self.raw_list(prefix)
        values = await self.conn.mget([self._raw(key) for key in keys]) if keys else []
        return {key: json.loads(raw) for key, raw in zip(keys, values, strict=True) if raw}

    async def raw_scan_search(self, prefix: str) -> dict[str, Any]:
        keys = [key async for key in self.conn.scan_iter(match=self._raw(prefix) + "*", count=1000)]
        keys.sort()
        values = await self.conn.mget(keys) if keys else []
        strip = len(self.raw_prefix)
        return {k.decode()[strip:]: json.loads(v) for k, v in zip(keys, values, strict=True) if v}

    # sections

    async def warm_up(self) -> None:
        """Load the scripts, fill both pools, write the keys the sequential sections read."""
        self.h.log.log("warm-up")
        for i in range(self.ops):
            await self.memory.store(f"{NAMESPACE}store/{i}", value(i))
            await self.raw_store(self.conn, f"{NAMESPACE}store/{i}", value(i))
            await self.memory.store(f"{NAMESPACE}read/{i}", value(i))
            await self.raw_store(self.conn, f"{NAMESPACE}read/{i}", value(i))
        await asyncio.gather(*(self.memory.retrieve(f"{NAMESPACE}read/{i}") for i in range(50)))
        await asyncio.gather(
            *(self.raw_retrieve(self.pool, f"{NAMESPACE}read/{i}") for i in range(50))
        )

    async def sequential(self) -> None:
        """store, retrieve, retrieve-missing: one call at a time, interleaved."""
        h, mem, conn = self.h, self.memory, self.conn
        values = [value(i) for i in range(self.ops)]
        await h.interleave(
            h.open("store"),
            self.ops,
            lambda i: mem.store(f"{NAMESPACE}store/{i}", values[i]),
            lambda i: self.raw_store(conn, f"{NAMESPACE}store/{i}", values[i]),
        )
        await h.interleave(
            h.open("retrieve"),
            self.ops,
            lambda i: mem.retrieve(f"{NAMESPACE}read/{i}"),
            lambda i: self.raw_retrieve(conn, f"{NAMESPACE}read/{i}"),
        )
        await h.interleave(
            h.open("retrieve (missing key)"),
            self.ops,
            lambda i: mem.retrieve(f"{NAMESPACE}missing/{i}"),
            lambda i: self.raw_retrieve(conn, f"{NAMESPACE}missing/{i}"),
        )

    async def store_many(self) -> None:
        """10,000 fresh entries per call, two calls per side per repetition."""

        def items(n: int) -> dict[str, Any]:
            rep, call = divmod(n, 2)
            base = f"{NAMESPACE}many/{rep}-{call}/"
            return {f"{base}{i}": value(i) for i in range(STORE_MANY_BATCH)}

        section = self.h.open("store_many (10k)", "entries", items_per_call=STORE_MANY_BATCH)
        await self.h.interleave(
            section,
            2,
            lambda n: self.memory.store_many(items(n)),
            lambda n: self.raw_store_many(items(n)),
            items=STORE_MANY_BATCH,
            running_index=True,
        )

    async def seed_search_store(self) -> None:
        """``store_size`` keys ``aqe/bench/agent-{i % agents}/item-{i}``: 50 per agent prefix."""
        agents = self.store_size // PER_AGENT
        self.h.log.log(f"seeding {self.store_size:,} keys for search, on both sides")
        for start in range(0, self.store_size, STORE_MANY_BATCH):
            batch = {
                f"{NAMESPACE}agent-{i % agents}/item-{i}": value(i)
                for i in range(start, min(start + STORE_MANY_BATCH, self.store_size))
            }
            await self.memory.store_many(batch)
            await self.raw_store_many(batch)
            await self.raw_index(list(batch))
        probe = await self.memory.search(f"{NAMESPACE}agent-7/*")
        assert len(probe) == PER_AGENT, f"expected 50 keys under agent-7/, got {len(probe)}"
        assert probe == await self.raw_search(f"{NAMESPACE}agent-7/")

    async def ranges(self) -> None:
        """search (glob of 50 in the store) and list_keys of the same prefix; then the SCAN way."""
        h, mem = self.h, self.memory
        calls = max(1, self.ops // 4)
        agents = self.store_size // PER_AGENT
        search_name, list_name = section_names(self.store_size)

        def prefix(i: int) -> str:
            return f"{NAMESPACE}agent-{(i * 7) % agents}/"

        await h.interleave(
            h.open(search_name),
            calls,
            lambda i: mem.search(prefix(i) + "*"),
            lambda i: self.raw_search(prefix(i)),
        )
        await h.interleave(
            h.open(list_name),
            calls,
            lambda i: mem.list_keys(prefix(i)),
            lambda i: self.raw_list(prefix(i)),
        )
        await h.interleave(
            h.open("search vs raw SCAN MATCH"),
            max(1, calls // 500),
            lambda i: mem.search(prefix(i) + "*"),
            lambda i: self.raw_scan_search(prefix(i)),
        )

    async def concurrent(self) -> None:
        """50 tasks x N/50 calls: one RedisMemory (pool 10) vs a raw blocking pool of 10."""
        per_task = max(1, self.ops // TASKS)
        mem, pool = self.memory, self.pool

        def op(write: bool) -> TaskOp:
            def call(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
                key = f"{NAMESPACE}conc/{task}/{j}"
                if side == "ours":
                    return mem.store(key, value(j)) if write else mem.retrieve(key)
                return (
                    self.raw_store(pool, key, value(j)) if write else self.raw_retrieve(pool, key)
                )

            return call

        for name, write in (("store", True), ("retrieve", False)):
            section = self.h.open(f"{name} x{TASKS} tasks", concurrent=True)
            await self.h.blocks(section, per_task, op(write))

    async def run(self) -> list[dict[str, Any]]:
        """Every section, in order; returns their summaries."""
        await self.warm_up()
        await self.sequential()
        await self.store_many()
        await self.seed_search_store()
        await self.ranges()
        await self.concurrent()
        return self.h.summaries()


# -- verdicts and reference tables ------------------------------------------------------------


def targets(results: list[dict[str, Any]], store_size: int) -> list[dict[str, Any]]:
    """The §10 targets that apply to a Redis store, with the measured value and pass/fail."""
    by_name = {r["name"]: r for r in results}
    retrieve, store = by_name["retrieve"], by_name["store"]
    many, search = by_name["store_many (10k)"], by_name[section_names(store_size)[0]]
    rows = [
        (
            "retrieve ≤ 1.3x raw GET (mean per-op time)",
            retrieve["ratio_mean"],
            "x",
            retrieve["ratio_mean"] <= 1.3,
        ),
        (
            "store (Lua upsert + indexes) ≤ 1.5x raw SET (mean per-op time)",
            store["ratio_mean"],
            "x",
            store["ratio_mean"] <= 1.5,
        ),
        (
            "store_many ≥ 50,000 entries/s",
            many["ours"]["rate"],
            "entries/s",
            many["ours"]["rate"] >= 50_000,
        ),
        (
            f"search {PER_AGENT} of {size_label(store_size)} < 2 ms (p50)",
            search["ours"]["p50_ms"],
            "ms",
            search["ours"]["p50_ms"] < 2,
        ),
        stall_target(results),
    ]
    return verdicts(rows)


def seed_table(results: list[dict[str, Any]], store_size: int) -> list[dict[str, Any]]:
    """The seed's Redis expectations beside what both sides measured."""
    by_name = {r["name"]: r for r in results}
    conc = by_name[f"store x{TASKS} tasks"]
    search = by_name[section_names(store_size)[0]]
    return [
        {
            "operation": "Redis write",
            "seed": "100-500 ops/s",
            "ours": f"{by_name['store']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['store']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "Redis read",
            "seed": "200-1000 ops/s",
            "ours": f"{by_name['retrieve']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['retrieve']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "search 50 keys",
            "seed": "< 0.5 s",
            "ours": f"{search['ours']['p50_ms']:.2f} ms",
            "raw": f"{search['raw']['p50_ms']:.2f} ms",
        },
        {
            "operation": "concurrent 50 ops",
            "seed": "1-2 s",
            "ours": f"{50 / conc['ours']['rate'] * 1e3:.1f} ms",
            "raw": f"{50 / conc['raw']['rate'] * 1e3:.1f} ms",
        },
    ]


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the three tables."""
    env = report["environment"]
    console.print(
        f"Redis {env['server_version']} · Python {env['python']} · redis-py {env['redis_py']} · "
        f"hiredis {env['hiredis']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    title = "RedisMemory vs raw redis.asyncio (interleaved, same run)"
    console.print(comparison_table(title, report["operations"]))
    console.print(targets_table("§10 targets", report["targets"]))
    console.print(seed_expectations_table(report["seed"]))


# -- set-up -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    run_id = uuid.uuid4().hex[:8]
    ours_prefix, raw_prefix = f"aqe-bench:{run_id}:", f"aqe-bench-raw:{run_id}:"
    memory = RedisMemory(url=args.redis_url, prefix=ours_prefix, max_connections=POOL_SIZE)
    conn = aredis.Redis.from_url(args.redis_url)
    pool = aredis.Redis(
        connection_pool=aredis.BlockingConnectionPool.from_url(
            args.redis_url, max_connections=POOL_SIZE
        )
    )
    h = Harness(args.repeats, Console(stderr=True))
    try:
        async with h.ticking():
            bench = Bench(memory, conn, pool, raw_prefix, args.ops, args.store_size, h)
            results = await bench.run()
            server_version = (await conn.info("server"))["redis_version"]
    finally:
        for prefix in (ours_prefix, raw_prefix):
            await delete_prefix(conn, prefix)
        await memory.close()
        await conn.aclose()
        await pool.aclose()
    return {
        "config": config(
            ("redis", mask_url(args.redis_url)),
            args,
            pool_size=POOL_SIZE,
            store_size=args.store_size,
        ),
        "environment": environment(
            ("server_version", server_version),
            redis_py=redis.__version__,
            hiredis=getattr(hiredis, "__version__", "?"),
        ),
        "operations": results,
        "targets": targets(results, args.store_size),
        "seed": seed_table(results, args.store_size),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = make_parser(__doc__, redis=True)
    add_store_size(parser, SEARCH_STORE_SIZE, PER_AGENT)
    args = check_sizes(parser, parser.parse_args(argv))
    if args.store_size < 8 * PER_AGENT or args.store_size % PER_AGENT:
        parser.error(f"need --store-size >= {8 * PER_AGENT}, a multiple of {PER_AGENT}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    emit(asyncio.run(main_async(args)), render, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
