"""Q-value updates: DatabaseManager beside raw asyncpg running the same statement (SPEC §10).

Usage::

    python benchmarks/bench_learning.py [--database-url URL] [--ops N] [--repeats R] [--json]

Both sides run the statement ``update_q_value`` runs (the TD update as one ``INSERT … ON
CONFLICT … DO UPDATE … RETURNING``), compiled by SQLAlchemy for asyncpg; batches are that
statement without RETURNING, pipelined with asyncpg's ``executemany`` on both sides.
Sequential sections interleave the two sides call by call (the order flips every repetition);
concurrent sections alternate whole blocks of 50 tasks. Measurement (sections, the 1 ms ticker
that charges event-loop stalls, summaries, tables) is ``harness.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy
from harness import (
    CALLS,
    NAME,
    POOL_SIZE,
    RATIO_MEAN,
    SIDES,
    TASKS,
    CompiledStatement,
    Harness,
    Side,
    busy_stall,
    check_sizes,
    comparison_table,
    config,
    emit,
    environment,
    make_parser,
    open_database,
    raw_postgres,
)
from rich.console import Console

from lionagi_qe import DatabaseManager
from lionagi_qe.db import migrate
from lionagi_qe.learning.td import td_update
from lionagi_qe.repositories.learning_q import statements

AGENT = "performance-tester"
STATE_PREFIX = "bench/"
CLEANUP_SQL = (
    "DELETE FROM q_values WHERE agent_type = 'performance-tester' "
    "AND state_hash >= 'bench/' AND state_hash < 'bench0'"
)
BATCH = 100
ACTIONS = 4
ALPHA, GAMMA, REWARD, NEXT_MAX = 0.1, 0.95, 1.0, 0.5


@dataclass
class LearningBench:
    """Both sides' handles and the run's parameters."""

    manager: DatabaseManager
    conn: asyncpg.Connection
    pool: asyncpg.Pool
    ops: int
    h: Harness
    retention: float
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    single: CompiledStatement = field(init=False)
    many: CompiledStatement = field(init=False)

    def __post_init__(self) -> None:
        sql = statements("postgresql")
        self.single = CompiledStatement.of(sql.td_update[True])
        self.many = CompiledStatement.of(sql.td_update_many[True])

    # keys and arguments

    def state(self, side: str, section: str, i: int) -> str:
        return f"{STATE_PREFIX}{self.run}/{section}/{side}/{i}"

    def update(self, state: str, i: int) -> dict[str, Any]:
        return {
            "agent_type": AGENT,
            "state_hash": state,
            "action_hash": f"a{i % ACTIONS}",
            "reward": REWARD,
            "next_max_q": NEXT_MAX,
            "alpha": ALPHA,
            "gamma": GAMMA,
        }

    def raw_args(self, statement: CompiledStatement, u: dict[str, Any]) -> list[Any]:
        return statement.args(**u, state_data=None, action_data=None, retention=self.retention)

    # the two sides of each operation

    async def ours_update(self, u: dict[str, Any]) -> float:
        return await self.manager.update_q_value(**u)

    async def raw_update(self, conn: Any, u: dict[str, Any]) -> float:
        return float(await conn.fetchval(self.single.sql, *self.raw_args(self.single, u)))

    async def ours_batch(self, batch: list[dict[str, Any]]) -> int:
        return await self.manager.batch_update_q_values(batch)

    async def raw_batch(self, conn: Any, batch: list[dict[str, Any]]) -> int:
        await conn.executemany(self.many.sql, [self.raw_args(self.many, u) for u in batch])
        return len(batch)

    def batch(self, side: str, section: str, i: int) -> list[dict[str, Any]]:
        """BATCH updates over BATCH / ACTIONS states of their own."""
        return [
            self.update(self.state(side, section, i * BATCH + j // ACTIONS), j)
            for j in range(BATCH)
        ]

    async def warm_up(self) -> None:
        """Fill statement caches and pools on both sides."""
        self.h.log.log("warm-up")
        for i in range(50):
            u = self.update(self.state("ours", "warm", i), i)
            await self.ours_update(u)
            await self.raw_update(self.conn, u | {"state_hash": self.state("raw", "warm", i)})
        await self.ours_batch(self.batch("ours", "warm-batch", 0))
        await self.raw_batch(self.conn, self.batch("raw", "warm-batch", 0))
        await asyncio.gather(
            *(self.ours_update(self.update(self.state("ours", "warm", i), i)) for i in range(TASKS))
        )
        await asyncio.gather(
            *(
                self.raw_update(self.pool, self.update(self.state("raw", "warm", i), i))
                for i in range(TASKS)
            )
        )

    async def run_all(self) -> list[dict[str, Any]]:
        """Every section, in order; returns their summaries."""
        h = self.h
        await self.warm_up()
        states = max(1, self.ops // ACTIONS)

        def single(side: Side, i: int) -> dict[str, Any]:
            return self.update(self.state(side, "single", i % states), i)

        await h.interleave(
            h.open("update_q_value", "updates"),
            self.ops,
            lambda i: self.ours_update(single("ours", i)),
            lambda i: self.raw_update(self.conn, single("raw", i)),
        )

        batches = max(1, self.ops // BATCH)
        section = h.open(f"batch_update_q_values ({BATCH})", "updates", items_per_call=BATCH)
        await h.interleave(
            section,
            batches,
            lambda i: self.ours_batch(self.batch("ours", "batch", i)),
            lambda i: self.raw_batch(self.conn, self.batch("raw", "batch", i)),
            items=BATCH,
        )

        per_task = max(1, self.ops // TASKS)

        def single_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(self.state(side, "conc", task * per_task + j), j)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = h.open(f"update_q_value x{TASKS} tasks", "updates", concurrent=True)
        await h.blocks(section, per_task, single_task)

        hot: dict[str, str] = {side: self.state(side, "hot", 0) for side in SIDES}

        def hot_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(hot[side], 0)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = h.open(f"update_q_value x{TASKS} tasks, one pair", "updates", concurrent=True)
        await h.blocks(section, per_task, hot_task)
        await self.check_hot_pair(hot["ours"], per_task * TASKS * h.repeats)

        batches_per_task = max(1, batches // TASKS)

        def batch_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            b = self.batch(side, f"conc-batch/{rep}/{task}", j)
            return self.ours_batch(b) if side == "ours" else self.raw_batch(self.pool, b)

        section = h.open(
            f"batch_update_q_values ({BATCH}) x{TASKS} tasks",
            "updates",
            items_per_call=BATCH,
            concurrent=True,
        )
        await h.blocks(section, batches_per_task, batch_task, items=BATCH)
        return h.summaries()

    async def check_hot_pair(self, state: str, n: int) -> None:
        """The contended pair must hold exactly n sequential updates: nothing lost or doubled."""
        expected = 0.0
        for _ in range(n):
            expected = td_update(expected, REWARD, NEXT_MAX, ALPHA, GAMMA)
        got = await self.manager.get_q_value(AGENT, state, "a0")
        if got != expected:
            raise AssertionError(f"hot pair after {n} concurrent updates: {got} != {expected}")
        self.h.log.log(f"hot pair exact after {n} concurrent updates: {got!r}")


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the table."""
    env = report["environment"]
    console.print(
        f"PostgreSQL {env['server_version']} · Python {env['python']} · SQLAlchemy "
        f"{env['sqlalchemy']} · asyncpg {env['asyncpg']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    table = comparison_table(
        "Q-value updates: DatabaseManager vs raw asyncpg (same statement)",
        report["operations"],
        leading=(NAME, CALLS),
        rate_label="updates/s",
        trailing=(RATIO_MEAN, busy_stall("stall ms ours/raw")),
    )
    console.print(table)
    console.print(
        "ratio mean: our time per update / raw time per update (concurrent: raw throughput / "
        "ours). stall: worst CPU-busy event-loop delay charged to each side."
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    url = await open_database(args.database_url)
    retention = 30 * 86400.0
    manager = DatabaseManager(
        url.render_as_string(hide_password=False),
        min_connections=POOL_SIZE,
        max_connections=POOL_SIZE,
        q_value_retention=retention,
    )
    await migrate.upgrade(manager.engine)
    h = Harness(args.repeats, Console(stderr=True))
    try:
        await manager.connect()
        async with raw_postgres(url, CLEANUP_SQL) as (conn, pool), h.ticking():
            bench = LearningBench(manager, conn, pool, args.ops, h, retention)
            results = await bench.run_all()
            server_version = await conn.fetchval("SHOW server_version")
    finally:
        await manager.close()
    return {
        "config": config(
            ("database", url.render_as_string(hide_password=True)),
            args,
            pool_size=POOL_SIZE,
            batch=BATCH,
        ),
        "environment": environment(
            ("server_version", server_version),
            sqlalchemy=sqlalchemy.__version__,
            asyncpg=asyncpg.__version__,
        ),
        "operations": results,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = make_parser(
        __doc__,
        database=True,
        ops_help="single updates per repetition",
        json_help="JSON on stdout, table on stderr",
    )
    return check_sizes(parser, parser.parse_args(argv), max(TASKS, BATCH))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    emit(asyncio.run(main_async(args)), render, as_json=args.json, width=180)
    return 0


if __name__ == "__main__":
    sys.exit(main())
