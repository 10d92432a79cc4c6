"""WorkQueue on real PostgreSQL and on SQLite files: order, delay, dedupe, leases, retries,
exactly-once claims (SPEC §6). Every behaviour is the same on both.

The PostgreSQL table is shared by every test of a worker, so each test uses a queue of its own
name; each SQLite test has a migrated file of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.coordination import Job, WorkQueue
from lionagi_qe.db.engine import create_engine
from lionagi_qe.errors import (
    ClosedError,
    InvalidArgumentError,
    LeaseLostError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
)
from lionagi_qe.testing.servers import create_database, drop_database

pytestmark = [pytest.mark.integration]

DIALECTS = [
    pytest.param("postgresql", id="postgres", marks=[pytest.mark.postgres]),
    pytest.param("sqlite", id="sqlite"),
]


@pytest.fixture(params=DIALECTS)
def database(request: pytest.FixtureRequest) -> AsyncEngine | str:
    """The worker's PostgreSQL engine, or the URL of a migrated SQLite file of the test's own."""
    if request.param == "postgresql":
        pg_engine: AsyncEngine = request.getfixturevalue("aqe_engine")
        return pg_engine
    url: str = request.getfixturevalue("aqe_sqlite_url")
    return url


@pytest.fixture
async def engine(database: AsyncEngine | str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's database (an SQLite engine is the test's own, disposed after)."""
    if isinstance(database, AsyncEngine):
        yield database
        return
    sqlite_engine = create_engine(database)
    try:
        yield sqlite_engine
    finally:
        await sqlite_engine.dispose()


@pytest.fixture
async def queue(engine: AsyncEngine) -> AsyncIterator[WorkQueue]:
    """A queue with a unique name on the test's database."""
    work = WorkQueue(engine, f"test-{uuid.uuid4().hex}")
    try:
        yield work
    finally:
        await work.close()


async def _claim(queue: WorkQueue, consumer: str = "c1", lease: float = 30.0) -> Job:
    job = await queue.claim(consumer, lease=lease)
    assert job is not None
    return job


async def test_priority_then_fifo(queue: WorkQueue) -> None:
    ids = {
        name: await queue.enqueue({"n": name}, priority=p)
        for name, p in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]
    }
    order = []
    while (job := await queue.claim("c1")) is not None:
        order.append(job.payload["n"])
        assert job.id == ids[job.payload["n"]]
        assert job.state == "active" and job.attempts == 1 and job.consumer == "c1"
        assert job.lease_expires_at is not None and job.lease_expires_at.tzinfo is not None
    assert order == ["b", "d", "a", "c", "e"]


async def test_delay(queue: WorkQueue) -> None:
    job_id = await queue.enqueue("later", delay=0.5)
    assert await queue.claim("c1") is None
    await asyncio.sleep(0.7)
    job = await _claim(queue)
    assert job.id == job_id and job.payload == "later"


async def test_dedupe_while_live_then_new_after_completion(queue: WorkQueue) -> None:
    first = await queue.enqueue({"x": 1}, dedupe_key="k")
    assert await queue.enqueue({"x": 2}, dedupe_key="k") == first
    job = await _claim(queue)
    assert await queue.enqueue({"x": 3}, dedupe_key="k") == first  # active is still live
    await queue.complete(job)
    second = await queue.enqueue({"x": 4}, dedupe_key="k")
    assert second != first
    assert (await _claim(queue)).payload == {"x": 4}
    assert await queue.enqueue({"x": 5}, dedupe_key="other") not in {first, second}
    stats = await queue.stats()
    assert stats["done"] == 1 and stats["active"] == 1 and stats["queued"] == 1


async def test_concurrent_consumers_process_every_job_exactly_once(engine: AsyncEngine) -> None:
    queue = WorkQueue(engine, f"test-{uuid.uuid4().hex}")
    expected = {await queue.enqueue({"i": i}) for i in range(200)}
    processed: list[str] = []
    holding: set[str] = set()
    overlaps: list[str] = []

    async def consumer(name: str) -> None:
        while (job := await queue.claim(name, lease=30.0)) is not None:
            if job.id in holding:
                overlaps.append(job.id)
            holding.add(job.id)
            processed.append(job.id)
            await asyncio.sleep(0)
            holding.discard(job.id)
            await queue.complete(job, {"by": name})

    await asyncio.gather(*(consumer(f"consumer-{n}") for n in range(6)))
    assert overlaps == []
    assert len(processed) == len(set(processed)), "a job was handed out twice"
    assert set(processed) == expected, "a job was never processed"
    stats = await queue.stats()
    assert stats["done"] == 200 and stats["queued"] == stats["active"] == 0


async def test_crashed_consumer_job_is_reclaimed(queue: WorkQueue) -> None:
    job_id = await queue.enqueue("work")
    crashed = await _claim(queue, "crashy", lease=0.2)
    assert await queue.claim("healthy") is None  # lease still valid
    await asyncio.sleep(0.35)
    reclaimed = await _claim(queue, "healthy")
    assert reclaimed.id == job_id and reclaimed.attempts == 2
    with pytest.raises(LeaseLostError):
        await queue.complete(crashed, "stale")
    with pytest.raises(LeaseLostError):
        await queue.fail(crashed, "stale")
    await queue.complete(reclaimed, "fresh")
    stats = await queue.stats()
    assert stats["done"] == 1 and stats["active"] == 0 and stats["queued"] == 0


async def test_same_consumer_name_reclaim_is_told_apart_by_attempt(queue: WorkQueue) -> None:
    await queue.enqueue("work")
    old = await _claim(queue, "same", lease=0.2)
    await asyncio.sleep(0.35)
    new = await _claim(queue, "same")
    with pytest.raises(LeaseLostError):
        await queue.complete(old)
    await queue.complete(new)


async def test_heartbeat_extends_and_fails_after_loss(queue: WorkQueue) -> None:
    await queue.enqueue("a")
    job = await _claim(queue, "c1", lease=0.3)
    extended = await queue.heartbeat(job, lease=30)
    assert job.lease_expires_at is not None and extended.lease_expires_at is not None
    assert extended.lease_expires_at > job.lease_expires_at
    await asyncio.sleep(0.45)
    assert await queue.claim("c2") is None  # the heartbeat kept it
    await queue.complete(extended)

    await queue.enqueue("b")
    lost = await _claim(queue, "c1", lease=0.2)
    await asyncio.sleep(0.35)
    taker = await _claim(queue, "c2")
    with pytest.raises(LeaseLostError):
        await queue.heartbeat(lost)
    with pytest.raises(LeaseLostError):
        await queue.heartbeat(job)  # done: nothing to extend
    await queue.complete(taker)


async def test_fail_retries_until_max_attempts_then_dead(queue: WorkQueue) -> None:
    job_id = await queue.enqueue("flaky", max_attempts=3)
    states = []
    for attempt in (1, 2, 3):
        job = await _claim(queue)
        assert job.id == job_id and job.attempts == attempt
        states.append(await queue.fail(job, f"boom {attempt}"))
    assert states == ["queued", "queued", "dead"]
    assert await queue.claim("c1") is None
    assert (await queue.stats())["dead"] == 1


async def test_fail_with_backoff_delays_the_retry(queue: WorkQueue) -> None:
    await queue.enqueue("flaky")
    await queue.fail(await _claim(queue), "boom", retry_delay=0.5)
    assert await queue.claim("c1") is None
    await asyncio.sleep(0.7)
    assert (await _claim(queue)).attempts == 2


async def test_lapsed_job_on_last_attempt_goes_dead(queue: WorkQueue) -> None:
    await queue.enqueue("poison", max_attempts=1)
    await _claim(queue, "crashy", lease=0.2)
    await asyncio.sleep(0.35)
    assert await queue.claim("c2") is None
    assert (await queue.stats())["dead"] == 1


async def test_stats_counts_every_state(queue: WorkQueue) -> None:
    assert await queue.stats() == {"queued": 0, "active": 0, "done": 0, "failed": 0, "dead": 0}
    for i in range(4):
        await queue.enqueue(i, max_attempts=1)
    await queue.complete(await _claim(queue))
    await queue.fail(await _claim(queue), "x")
    await _claim(queue)
    assert await queue.stats() == {"queued": 1, "active": 1, "done": 1, "failed": 0, "dead": 1}


async def test_purge_removes_only_finished(queue: WorkQueue, engine: AsyncEngine) -> None:
    other = WorkQueue(engine, f"test-{uuid.uuid4().hex}")
    await other.enqueue("x")
    await other.complete(await _claim(other))
    for i in range(4):
        await queue.enqueue(i, max_attempts=1)
    await queue.complete(await _claim(queue))
    await queue.fail(await _claim(queue), "x")
    await _claim(queue)
    assert await queue.purge(older_than=3600) == 0
    assert await queue.purge() == 2
    assert await queue.stats() == {"queued": 1, "active": 1, "done": 0, "failed": 0, "dead": 0}
    assert (await other.stats())["done"] == 1  # another queue's jobs are untouched


async def test_clear_removes_every_job_of_the_queue_only(
    queue: WorkQueue, engine: AsyncEngine
) -> None:
    other = WorkQueue(engine, f"test-{uuid.uuid4().hex}")
    await other.enqueue("kept")
    for i in range(3):
        await queue.enqueue(i, max_attempts=1)
    held = await _claim(queue)
    await queue.complete(await _claim(queue))
    assert await queue.clear() == 3
    assert await queue.stats() == dict.fromkeys(("queued", "active", "done", "failed", "dead"), 0)
    with pytest.raises(LeaseLostError):
        await queue.complete(held)
    assert (await other.stats())["queued"] == 1
    assert await other.clear() == 1


async def test_fifo_within_a_priority_for_a_burst(queue: WorkQueue) -> None:
    """Jobs enqueued back to back (SQLite's clock has millisecond steps) keep their order."""
    ids = [await queue.enqueue(i) for i in range(40)]
    assert [(await _claim(queue)).id for _ in ids] == ids


async def test_bad_input_raises_before_io() -> None:
    # Nothing listens on port 1: any I/O would raise BackendUnavailableError instead.
    queue = WorkQueue("postgresql://nobody@127.0.0.1:1/none", "q")
    try:
        with pytest.raises(SerializationError):
            await queue.enqueue(float("nan"))
        with pytest.raises(SerializationError):
            await queue.enqueue({"s": "nul\x00"})
        with pytest.raises(InvalidArgumentError):
            await queue.enqueue(1, max_attempts=0)
        with pytest.raises(InvalidArgumentError):
            await queue.enqueue(1, delay=-1)
        with pytest.raises(InvalidArgumentError):
            await queue.claim("", lease=1)
        with pytest.raises(InvalidArgumentError):
            await queue.claim("c", lease=0)
    finally:
        await queue.close()


async def test_complete_with_bad_result_raises_and_keeps_the_job(queue: WorkQueue) -> None:
    await queue.enqueue("a")
    job = await _claim(queue)
    with pytest.raises(SerializationError):
        await queue.complete(job, float("inf"))
    await queue.complete(job, {"ok": True})


async def test_sqlite_claims_are_exactly_once_across_engines(aqe_sqlite_url: str) -> None:
    """Two engines on one SQLite file (as two processes would be): each job is claimed once."""
    engines = [create_engine(aqe_sqlite_url) for _ in range(2)]
    name = f"test-{uuid.uuid4().hex}"
    queues = [WorkQueue(engine, name) for engine in engines]
    try:
        expected = {await queues[0].enqueue(i) for i in range(60)}
        claimed: list[str] = []

        async def consumer(queue: WorkQueue, label: str) -> None:
            while (job := await queue.claim(label)) is not None:
                claimed.append(job.id)
                await queue.complete(job)

        await asyncio.gather(
            *(consumer(queues[n % 2], f"consumer-{n}") for n in range(4)),
        )
        assert sorted(claimed) == sorted(expected)
        assert (await queues[1].stats())["done"] == 60
    finally:
        for engine in engines:
            await engine.dispose()


async def test_sqlite_url_queue_owns_its_engine(aqe_sqlite_url: str) -> None:
    queue = WorkQueue(aqe_sqlite_url, "q")
    try:
        assert repr(queue) == "<WorkQueue 'q' on sqlite>"
        job_id = await queue.enqueue({"hello": "world"}, dedupe_key="once")
        assert await queue.enqueue({"hello": "again"}, dedupe_key="once") == job_id
        job = await _claim(queue)
        assert job.payload == {"hello": "world"}
        assert job.lease_expires_at is not None and job.lease_expires_at.tzinfo is not None
        await queue.complete(job, {"ok": True})
        assert (await queue.stats())["done"] == 1
    finally:
        await queue.close()
    with pytest.raises(ClosedError):
        await queue.stats()


async def test_sqlite_without_the_schema_names_the_upgrade(tmp_path: Path) -> None:
    queue = WorkQueue(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", "q")
    try:
        with pytest.raises(SchemaMissingError, match="lionagi-qe db upgrade"):
            await queue.enqueue("x")
    finally:
        await queue.close()


@pytest.mark.postgres
async def test_postgres_without_the_schema_names_the_upgrade(aqe_postgres_server: Any) -> None:
    """PostgreSQL never migrates by itself: a missing table says what to run."""
    name = f"aqe_test_queue_{uuid.uuid4().hex[:8]}"
    url = create_database(aqe_postgres_server.url, name)
    queue = WorkQueue(url, "q")
    try:
        with pytest.raises(SchemaMissingError, match="lionagi-qe db upgrade"):
            await queue.stats()
    finally:
        await queue.close()
        drop_database(aqe_postgres_server.url, name)


async def test_unsupported_database_is_refused() -> None:
    with pytest.raises(PersistenceError):
        WorkQueue("mysql://nobody@127.0.0.1:1/none", "q")
    with pytest.raises(InvalidArgumentError):
        WorkQueue(42, "q")  # type: ignore[arg-type]


@pytest.mark.postgres
@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh-burst", "analyzed"])
async def test_claim_reads_a_handful_of_rows_however_long_the_queue(
    aqe_engine: AsyncEngine, analyzed: bool
) -> None:
    """The claim's plan, generic plan included (prepared statements switch to it), reads a few
    index entries, not every queued job: 20,000 queued and 20,000 finished jobs here, just
    inserted (statistics not yet updated, as after a burst) or analysed."""
    import json

    from sqlalchemy import text

    from lionagi_qe.coordination.queue import _statements

    name = f"plan-{uuid.uuid4().hex[:8]}"
    async with aqe_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO queue_jobs (id, queue, payload, state, finished_at) "
                "SELECT gen_random_uuid(), :q, '{}'::jsonb, "
                "CASE WHEN g % 2 = 0 THEN 'done' ELSE 'queued' END, "
                "CASE WHEN g % 2 = 0 THEN now() END FROM generate_series(1, 40000) g"
            ),
            {"q": name},
        )
        if analyzed:
            await conn.execute(text("ANALYZE queue_jobs"))
    compiled = _statements("postgresql").claim.compile(dialect=aqe_engine.dialect)
    given = {"b_queue": name, "consumer": "planner", "lease": 30.0}
    values = [given.get(key, compiled.params.get(key)) for key in compiled.positiontup or ()]

    def literal(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return repr(value)

    plans: dict[str, Any] = {}
    try:
        async with aqe_engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            await raw.execute(f"PREPARE claim_plan AS {compiled.string}")
            arguments = ", ".join(literal(value) for value in values)
            for mode in ("force_custom_plan", "force_generic_plan"):
                await raw.execute(f"SET plan_cache_mode = {mode}")
                try:
                    async with raw.transaction():  # EXPLAIN ANALYZE runs the claim: undo it
                        found = await raw.fetchval(
                            f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_plan({arguments})"
                        )
                        # SQLAlchemy's asyncpg setup decodes json already.
                        plans[mode] = found if isinstance(found, list) else json.loads(found)
                        raise _Rollback
                except _Rollback:
                    pass
            await raw.execute("DEALLOCATE claim_plan")
            await raw.execute("RESET plan_cache_mode")
    finally:
        async with aqe_engine.begin() as conn:
            await conn.execute(text("DELETE FROM queue_jobs WHERE queue = :q"), {"q": name})

    def rows_read(node: dict[str, Any]) -> int:
        own = int(node.get("Actual Rows", 0)) if "Scan" in node.get("Node Type", "") else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    for mode, plan in plans.items():
        assert rows_read(plan[0]["Plan"]) <= 10, (mode, json.dumps(plan, indent=1)[:3000])
    assert set(plans) == {"force_custom_plan", "force_generic_plan"}


class _Rollback(Exception):
    """Raised to roll back a transaction on purpose."""
