"""Cancellation storms: calls cancelled at random moments leak nothing and mix nothing (SPEC §11).

200 tasks run mixed calls on every path — ``PostgresMemory`` store, retrieve, coalesced bursts
of retrieves and stores, ``store_many`` and ``clear_partition`` (transactions), ``increment``;
``WorkQueue`` claim/complete; ``DatabaseManager.update_q_value`` / ``batch_update_q_values``;
``CachedMemory`` reads and writes — and are cancelled at random moments, mid-query and
mid-transaction, for several rounds. Every call checks its own answer (a retrieve of key *i*
returns value *i*, a Q-update returns its own reward, a claimed job carries its own payload,
a counter only moves forward), so a connection handed on in the middle of another call's
protocol exchange shows up as a wrong answer or an error. Afterwards:

- no pooled connection is checked out beyond what the memories keep between calls
  (``held_connections``);
- no server session of the test's database is ``idle in transaction`` and none holds a lock;
- the stores still answer every key correctly.

Runs on the shared server in the worker's own database (cancellation needs no private server).
The storm's pools are small and fixed (:data:`POOLS`: 12 server sessions in all) and the peak
of its sessions in ``pg_stat_activity`` is asserted: the whole suite runs on two workers beside
other connection-hungry tests (the soak) against servers with ``max_connections = 100``, and
200 tasks queueing on a few connections still get cancelled at checkout, mid-query and
mid-transaction (every connection is busy at every cancellation moment).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from pg_activity import SessionPeak
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import DatabaseManager, WorkQueue
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.liveness import install_liveness_check

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]

TASKS = 200
ROUNDS = 3
FIXED = 100  # keys written once before the storm, read by everyone
JOBS = 400
AGENT = "test-executor"
#: Seconds a cancelled task may take to finish unwinding.
STUCK_AFTER = 10.0
SQL_OPS = (
    "store",
    "retrieve",
    "burst_retrieve",
    "burst_store",
    "store_many",
    "clear_partition",
    "increment",
    "claim_complete",
    "q_update",
    "q_batch",
)
CACHED_OPS = ("cached_read", "cached_write")
#: Server sessions per engine of the storm: the memories' engine, the queue's, the learning
#: store's. Their sum is the storm's whole budget of PostgreSQL connections.
POOLS = {"memory": 6, "queue": 3, "learning": 3}
BUDGET = sum(POOLS.values())


def _where(task: asyncio.Task[Any]) -> list[str]:
    """The chain of coroutines ``task`` is suspended in."""
    chain: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        chain.append(getattr(coro, "__qualname__", type(coro).__name__))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


@dataclass
class Fleet:
    memory: PostgresMemory
    cached: CachedMemory
    cached_db: PostgresMemory
    memory_engine: AsyncEngine
    db: DatabaseManager
    queue: WorkQueue
    queue_engine: AsyncEngine
    run: str
    url: str
    fixed: dict[str, Any]
    cached_fixed: dict[str, Any]
    payloads: dict[str, Any]

    def leaked(self) -> dict[str, int]:
        """Connections checked out beyond what the memories keep between calls."""
        held = self.memory.held_connections + self.cached_db.held_connections
        return {
            "memory": self.memory_engine.sync_engine.pool.checkedout() - held,  # type: ignore[attr-defined]
            "learning": self.db.engine.sync_engine.pool.checkedout(),  # type: ignore[attr-defined]
            "queue": self.queue_engine.sync_engine.pool.checkedout(),  # type: ignore[attr-defined]
        }


def _tag(run: str, role: str) -> dict[str, Any]:
    """Engine options tagging every session with ``application_name`` ``aqe-storm-{run}-…``."""
    return {"connect_args": {"server_settings": {"application_name": f"aqe-storm-{run}-{role}"}}}


def _engine(url: str, run: str, role: str) -> AsyncEngine:
    engine = create_engine(
        url, pool_size=POOLS[role], max_overflow=0, pool_timeout=20, **_tag(run, role)
    )
    install_liveness_check(engine)
    return engine


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(aqe_database_url: str, aqe_redis_url: str) -> AsyncIterator[Fleet]:
    run = uuid.uuid4().hex[:8]
    memory_engine = _engine(aqe_database_url, run, "memory")
    queue_engine = _engine(aqe_database_url, run, "queue")
    db = DatabaseManager(
        aqe_database_url,
        min_connections=0,
        max_connections=POOLS["learning"],
        pool_timeout=20,
        **_tag(run, "learning"),
    )
    install_liveness_check(db.engine)
    memory = PostgresMemory(memory_engine)
    cached_db = PostgresMemory(memory_engine)
    prefix = f"aqe-test:cancel:{run}:"
    cached = CachedMemory(cached_db, redis_url=aqe_redis_url, prefix=prefix)
    queue = WorkQueue(queue_engine, f"cancel-{run}")
    fixed = {f"aqe/cx/{run}/fixed/{i}": {"key": i, "run": run} for i in range(FIXED)}
    cached_fixed = {f"aqe/cx/{run}/cfixed/{i}": [i, run] for i in range(FIXED)}
    await memory.store_many(fixed)
    await memory.store_many(cached_fixed)
    payloads: dict[str, Any] = {}
    for n in range(JOBS):
        payload = {"job": n, "run": run}
        payloads[await queue.enqueue(payload)] = payload
    built = Fleet(
        memory=memory,
        cached=cached,
        cached_db=cached_db,
        memory_engine=memory_engine,
        db=db,
        queue=queue,
        queue_engine=queue_engine,
        run=run,
        url=aqe_database_url,
        fixed=fixed,
        cached_fixed=cached_fixed,
        payloads=payloads,
    )
    try:
        yield built
    finally:
        # Bounded: a test that found calls stuck must not hang here too.
        for closing in (queue.clear(), cached.close(), memory.close(), queue.close(), db.close()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 10)
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(aqe_redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()
        async with memory_engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM qe_memory WHERE key LIKE :p"), {"p": f"aqe/cx/{run}/%"}
            )
        await memory_engine.dispose()
        await queue_engine.dispose()


class Worker:
    """One task's calls; each checks its own answer."""

    def __init__(self, fleet: Fleet, index: int, rng: random.Random) -> None:
        self.fleet = fleet
        self.index = index
        self.rng = rng
        self.base = f"aqe/cx/{fleet.run}/w{index}"
        self.counter = f"{self.base}/counter"
        self.last_count = 0
        self.calls = 0
        self.ops: list[Callable[[], Awaitable[None]]] = [
            self.store,
            self.retrieve,
            self.burst_retrieve,
            self.burst_store,
            self.store_many,
            self.clear_partition,
            self.increment,
            self.claim_complete,
            self.q_update,
            self.q_batch,
            self.cached_read,
            self.cached_write,
        ]

    def _fixed(self) -> tuple[str, Any]:
        key = f"aqe/cx/{self.fleet.run}/fixed/{self.rng.randrange(FIXED)}"
        return key, self.fleet.fixed[key]

    async def store(self) -> None:
        key = f"{self.base}/s/{self.rng.randrange(5)}"
        value = {"key": key, "n": self.rng.random()}
        assert await self.fleet.memory.store(key, value) >= 1
        assert await self.fleet.memory.retrieve(key) == value

    async def retrieve(self) -> None:
        key, value = self._fixed()
        assert await self.fleet.memory.retrieve(key) == value

    async def burst_retrieve(self) -> None:
        picks = [self._fixed() for _ in range(10)]
        got = await asyncio.gather(*(self.fleet.memory.retrieve(key) for key, _ in picks))
        assert got == [value for _, value in picks]

    async def burst_store(self) -> None:
        items = [(f"{self.base}/b/{i}", {"i": i, "r": self.rng.random()}) for i in range(10)]
        versions = await asyncio.gather(*(self.fleet.memory.store(k, v) for k, v in items))
        assert all(isinstance(v, int) and v >= 1 for v in versions)
        assert await self.fleet.memory.retrieve_many([k for k, _ in items]) == dict(items)

    async def store_many(self) -> None:
        items = {f"{self.base}/m/{i}": [self.index, i] for i in range(20)}
        assert (
            await self.fleet.memory.store_many(items, partition=f"cx-{self.fleet.run}-{self.index}")
            == 20
        )

    async def clear_partition(self) -> None:
        cleared = await self.fleet.memory.clear_partition(f"cx-{self.fleet.run}-{self.index}")
        assert 0 <= cleared <= 20

    async def increment(self) -> None:
        value = await self.fleet.memory.increment(self.counter)
        # Only this task moves its counter; a cancelled increment may have applied.
        assert isinstance(value, int) and value > self.last_count
        self.last_count = value

    async def claim_complete(self) -> None:
        job = await self.fleet.queue.claim(f"w{self.index}", lease=120)
        if job is None:
            return
        assert job.payload == self.fleet.payloads[job.id], "a claim got another job's payload"
        await self.fleet.queue.complete(job, {"by": self.index})

    async def q_update(self) -> None:
        reward = float(self.rng.randrange(1, 10**9))
        # alpha 1, gamma 0: the new value is the reward itself, whatever was there.
        state = f"cx-{self.fleet.run}-{self.index % 20}"
        got = await self.fleet.db.update_q_value(AGENT, state, "a", reward, 0.0, 1.0, 0.0)
        assert got == reward

    async def q_batch(self) -> None:
        updates = [
            {
                "agent_type": AGENT,
                "state_hash": f"cx-{self.fleet.run}-{(self.index + i) % 20}",
                "action_hash": f"b{i}",
                "reward": 1.0,
                "next_max_q": 0.0,
                "alpha": 0.5,
                "gamma": 0.0,
            }
            for i in range(3)
        ]
        assert await self.fleet.db.batch_update_q_values(updates) == 3

    async def cached_read(self) -> None:
        key = f"aqe/cx/{self.fleet.run}/cfixed/{self.rng.randrange(FIXED)}"
        assert await self.fleet.cached.retrieve(key) == self.fleet.cached_fixed[key]

    async def cached_write(self) -> None:
        key = f"{self.base}/c"
        value = {"key": key, "r": self.rng.random()}
        await self.fleet.cached.store(key, value)
        assert await self.fleet.cached.retrieve(key) == value

    async def loop(self) -> None:
        while True:
            self.calls += 1
            await self.rng.choice(self.ops)()


async def _settled(probe: Callable[[], Awaitable[Any]], good: Callable[[Any], bool]) -> Any:
    """Poll ``probe`` until ``good`` (server backends and cancelled checkouts end
    asynchronously); return the last value."""
    value = await probe()
    for _ in range(100):
        if good(value):
            break
        await asyncio.sleep(0.05)
        value = await probe()
    return value


async def _server_state(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        idle_in_tx = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            )
        )
        locks = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE a.datname = current_database() AND l.pid <> pg_backend_pid()"
            )
        )
        active = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            )
        )
    return {
        "idle_in_transaction": int(idle_in_tx or 0),
        "locks": int(locks or 0),
        "active": int(active or 0),
    }


async def _round(workers: list[Worker], rng: random.Random, round_: int) -> None:
    """Start every worker, cancel each at a random moment, check each ended by cancellation."""
    tasks = [asyncio.create_task(worker.loop()) for worker in workers]

    async def cancel_later(task: asyncio.Task[None]) -> None:
        await asyncio.sleep(rng.uniform(0.01, 0.6))
        task.cancel()

    await asyncio.gather(*(cancel_later(task) for task in tasks))
    _, stuck = await asyncio.wait(tasks, timeout=STUCK_AFTER)
    assert not stuck, (
        f"round {round_}: {len(stuck)} cancelled tasks never finished, in "
        f"{Counter(' > '.join(_where(task)[1:3]) for task in stuck)}, e.g. "
        f"{[_where(t) for t in stuck if 'Worker.burst_retrieve' not in _where(t)][:4]}"
    )
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    wrong = [o for o in outcomes if not isinstance(o, asyncio.CancelledError)]
    assert not wrong, f"round {round_}: {[repr(o) for o in wrong[:5]]}"


async def _storm(fleet: Fleet, ops: tuple[str, ...]) -> None:
    rng = random.Random(20261124)
    workers = [Worker(fleet, i, random.Random(rng.random())) for i in range(TASKS)]
    for worker in workers:
        worker.ops = [op for op in worker.ops if op.__name__ in ops]
    cancelled = 0
    async with SessionPeak(fleet.url, f"aqe-storm-{fleet.run}-") as sessions:
        for round_ in range(ROUNDS):
            await _round(workers, rng, round_)
            cancelled += len(workers)
    print(f"storm sessions: peak {sessions.peak} of {BUDGET} over {sessions.samples} samples")
    assert 0 < sessions.peak <= BUDGET, f"{sessions.peak} sessions, budget {BUDGET}"

    calls = sum(worker.calls for worker in workers)
    leaked = await _settled(lambda: asyncio.sleep(0, fleet.leaked()), lambda v: not any(v.values()))
    state = await _settled(
        lambda: _server_state(fleet.memory_engine),
        lambda v: not v["idle_in_transaction"] and not v["locks"],
    )
    print(
        f"{cancelled} tasks cancelled over {ROUNDS} rounds, {calls} calls; leaked {leaked}; "
        f"server {state}"
    )
    assert leaked == {"memory": 0, "learning": 0, "queue": 0}
    assert state["idle_in_transaction"] == 0, "a cancelled call left a transaction open"
    assert state["locks"] == 0, "a cancelled call left a lock held"

    # The stores still answer, each call its own answer (reads coalesce here).
    got = await asyncio.gather(*(fleet.memory.retrieve(key) for key in fleet.fixed))
    assert got == list(fleet.fixed.values())
    if "cached_read" in ops:
        got = await asyncio.gather(*(fleet.cached.retrieve(k) for k in fleet.cached_fixed))
        assert got == list(fleet.cached_fixed.values())
    for worker in workers[:20]:
        for op in worker.ops:
            await op()
    assert await _settled(
        lambda: asyncio.sleep(0, fleet.leaked()), lambda v: not any(v.values())
    ) == {"memory": 0, "learning": 0, "queue": 0}


@pytest.mark.timeout(60)
async def test_cancellation_storm_on_sql_paths(
    fleet: Fleet, recwarn: pytest.WarningsRecorder
) -> None:
    """PostgresMemory (direct path, coalescer, transactions), WorkQueue and DatabaseManager."""
    await _storm(fleet, SQL_OPS)
    gc.collect()
    # SQLAlchemy's safety net returns a connection dropped without check-in when it is
    # garbage collected, with this warning: a leak the pool counts would not show.
    dropped = [str(w.message) for w in recwarn if "garbage collector" in str(w.message)]
    assert not dropped, f"{len(dropped)} connections dropped without check-in: {dropped[0]}"


@pytest.mark.timeout(60)
async def test_cancellation_storm_on_cached_memory(fleet: Fleet) -> None:
    """CachedMemory reads and writes beside the SQL paths."""
    await _storm(fleet, SQL_OPS + CACHED_OPS)
