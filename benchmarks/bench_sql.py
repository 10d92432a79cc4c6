"""PostgresMemory beside raw asyncpg doing the same work, in one process and one run (SPEC §10).

Usage::

    python benchmarks/bench_sql.py [--database-url URL] [--ops N] [--repeats R] [--store-size N]
                                   [--json]

Every sequential operation is interleaved call by call with its raw-driver twin (the order
flips each repetition), so machine noise lands on both sides alike. A 1 ms ticker task runs
throughout; each late tick is charged to whichever side's calls overlapped the delay. A late
tick is reported twice: its wall-clock lateness, and the part of it this process spent on the
CPU ("busy"), which leaves out time the OS gave to other processes on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy
from harness import (
    POOL_SIZE,
    TASKS,
    CompiledStatement,
    Harness,
    Side,
    add_store_size,
    check_sizes,
    comparison_table,
    config,
    dumps,
    emit,
    environment,
    make_parser,
    open_database,
    prefix_upper,
    raw_postgres,
    seed_expectations_table,
    size_label,
    stall_target,
    targets_table,
    value,
    verdicts,
)
from rich.console import Console

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.repositories import memory as memory_sql

PREFIX = "aqe/bench/"
CLEANUP_SQL = "DELETE FROM qe_memory WHERE key >= 'aqe/bench/' AND key < 'aqe/bench0'"
PARTITION = "default"
STORE_MANY_BATCH = 10_000
SEARCH_STORE_SIZE = 100_000  # --store-size
PER_AGENT = 50  # keys under each agent prefix: SEARCH_STORE_SIZE / PER_AGENT agents

RAW_GET = (
    "SELECT CAST(value AS TEXT) FROM qe_memory WHERE key = $1 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp())"
)
RAW_SEARCH = (
    "SELECT key, CAST(value AS TEXT) FROM qe_memory WHERE key >= $1 AND key < $2 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp()) AND key ~ $3 ORDER BY key"
)
RAW_LIST = (
    "SELECT key FROM qe_memory WHERE key >= $1 AND key < $2 "
    "AND (expires_at IS NULL OR expires_at > statement_timestamp()) ORDER BY key"
)


def _size(key: str, value_json: str) -> int:
    return len(key.encode()) + len(value_json.encode())


def section_names(store_size: int) -> tuple[str, str]:
    """The search and list_keys sections' names for a store of ``store_size`` keys."""
    label = size_label(store_size)
    return f"search ({PER_AGENT} of {label})", f"list_keys ({PER_AGENT} of {label})"


@dataclass
class Bench:
    """Both sides' handles and the run's parameters."""

    memory: PostgresMemory
    conn: asyncpg.Connection
    pool: asyncpg.Pool
    ops: int
    store_size: int
    h: Harness
    upsert: CompiledStatement = field(init=False)
    upsert_many: CompiledStatement = field(init=False)

    def __post_init__(self) -> None:
        sql = memory_sql.statements("postgresql")
        self.upsert = CompiledStatement.of(sql.upsert[False, False])
        self.upsert_many = CompiledStatement.of(memory_sql._PG_STORE_MANY)

    # raw twins of each operation

    async def raw_store(self, conn: Any, key: str, value: Any) -> int:
        value_json = dumps(value)
        version = await conn.fetchval(
            self.upsert.sql,
            *self.upsert.args(
                b_key=key,
                b_value=value_json,
                b_partition=PARTITION,
                b_metadata="{}",
                b_size_bytes=_size(key, value_json),
            ),
        )
        return int(version)

    async def raw_retrieve(self, conn: Any, key: str) -> Any:
        value_json = await conn.fetchval(RAW_GET, key)
        return None if value_json is None else json.loads(value_json)

    async def raw_store_many(self, items: dict[str, Any]) -> int:
        keys = list(items)
        values = [dumps(v) for v in items.values()]
        sizes = [_size(k, v) for k, v in zip(keys, values, strict=True)]
        args = self.upsert_many.args(
            keys=keys, values=values, sizes=sizes, partition=PARTITION, ttl=None
        )
        await self.conn.execute(self.upsert_many.sql, *args)
        return len(keys)

    async def raw_search(self, prefix: str) -> dict[str, Any]:
        regex = "^" + re.escape(prefix) + ".*$"
        rows = await self.conn.fetch(RAW_SEARCH, prefix, prefix_upper(prefix), regex)
        return {row[0]: json.loads(row[1]) for row in rows}

    async def raw_list(self, prefix: str) -> list[str]:
        rows = await self.conn.fetch(RAW_LIST, prefix, prefix_upper(prefix))
        return [row[0] for row in rows]

    # sections

    async def warm_up(self) -> None:
        """Fill statement caches and pools, and write the keys the sequential sections use."""
        self.h.log.log("warm-up")
        for i in range(self.ops):
            await self.memory.store(f"{PREFIX}store/ours/{i}", value(i))
            await self.raw_store(self.conn, f"{PREFIX}store/raw/{i}", value(i))
            await self.memory.store(f"{PREFIX}read/{i}", value(i))
        for i in range(50):
            await self.memory.retrieve(f"{PREFIX}read/{i}")
            await self.raw_retrieve(self.conn, f"{PREFIX}read/{i}")
        await asyncio.gather(*(self.memory.retrieve(f"{PREFIX}read/{i}") for i in range(50)))
        await asyncio.gather(
            *(self.raw_retrieve(self.pool, f"{PREFIX}read/{i}") for i in range(50))
        )

    async def sequential(self) -> None:
        """store, retrieve, retrieve-missing: one call at a time, interleaved."""
        h, mem, conn = self.h, self.memory, self.conn
        values = [value(i) for i in range(self.ops)]
        await h.interleave(
            h.open("store"),
            self.ops,
            lambda i: mem.store(f"{PREFIX}store/ours/{i}", values[i]),
            lambda i: self.raw_store(conn, f"{PREFIX}store/raw/{i}", values[i]),
        )
        await h.interleave(
            h.open("retrieve"),
            self.ops,
            lambda i: mem.retrieve(f"{PREFIX}read/{i}"),
            lambda i: self.raw_retrieve(conn, f"{PREFIX}read/{i}"),
        )
        await h.interleave(
            h.open("retrieve (missing key)"),
            self.ops,
            lambda i: mem.retrieve(f"{PREFIX}missing/{i}"),
            lambda i: self.raw_retrieve(conn, f"{PREFIX}missing/{i}"),
        )

    async def store_many(self) -> None:
        """10,000 fresh entries per call, two calls per side per repetition."""

        def items(side: Side, n: int) -> dict[str, Any]:
            rep, call = divmod(n, 2)
            base = f"{PREFIX}many/{side}/{rep}-{call}/"
            return {f"{base}{i}": value(i) for i in range(STORE_MANY_BATCH)}

        section = self.h.open("store_many (10k)", "entries", items_per_call=STORE_MANY_BATCH)
        await self.h.interleave(
            section,
            2,
            lambda n: self.memory.store_many(items("ours", n)),
            lambda n: self.raw_store_many(items("raw", n)),
            items=STORE_MANY_BATCH,
            running_index=True,
        )

    async def seed_search_store(self) -> None:
        """``store_size`` keys ``aqe/bench/agent-{i % agents}/item-{i}``: 50 per agent prefix."""
        agents = self.store_size // PER_AGENT
        self.h.log.log(f"seeding {self.store_size:,} keys for search")
        for start in range(0, self.store_size, STORE_MANY_BATCH):
            batch = {
                f"{PREFIX}agent-{i % agents}/item-{i}": value(i)
                for i in range(start, min(start + STORE_MANY_BATCH, self.store_size))
            }
            await self.memory.store_many(batch)
        await self.conn.execute("ANALYZE qe_memory")
        probe = await self.memory.search(f"{PREFIX}agent-7/*")
        assert len(probe) == PER_AGENT, f"expected 50 keys under agent-7/, got {len(probe)}"

    async def ranges(self) -> None:
        """search (glob of 50 in the store) and list_keys of the same prefix."""
        h, mem = self.h, self.memory
        calls = max(1, self.ops // 4)
        agents = self.store_size // PER_AGENT
        search_name, list_name = section_names(self.store_size)

        def prefix(i: int) -> str:
            return f"{PREFIX}agent-{(i * 7) % agents}/"

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

    async def concurrent(self) -> None:
        """50 tasks x N/50 calls: one PostgresMemory (pool 10) vs an asyncpg pool of 10."""
        per_task = max(1, self.ops // TASKS)
        mem, pool = self.memory, self.pool

        def op(write: bool) -> Any:
            def call(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
                key = f"{PREFIX}conc/{side}/{task}/{j}"
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
    """The §10 targets with the measured value and pass/fail."""
    by_name = {r["name"]: r for r in results}
    store, retrieve = by_name["store"], by_name["retrieve"]
    search_name, _ = section_names(store_size)
    many, search = by_name["store_many (10k)"], by_name[search_name]
    rows = [
        (
            "store ≤ 1.3x raw (mean per-op time)",
            store["ratio_mean"],
            "x",
            store["ratio_mean"] <= 1.3,
        ),
        (
            "retrieve ≤ 1.5x raw (mean per-op time)",
            retrieve["ratio_mean"],
            "x",
            retrieve["ratio_mean"] <= 1.5,
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
    for name in (f"store x{TASKS} tasks", f"retrieve x{TASKS} tasks"):
        r = by_name[name]
        rows.append(
            (
                f"{name}: beats raw per-call throughput",
                r["ours"]["rate"] / r["raw"]["rate"],
                "x raw",
                r["ours"]["rate"] > r["raw"]["rate"],
            )
        )
    return verdicts(rows)


def seed_table(results: list[dict[str, Any]], store_size: int) -> list[dict[str, Any]]:
    """The seed's expectations beside what both sides measured."""
    by_name = {r["name"]: r for r in results}
    conc = by_name[f"store x{TASKS} tasks"]
    search = by_name[section_names(store_size)[0]]
    return [
        {
            "operation": "PostgreSQL write",
            "seed": "10-50 ops/s",
            "ours": f"{by_name['store']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['store']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "PostgreSQL read",
            "seed": "50-200 ops/s",
            "ours": f"{by_name['retrieve']['ours']['rate']:,.0f} ops/s",
            "raw": f"{by_name['retrieve']['raw']['rate']:,.0f} ops/s",
        },
        {
            "operation": "search 50 keys",
            "seed": "< 1 s",
            "ours": f"{search['ours']['p50_ms']:.2f} ms",
            "raw": f"{search['raw']['p50_ms']:.2f} ms",
        },
        {
            "operation": "concurrent 50 ops",
            "seed": "2-5 s",
            "ours": f"{50 / conc['ours']['rate'] * 1e3:.1f} ms",
            "raw": f"{50 / conc['raw']['rate'] * 1e3:.1f} ms",
        },
    ]


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the three tables."""
    env = report["environment"]
    console.print(
        f"PostgreSQL {env['server_version']} · Python {env['python']} · SQLAlchemy "
        f"{env['sqlalchemy']} · asyncpg {env['asyncpg']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    title = "PostgresMemory vs raw asyncpg (interleaved, same run)"
    console.print(comparison_table(title, report["operations"]))
    console.print(targets_table("§10 targets", report["targets"]))
    console.print(seed_expectations_table(report["seed"]))


# -- set-up -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    url = await open_database(args.database_url)
    memory = PostgresMemory(url.render_as_string(hide_password=False), pool_size=POOL_SIZE)
    assert memory.engine is not None
    await migrate.upgrade(memory.engine)
    h = Harness(args.repeats, Console(stderr=True))
    try:
        async with raw_postgres(url, CLEANUP_SQL) as (conn, pool), h.ticking():
            bench = Bench(memory, conn, pool, args.ops, args.store_size, h)
            results = await bench.run()
            server_version = await conn.fetchval("SHOW server_version")
    finally:
        await memory.close()
    return {
        "config": config(
            ("database", url.render_as_string(hide_password=True)),
            args,
            pool_size=POOL_SIZE,
            store_size=args.store_size,
        ),
        "environment": environment(
            ("server_version", server_version),
            sqlalchemy=sqlalchemy.__version__,
            asyncpg=asyncpg.__version__,
        ),
        "operations": results,
        "targets": targets(results, args.store_size),
        "seed": seed_table(results, args.store_size),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = make_parser(__doc__, database=True)
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
