"""``WorkQueue`` enqueue / claim / complete beside raw asyncpg running the same statements.

The raw side runs the queue's own statements (the ``INSERT … ON CONFLICT`` enqueue, the
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`` claim, the guarded complete), compiled
by SQLAlchemy for asyncpg, on one connection (sequential) or a pool of 10 (concurrent). Each side
has a queue of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import Executable

import lionagi_qe.coordination.queue as queue_sql
from lionagi_qe.bench.harness import CompiledStatement, Harness, Side, dumps, payload
from lionagi_qe.bench.memory import Sizes
from lionagi_qe.bench.raw import ASYNCPG_DIALECT
from lionagi_qe.coordination import Job, WorkQueue

__all__ = ["QueueBench"]

TWIN = "asyncpg, same SKIP LOCKED SQL"
LEASE = 3600.0  # longer than any run: a lapsed lease would hand a claimed job out again


def _queue_statements() -> tuple[Executable, Executable, Executable]:
    """The queue's own enqueue, claim and complete statements for PostgreSQL."""
    # The queue builds its statements per dialect; older versions kept module constants.
    build = getattr(queue_sql, "_statements", None)
    if build is not None:
        sql = build("postgresql")
        return sql.enqueue, sql.claim, sql.complete
    module: Any = queue_sql
    return module._ENQUEUE, module._CLAIM, module._COMPLETE


class QueueBench:
    """Both sides' queues and the queue sections."""

    def __init__(
        self, h: Harness, queue: WorkQueue, raw_name: str, conn: Any, pool: Any, sizes: Sizes
    ) -> None:
        self.h = h
        self.queue = queue
        self.raw_name = raw_name
        self.conn = conn
        self.pool = pool
        self.sizes = sizes
        enqueue, claim, complete = _queue_statements()
        self.enqueue_sql = CompiledStatement.of(enqueue, ASYNCPG_DIALECT)
        self.claim_sql = CompiledStatement.of(claim, ASYNCPG_DIALECT)
        self.complete_sql = CompiledStatement.of(complete, ASYNCPG_DIALECT)

    async def raw_enqueue(self, conn: Any, value: Any) -> str:
        args = self.enqueue_sql.args(
            job_id=uuid.uuid4(),
            b_queue=self.raw_name,
            b_payload=dumps(value),
            b_priority=0,
            b_max_attempts=5,
            b_dedupe_key=None,
            delay=0.0,
        )
        return str(await conn.fetchval(self.enqueue_sql.sql, *args))

    async def raw_claim(self, conn: Any, consumer: str) -> Any:
        args = self.claim_sql.args(b_queue=self.raw_name, consumer=consumer, lease=LEASE)
        return await conn.fetchrow(self.claim_sql.sql, *args)

    async def raw_complete(self, conn: Any, row: Any) -> None:
        args = self.complete_sql.args(
            job_id=row["id"],
            consumer=row["lease_owner"],
            b_attempts=row["attempts"],
            b_result=dumps({"ok": True}),
        )
        if await conn.fetchval(self.complete_sql.sql, *args) is None:
            raise AssertionError("raw complete lost its lease")

    async def ours_claim_complete(self, consumer: str) -> None:
        job = await self.queue.claim(consumer, lease=LEASE)
        if job is not None:
            await self.queue.complete(job, {"ok": True})

    async def raw_claim_complete(self, consumer: str) -> None:
        row = await self.raw_claim(self.pool, consumer)
        if row is not None:
            await self.raw_complete(self.pool, row)

    async def run(self) -> None:
        """enqueue, claim, complete one at a time; then enqueue and claim+complete x tasks."""
        h, ops, queue = self.h, self.sizes.ops, self.queue
        self.h.log("postgres: queue warm-up")
        for i in range(5):
            await queue.enqueue(payload(i))
            await self.raw_enqueue(self.conn, payload(i))
            await self.ours_claim_complete("warm")
            row = await self.raw_claim(self.conn, "warm")
            await self.raw_complete(self.conn, row)

        await h.interleave(
            h.open("postgres", "enqueue", "queue enqueue", TWIN, "jobs"),
            ops,
            lambda i: queue.enqueue(payload(i)),
            lambda i: self.raw_enqueue(self.conn, payload(i)),
        )
        jobs: list[Job | None] = []
        rows: list[Any] = []

        async def ours_claim(i: int) -> None:
            jobs.append(await queue.claim("consumer", lease=LEASE))

        async def raw_claim(i: int) -> None:
            rows.append(await self.raw_claim(self.conn, "consumer"))

        await h.interleave(
            h.open("postgres", "claim", "queue claim", TWIN, "jobs"), ops, ours_claim, raw_claim
        )
        if None in jobs or None in rows:
            raise AssertionError("a claim found no job although every enqueued one is waiting")

        async def ours_complete(i: int) -> None:
            job = jobs[i]
            assert job is not None
            await queue.complete(job, {"ok": True})

        await h.interleave(
            h.open("postgres", "complete", "queue complete", TWIN, "jobs"),
            ops,
            ours_complete,
            lambda i: self.raw_complete(self.conn, rows[i]),
            running_index=True,
        )

        tasks, per_task = self.sizes.tasks, self.sizes.per_task

        def enqueue_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            if side == "ours":
                return queue.enqueue(payload(j))
            return self.raw_enqueue(self.pool, payload(j))

        section = h.open(
            "postgres",
            "enqueue_concurrent",
            f"queue enqueue x{tasks} tasks",
            TWIN,
            "jobs",
            concurrent=True,
        )
        await h.blocks(section, per_task, enqueue_task, tasks=tasks)

        def claim_task(side: Side, rep: int, task: int, j: int) -> Awaitable[object]:
            consumer = f"consumer-{task}"
            if side == "ours":
                return self.ours_claim_complete(consumer)
            return self.raw_claim_complete(consumer)

        section = h.open(
            "postgres",
            "claim_complete_concurrent",
            f"queue claim+complete x{tasks} tasks",
            TWIN,
            "jobs",
            concurrent=True,
        )
        await h.blocks(section, per_task, claim_task, tasks=tasks)
