"""Q-value updates: ``DatabaseManager`` beside raw asyncpg running the same TD statement.

Both sides run the statement ``update_q_value`` runs (the temporal-difference update as one
``INSERT … ON CONFLICT … DO UPDATE … RETURNING``), compiled by SQLAlchemy for asyncpg; batches
are that statement without RETURNING, pipelined with asyncpg's ``executemany`` on the raw side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from lionagi_qe.bench.harness import SIDES, CompiledStatement, Harness, Side
from lionagi_qe.bench.memory import Sizes
from lionagi_qe.bench.raw import ASYNCPG_DIALECT
from lionagi_qe.learning.db_manager import DatabaseManager
from lionagi_qe.learning.td import td_update
from lionagi_qe.repositories.learning_q import statements

__all__ = ["RETENTION", "LearningBench"]

AGENT = "performance-tester"
BATCH = 100
ACTIONS = 4
ALPHA, GAMMA, REWARD, NEXT_MAX = 0.1, 0.95, 1.0, 0.5
RETENTION = 30 * 86400.0
TWIN = "asyncpg, same TD statement"


class LearningBench:
    """Both sides' handles and the Q-value sections."""

    def __init__(
        self, h: Harness, manager: DatabaseManager, conn: Any, pool: Any, sizes: Sizes
    ) -> None:
        self.h = h
        self.manager = manager
        self.conn = conn
        self.pool = pool
        self.sizes = sizes
        sql = statements("postgresql")
        self.single = CompiledStatement.of(sql.td_update[True], ASYNCPG_DIALECT)
        self.many = CompiledStatement.of(sql.td_update_many[True], ASYNCPG_DIALECT)

    @staticmethod
    def update(state: str, i: int) -> dict[str, Any]:
        """The arguments of one TD update."""
        return {
            "agent_type": AGENT,
            "state_hash": state,
            "action_hash": f"a{i % ACTIONS}",
            "reward": REWARD,
            "next_max_q": NEXT_MAX,
            "alpha": ALPHA,
            "gamma": GAMMA,
        }

    def _args(self, statement: CompiledStatement, u: dict[str, Any]) -> list[Any]:
        return statement.args(**u, state_data=None, action_data=None, retention=RETENTION)

    async def ours_update(self, u: dict[str, Any]) -> float:
        return await self.manager.update_q_value(**u)

    async def raw_update(self, conn: Any, u: dict[str, Any]) -> float:
        return float(await conn.fetchval(self.single.sql, *self._args(self.single, u)))

    async def ours_batch(self, batch: list[dict[str, Any]]) -> int:
        return await self.manager.batch_update_q_values(batch)

    async def raw_batch(self, conn: Any, batch: list[dict[str, Any]]) -> int:
        await conn.executemany(self.many.sql, [self._args(self.many, u) for u in batch])
        return len(batch)

    def batch(self, side: str, section: str, i: int) -> list[dict[str, Any]]:
        """BATCH updates over BATCH / ACTIONS states of their own."""
        return [
            self.update(f"bench/{section}/{side}/{i * BATCH + j // ACTIONS}", j)
            for j in range(BATCH)
        ]

    async def warm_up(self) -> None:
        """Fill statement caches and pools on both sides."""
        self.h.log("postgres: Q-value warm-up")
        for i in range(10):
            await self.ours_update(self.update(f"bench/warm/ours/{i}", i))
            await self.raw_update(self.conn, self.update(f"bench/warm/raw/{i}", i))
        await self.ours_batch(self.batch("ours", "warm-batch", 0))
        await self.raw_batch(self.conn, self.batch("raw", "warm-batch", 0))
        n = self.sizes.tasks
        await asyncio.gather(*(self.ours_update(self.update(f"bench/w/{i}", i)) for i in range(n)))
        await asyncio.gather(
            *(self.raw_update(self.pool, self.update(f"bench/w/{i}", i)) for i in range(n))
        )

    async def check_hot_pair(self, state: str, n: int) -> None:
        """The contended pair holds exactly ``n`` sequential updates: none lost or doubled."""
        expected = 0.0
        for _ in range(n):
            expected = td_update(expected, REWARD, NEXT_MAX, ALPHA, GAMMA)
        got = await self.manager.get_q_value(AGENT, state, "a0")
        if got != expected:
            raise AssertionError(f"hot pair after {n} concurrent updates: {got} != {expected}")

    async def run(self) -> None:
        """Single and batched updates, sequential and from concurrent tasks."""
        h, ops, tasks = self.h, self.sizes.ops, self.sizes.tasks
        await self.warm_up()
        states = max(1, ops // ACTIONS)

        def single(side: Side, i: int) -> dict[str, Any]:
            return self.update(f"bench/single/{side}/{i % states}", i)

        await h.interleave(
            h.open("postgres", "q_update", "Q-value update", TWIN, "updates"),
            ops,
            lambda i: self.ours_update(single("ours", i)),
            lambda i: self.raw_update(self.conn, single("raw", i)),
        )
        batches = max(1, ops // BATCH)
        await h.interleave(
            h.open(
                "postgres",
                "q_update_batch",
                f"Q-value batch update ({BATCH})",
                TWIN + " (executemany)",
                "updates",
                items_per_call=BATCH,
            ),
            batches,
            lambda i: self.ours_batch(self.batch("ours", "batch", i)),
            lambda i: self.raw_batch(self.conn, self.batch("raw", "batch", i)),
            items=BATCH,
        )
        per_task = self.sizes.per_task

        def single_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(f"bench/conc/{side}/{task * per_task + j}", j)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = h.open(
            "postgres",
            "q_update_concurrent",
            f"Q-value update x{tasks} tasks",
            TWIN,
            "updates",
            concurrent=True,
        )
        await h.blocks(section, per_task, single_task, tasks=tasks)

        hot = {side: f"bench/hot/{side}" for side in SIDES}

        def hot_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            u = self.update(hot[side], 0)
            return self.ours_update(u) if side == "ours" else self.raw_update(self.pool, u)

        section = h.open(
            "postgres",
            "q_update_concurrent_one_pair",
            f"Q-value update x{tasks} tasks, one pair",
            TWIN,
            "updates",
            concurrent=True,
        )
        await h.blocks(section, per_task, hot_task, tasks=tasks)
        await self.check_hot_pair(hot["ours"], per_task * tasks * h.repeats)

        def batch_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            b = self.batch(side, f"conc-batch/{rep}/{task}", j)
            return self.ours_batch(b) if side == "ours" else self.raw_batch(self.pool, b)

        section = h.open(
            "postgres",
            "q_update_batch_concurrent",
            f"Q-value batch update ({BATCH}) x{tasks} tasks",
            TWIN + " (executemany)",
            "updates",
            items_per_call=BATCH,
            concurrent=True,
        )
        await h.blocks(section, 1, batch_task, tasks=tasks, items=BATCH)
