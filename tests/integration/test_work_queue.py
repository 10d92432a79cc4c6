"""WorkQueue on real PostgreSQL: order, delay, dedupe, leases, retries, exactly-once (SPEC §6).

The table is shared by every test of a worker, so each test uses a queue of its own name.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.coordination import Job, WorkQueue
from lionagi_qe.db.engine import create_engine
from lionagi_qe.errors import InvalidArgumentError, LeaseLostError, SerializationError

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture
async def queue(aqe_engine: AsyncEngine) -> AsyncIterator[WorkQueue]:
    """A queue with a unique name on the worker's database."""
    work = WorkQueue(aqe_engine, f"test-{uuid.uuid4().hex}")
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


async def test_concurrent_consumers_process_every_job_exactly_once(
    aqe_engine: AsyncEngine,
) -> None:
    queue = WorkQueue(aqe_engine, f"test-{uuid.uuid4().hex}")
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


async def test_purge_removes_only_finished(queue: WorkQueue, aqe_engine: AsyncEngine) -> None:
    other = WorkQueue(aqe_engine, f"test-{uuid.uuid4().hex}")
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


async def test_sqlite_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    with pytest.raises(InvalidArgumentError):
        WorkQueue(url, "q")
    engine = create_engine(url)
    try:
        with pytest.raises(InvalidArgumentError):
            WorkQueue(engine, "q")
    finally:
        await engine.dispose()
