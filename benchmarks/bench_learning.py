"""Q-value updates: DatabaseManager beside raw asyncpg running the same statement (SPEC §10).

Usage::

    python benchmarks/bench_learning.py [--database-url URL] [--ops N] [--repeats R] [--json]

Both sides run the statement ``update_q_value`` runs (the TD update as one ``INSERT … ON
CONFLICT … DO UPDATE … RETURNING``), compiled by SQLAlchemy for asyncpg; batches are that
statement without RETURNING, pipelined with asyncpg's ``executemany`` on both sides.
Sequential sections interleave the two sides call by call (the order flips every repetition);
concurrent sections alternate whole blocks of 50 tasks. Measurement (sections, the 1 ms ticker
that charges event-loop stalls, summaries) is ``bench_sql.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy
from bench_sql import (
    DEFAULT_URL,
    SIDES,
    CompiledStatement,
    Section,
    Side,
    Ticker,
    _asyncpg_kwargs,
    ensure_database,
    summarize,
)
from rich.console import Console
from rich.table import Table

from lionagi_qe import DatabaseManager
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import normalize_url
from lionagi_qe.learning.td import td_update
from lionagi_qe.repositories.learning_q import statements

AGENT = "performance-tester"
STATE_PREFIX = "bench/"
CLEANUP_SQL = (
    "DELETE FROM q_values WHERE agent_type = 'performance-tester' "
    "AND state_hash >= 'bench/' AND state_hash < 'bench0'"
)
TASKS = 50
POOL_SIZE = 10
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
    repeats: int
    ticker: Ticker
    log: Console
    retention: float
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    sections: list[Section] = field(default_factory=list)
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

    # sections

    def _open(self, name: str, unit: str = "updates", **kw: Any) -> Section:
        gc.collect()
        self.log.log(f"[bold]{name}[/]")
        section = Section(name, unit, **kw)
        section.started = time.perf_counter()
        self.sections.append(section)
        return section

    def _close(self, section: Section) -> None:
        section.ended = time.perf_counter()
        self.ticker.charge(section)

    async def interleave(
        self,
        section: Section,
        calls: int,
        op: Callable[[Side, int, int], Awaitable[object]],
        items: int = 1,
    ) -> None:
        """``repeats`` x ``calls``: the sides alternate call by call, order flipping per rep."""
        for rep in range(self.repeats):
            for i in range(calls):
                for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                    await section.timed(side, op(side, rep, i), items)
        self._close(section)

    async def concurrent(
        self,
        section: Section,
        per_task: int,
        op: Callable[[Side, int, int, int], Awaitable[object]],
        items: int = 1,
    ) -> None:
        """``repeats`` x (50 tasks x ``per_task`` calls), one side's block after the other's."""
        for rep in range(self.repeats):
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:

                async def worker(task: int, side: Side = side, rep: int = rep) -> None:
                    for j in range(per_task):
                        start = time.perf_counter()
                        await op(side, rep, task, j)
                        section.series[side].latencies.append(time.perf_counter() - start)

                start = time.perf_counter()
                await asyncio.gather(*(worker(t) for t in range(TASKS)))
                end = time.perf_counter()
                series = section.series[side]
                series.wall += end - start
                series.items += per_task * TASKS * items
                section.intervals.append((start, end, side))
        self._close(section)

    async def warm_up(self) -> None:
        """Fill statement caches and pools on both sides."""
        self.log.log("warm-up")
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
        await self.warm_up()
        states = max(1, self.ops // ACTIONS)

        def single(side: Side, rep: int, i: int) -> Awaitable[object]:
            u = self.update(self.state(side, "single", i % states), i)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.conn, u)

        await self.interleave(self._open("update_q_value"), self.ops, single)

        batches = max(1, self.ops // BATCH)

        def batched(side: Side, rep: int, i: int) -> Awaitable[object]:
            b = self.batch(side, "batch", i)
            return self.ours_batch(b) if side == "ours" else self.raw_batch(self.conn, b)

        section = self._open(f"batch_update_q_values ({BATCH})", items_per_call=BATCH)
        await self.interleave(section, batches, batched, items=BATCH)

        per_task = max(1, self.ops // TASKS)

        def single_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(self.state(side, "conc", task * per_task + j), j)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = self._open(f"update_q_value x{TASKS} tasks", concurrent=True)
        await self.concurrent(section, per_task, single_task)

        hot: dict[str, str] = {side: self.state(side, "hot", 0) for side in SIDES}

        def hot_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(hot[side], 0)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = self._open(f"update_q_value x{TASKS} tasks, one pair", concurrent=True)
        await self.concurrent(section, per_task, hot_task)
        await self.check_hot_pair(hot["ours"], per_task * TASKS * self.repeats)

        batches_per_task = max(1, batches // TASKS)

        def batch_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            b = self.batch(side, f"conc-batch/{rep}/{task}", j)
            return self.ours_batch(b) if side == "ours" else self.raw_batch(self.pool, b)

        section = self._open(
            f"batch_update_q_values ({BATCH}) x{TASKS} tasks", items_per_call=BATCH, concurrent=True
        )
        await self.concurrent(section, batches_per_task, batch_task, items=BATCH)
        return [summarize(section) for section in self.sections]

    async def check_hot_pair(self, state: str, n: int) -> None:
        """The contended pair must hold exactly n sequential updates: nothing lost or doubled."""
        expected = 0.0
        for _ in range(n):
            expected = td_update(expected, REWARD, NEXT_MAX, ALPHA, GAMMA)
        got = await self.manager.get_q_value(AGENT, state, "a0")
        if got != expected:
            raise AssertionError(f"hot pair after {n} concurrent updates: {got} != {expected}")
        self.log.log(f"hot pair exact after {n} concurrent updates: {got!r}")


def render(console: Console, report: dict[str, Any]) -> None:
    """Print the table."""
    env = report["environment"]
    console.print(
        f"PostgreSQL {env['server_version']} · Python {env['python']} · SQLAlchemy "
        f"{env['sqlalchemy']} · asyncpg {env['asyncpg']} · {env['cpus']} CPUs · "
        f"ops={report['config']['ops']} repeats={report['config']['repeats']}"
    )
    table = Table(title="Q-value updates: DatabaseManager vs raw asyncpg (same statement)")
    table.add_column("operation", no_wrap=True)
    table.add_column("calls", justify="right")
    for side in SIDES:
        table.add_column(f"{side} updates/s", justify="right")
        table.add_column(f"{side} p50 ms", justify="right")
        table.add_column(f"{side} p99 ms", justify="right")
    table.add_column("ratio mean", justify="right")
    table.add_column("stall ms ours/raw", justify="right")
    for r in report["operations"]:
        cells = [r["name"], str(r["ours"]["calls"])]
        for side in SIDES:
            s = r[side]
            cells += [f"{s['rate']:,.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}"]
        cells += [
            f"{r['ratio_mean']:.2f}x",
            f"{r['ours']['busy_stall_ms']:.1f}/{r['raw']['busy_stall_ms']:.1f}",
        ]
        table.add_row(*cells)
    console.print(table)
    console.print(
        "ratio mean: our time per update / raw time per update (concurrent: raw throughput / "
        "ours). stall: worst CPU-busy event-loop delay charged to each side."
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Set up both sides, run every section, clean up; return the report."""
    log = Console(stderr=True)
    url = normalize_url(args.database_url)
    await ensure_database(url)
    retention = 30 * 86400.0
    manager = DatabaseManager(
        url.render_as_string(hide_password=False),
        min_connections=POOL_SIZE,
        max_connections=POOL_SIZE,
        q_value_retention=retention,
    )
    await migrate.upgrade(manager.engine)
    conn = await asyncpg.connect(**_asyncpg_kwargs(url))
    pool = await asyncpg.create_pool(**_asyncpg_kwargs(url), min_size=POOL_SIZE, max_size=POOL_SIZE)
    assert pool is not None
    ticker = Ticker()
    try:
        await manager.connect()
        await conn.execute(CLEANUP_SQL)
        ticker.start()
        bench = LearningBench(manager, conn, pool, args.ops, args.repeats, ticker, log, retention)
        results = await bench.run_all()
        server_version = await conn.fetchval("SHOW server_version")
    finally:
        await ticker.stop()
        await conn.execute(CLEANUP_SQL)
        await conn.close()
        await pool.close()
        await manager.close()
    return {
        "config": {
            "database": url.render_as_string(hide_password=True),
            "ops": args.ops,
            "repeats": args.repeats,
            "tasks": TASKS,
            "pool_size": POOL_SIZE,
            "batch": BATCH,
        },
        "environment": {
            "server_version": server_version,
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "asyncpg": asyncpg.__version__,
            "cpus": os.cpu_count(),
        },
        "operations": results,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("AQE_BENCH_DATABASE_URL", DEFAULT_URL),
        help="PostgreSQL URL (default: $AQE_BENCH_DATABASE_URL or %(default)s)",
    )
    parser.add_argument("--ops", type=int, default=2000, help="single updates per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    args = parser.parse_args(argv)
    if args.ops < max(TASKS, BATCH) or args.repeats < 1:
        parser.error(f"need --ops >= {max(TASKS, BATCH)} and --repeats >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    console = Console(stderr=args.json)
    console.width = max(console.width, 180)
    render(console, report)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
