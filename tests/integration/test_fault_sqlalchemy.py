"""Connections lost mid-statement on the SQLAlchemy path: DatabaseManager and WorkQueue (§11).

``PostgresMemory``'s direct path has its own tests (``test_fault_postgres.py``). The learning
store and the work queue run on SQLAlchemy's pool, each call one autocommit statement (see
:mod:`lionagi_qe.coordination.queue` and :mod:`lionagi_qe.learning.store`); neither retries.
Both reach the worker's database here through a :class:`~lionagi_qe.testing.faults.FaultProxy`,
which resets their connections while a statement is in flight. A locker connection of its own
(straight to the server) holds the lock the statement needs, so the statement is provably
running on the server when its connection dies, and the server completes it once the lock is
released (PostgreSQL does not notice a vanished client while it waits on a lock): the write is
*applied although the caller saw a failure*. That is the case a retry would apply twice.

Promises, for every call:

- it succeeds or raises :class:`~lionagi_qe.errors.BackendUnavailableError` (never a raw
  driver error, never ``LeaseLostError`` from a resend of its own applied write) within
  :data:`CALL_BOUND` seconds;
- no write is applied twice: one job per enqueue, one visit per Q-value update, a completed
  job completed once;
- the pool heals: the very next calls on the same objects succeed;
- no connection stays checked out, and no proxied connection outlives the pool's own.

A reply cut in the middle (``reset_mid_reply``) is covered too, for ``claim`` (the job is leased
although the caller saw a failure; it comes back once the lease lapses).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pg_activity import dsn
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import DatabaseManager, WorkQueue
from lionagi_qe.db.engine import create_engine
from lionagi_qe.errors import BackendUnavailableError
from lionagi_qe.testing.faults import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "coverage-analyzer"
#: Longest any call may take (a hang fails the test).
CALL_BOUND = 10.0
POOL = 3


@dataclass
class Rig:
    """The stores behind the proxy, and a locker straight to the server."""

    run: str
    proxy: FaultProxy
    db: DatabaseManager
    queue: WorkQueue
    queue_engine: AsyncEngine
    locker: asyncpg.Connection
    app: str

    def checked_out(self) -> dict[str, int]:
        return {
            "queue": self.queue_engine.sync_engine.pool.checkedout(),  # type: ignore[attr-defined]
            "learning": self.db.engine.sync_engine.pool.checkedout(),  # type: ignore[attr-defined]
        }

    def pooled(self) -> int:
        """Connections the two pools hold, idle or in use."""
        return sum(
            engine.sync_engine.pool.checkedin() + engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
            for engine in (self.queue_engine, self.db.engine)
        )

    async def waiting_pid(self) -> int:
        """The backend of ours that waits on a lock (polls until there is one)."""
        for _ in range(250):
            # The locker is inside its transaction, where pg_stat_activity is a snapshot taken
            # at its first read: without clearing it, a backend that connected later (a cold
            # pool) would never show up.
            await self.locker.execute("SELECT pg_stat_clear_snapshot()")
            pid = await self.locker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = $1",
                self.app,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.02)
        raise AssertionError("the call never blocked on the lock")

    async def settled(self) -> None:
        """Nothing checked out and no proxied connection beyond the pools' own (polled:
        connections the server or the proxy closed are given back asynchronously)."""
        for _ in range(100):
            if not any(self.checked_out().values()) and self.proxy.live <= self.pooled():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"checked out {self.checked_out()}, proxied {self.proxy.live}, pooled {self.pooled()}"
        )


@pytest_asyncio.fixture(loop_scope="session")
async def rig(aqe_database_url: str) -> AsyncIterator[Rig]:
    run = uuid.uuid4().hex[:8]
    app = f"aqe-test-sqlfault-{run}"
    tag: dict[str, Any] = {"connect_args": {"server_settings": {"application_name": app}}}
    target = make_url(aqe_database_url)
    proxy = await FaultProxy(target.host or "127.0.0.1", target.port or 5432).start()
    url = make_url(aqe_database_url).set(host=proxy.host, port=proxy.port)
    url_text = url.render_as_string(hide_password=False)
    db = DatabaseManager(url_text, min_connections=0, max_connections=POOL, pool_timeout=5, **tag)
    queue_engine = create_engine(url_text, pool_size=POOL, pool_timeout=5, **tag)
    locker = await asyncpg.connect(dsn(aqe_database_url))
    built = Rig(
        run=run,
        proxy=proxy,
        db=db,
        queue=WorkQueue(queue_engine, f"sqlfault-{run}"),
        queue_engine=queue_engine,
        locker=locker,
        app=app,
    )
    try:
        yield built
    finally:
        if proxy.mode.value != "pass":
            proxy.pass_through()
        with contextlib.suppress(Exception):
            await locker.execute("ROLLBACK")
        await locker.execute("DELETE FROM queue_jobs WHERE queue = $1", built.queue.name)
        await locker.execute(
            "DELETE FROM q_values WHERE agent_type = $1 AND state_hash LIKE $2",
            AGENT,
            f"sqlfault-{run}-%",
        )
        await locker.close()
        await built.queue.close()
        await db.close()
        await queue_engine.dispose()
        await proxy.aclose()


async def _dropped_in_flight(
    rig: Rig, call: Awaitable[Any], lock_sql: str, *, may_succeed: bool = False
) -> Any:
    """Hold ``lock_sql``'s lock, start ``call``, reset its connection once it waits on the lock,
    release the lock; return what the call raised (or, if ``may_succeed``, returned)."""
    await rig.locker.execute("BEGIN")
    await rig.locker.execute(lock_sql)
    task: asyncio.Task[Any] = asyncio.ensure_future(call)
    released = False
    try:
        await rig.waiting_pid()
        assert rig.proxy.drop_connections() >= 1
        # The call should fail as soon as its connection is gone; give it a moment, then let
        # the orphaned statement (and anything the call may have resent) run.
        await asyncio.wait({task}, timeout=1.0)
        await rig.locker.execute("ROLLBACK")
        released = True
        try:
            result = await asyncio.wait_for(task, CALL_BOUND)
        except Exception as exc:
            return exc
        assert may_succeed, f"the call succeeded on a connection that was reset: {result!r}"
        return result
    finally:
        if not released:
            await rig.locker.execute("ROLLBACK")
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _until(probe: Callable[[], Awaitable[Any]], good: Callable[[Any], bool]) -> Any:
    """Poll ``probe()`` until ``good(value)`` (at most 5 s); return the last value."""
    value = await probe()
    for _ in range(200):
        if good(value):
            return value
        await asyncio.sleep(0.025)
        value = await probe()
    return value


def _typed(exc: BaseException) -> None:
    assert isinstance(exc, BackendUnavailableError), f"{type(exc).__name__}: {exc!r}"
    print("in flight ->", repr(exc), "caused by", repr(exc.__cause__))


async def _healed(rig: Rig) -> None:
    """The next calls on the same objects succeed, and nothing stays checked out."""
    state = f"sqlfault-{rig.run}-heal-{uuid.uuid4().hex[:6]}"
    assert await rig.db.update_q_value(AGENT, state, "a", 3.0, 0.0, 1.0, 0.0) == 3.0
    job_id = await rig.queue.enqueue({"heal": state})
    stats = await rig.queue.stats()
    assert stats["queued"] >= 1
    job = await rig.queue.claim("healer", lease=60)
    assert job is not None
    await rig.queue.complete(job)
    assert job_id
    await rig.settled()


# -- writes in flight -------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_enqueue_in_flight_fails_typed_and_is_applied_at_most_once(rig: Rig) -> None:
    # Warm the connection: its INSERT is then prepared, and the table lock stops the statement
    # at its execution (after the server has the whole request), not at its Parse.
    await rig.queue.enqueue({"warm": rig.run})
    error = await _dropped_in_flight(
        rig, rig.queue.enqueue({"lost": rig.run}), "LOCK TABLE queue_jobs IN SHARE MODE"
    )
    _typed(error)
    # The orphaned statement ran once the lock was released (the server never saw the
    # client go): one job for it, not two.
    count = await _until(
        lambda: rig.locker.fetchval(
            "SELECT count(*) FROM queue_jobs WHERE queue = $1", rig.queue.name
        ),
        lambda n: n >= 2,
    )
    await asyncio.sleep(0.2)  # a resend would have waited on the same lock: give it time
    jobs = await rig.locker.fetch(
        "SELECT payload::text AS payload FROM queue_jobs WHERE queue = $1", rig.queue.name
    )
    print("enqueue in flight: jobs afterwards", [row["payload"] for row in jobs])
    assert count == len(jobs) == 2
    await _healed(rig)


@pytest.mark.timeout(60)
async def test_enqueue_with_dedupe_key_repeated_after_a_loss_adds_nothing(rig: Rig) -> None:
    """The caller's remedy for an ambiguous enqueue: repeat it with the same dedupe key."""
    await rig.queue.enqueue({"warm": rig.run}, dedupe_key=f"warm-{rig.run}")
    payload = {"dedupe": rig.run}
    error = await _dropped_in_flight(
        rig,
        rig.queue.enqueue(payload, dedupe_key=f"d-{rig.run}"),
        "LOCK TABLE queue_jobs IN SHARE MODE",
    )
    _typed(error)
    # The orphan ran (see above); the repeat finds its job instead of adding one.
    await _until(
        lambda: rig.locker.fetchval(
            "SELECT count(*) FROM queue_jobs WHERE queue = $1", rig.queue.name
        ),
        lambda n: n >= 2,
    )
    again = await rig.queue.enqueue(payload, dedupe_key=f"d-{rig.run}")
    rows = await rig.locker.fetch(
        "SELECT id::text FROM queue_jobs WHERE queue = $1 AND dedupe_key = $2",
        rig.queue.name,
        f"d-{rig.run}",
    )
    assert [row["id"] for row in rows] == [again]
    await _healed(rig)


@pytest.mark.timeout(60)
async def test_complete_in_flight_fails_typed_and_is_not_resent(rig: Rig) -> None:
    job_id = await rig.queue.enqueue({"complete": rig.run})
    job = await rig.queue.claim("finisher", lease=60)
    assert job is not None and job.id == job_id
    error = await _dropped_in_flight(
        rig,
        rig.queue.complete(job, {"ok": True}),
        f"SELECT 1 FROM queue_jobs WHERE id = '{job_id}' FOR UPDATE",
    )
    # Not LeaseLostError: that is what a resend of its own applied update would report.
    _typed(error)
    state = await _until(
        lambda: rig.locker.fetchval("SELECT state FROM queue_jobs WHERE id = $1::uuid", job_id),
        lambda s: s == "done",
    )
    assert state == "done"
    assert (
        await rig.locker.fetchval("SELECT attempts FROM queue_jobs WHERE id = $1::uuid", job_id)
        == 1
    )
    await _healed(rig)


@pytest.mark.timeout(60)
async def test_q_value_update_in_flight_fails_typed_and_is_applied_at_most_once(
    rig: Rig,
) -> None:
    state = f"sqlfault-{rig.run}-q"
    assert await rig.db.update_q_value(AGENT, state, "a", 1.0, 0.0, 1.0, 0.0) == 1.0
    error = await _dropped_in_flight(
        rig,
        rig.db.update_q_value(AGENT, state, "a", 5.0, 0.0, 0.5, 0.0),
        "SELECT 1 FROM q_values WHERE agent_type = 'coverage-analyzer' "
        f"AND state_hash = '{state}' FOR UPDATE",
    )
    _typed(error)
    row = await _until(
        lambda: rig.locker.fetchrow(
            "SELECT q_value, visit_count FROM q_values WHERE agent_type = $1 "
            "AND state_hash = $2 AND action_hash = 'a'",
            AGENT,
            state,
        ),
        lambda r: r["visit_count"] >= 2,
    )
    await asyncio.sleep(0.2)
    # Once: 1 + 0.5 * (5 - 1) = 3 with two visits; twice would be 4 with three.
    assert (row["q_value"], row["visit_count"]) == (3.0, 2)
    await _healed(rig)


@pytest.mark.timeout(60)
async def test_q_value_batch_in_flight_fails_typed_and_is_applied_at_most_once(
    rig: Rig,
) -> None:
    state = f"sqlfault-{rig.run}-batch"
    updates = [
        {
            "agent_type": AGENT,
            "state_hash": state,
            "action_hash": f"b{i}",
            "reward": 2.0,
            "next_max_q": 0.0,
            "alpha": 1.0,
            "gamma": 0.0,
        }
        for i in range(3)
    ]
    assert await rig.db.batch_update_q_values(updates) == 3
    error = await _dropped_in_flight(
        rig,
        rig.db.batch_update_q_values(updates),
        "SELECT 1 FROM q_values WHERE agent_type = 'coverage-analyzer' "
        f"AND state_hash = '{state}' AND action_hash = 'b0' FOR UPDATE",
    )
    _typed(error)
    await asyncio.sleep(0.3)
    visits = await rig.locker.fetch(
        "SELECT action_hash, visit_count FROM q_values WHERE agent_type = $1 "
        "AND state_hash = $2 ORDER BY action_hash",
        AGENT,
        state,
    )
    # All or nothing, and at most once: every pair has 1 or every pair has 2 visits.
    counts = {row["visit_count"] for row in visits}
    assert len(visits) == 3 and counts in ({1}, {2}), visits
    await _healed(rig)


# -- reads in flight and replies cut mid-way --------------------------------------------------


@pytest.mark.timeout(60)
async def test_stats_in_flight_fails_typed_or_answers_then_heals(rig: Rig) -> None:
    """A read changes nothing: retrying it would be allowed, so it may also succeed."""
    await rig.queue.enqueue({"stats": rig.run})
    outcome = await _dropped_in_flight(
        rig,
        rig.queue.stats(),
        "LOCK TABLE queue_jobs IN ACCESS EXCLUSIVE MODE",
        may_succeed=True,
    )
    if isinstance(outcome, BaseException):
        _typed(outcome)
    else:
        assert outcome["queued"] == 1, outcome
    await _healed(rig)


@pytest.mark.timeout(60)
async def test_claim_whose_reply_is_cut_leases_at_most_once(rig: Rig) -> None:
    # Warm the connection (its prepared statements): the cut then hits the claim's own reply,
    # after the server ran it, not a Parse before it.
    await rig.queue.enqueue({"warm": rig.run})
    warm = await rig.queue.claim("warm", lease=60)
    assert warm is not None
    await rig.queue.complete(warm)
    job_id = await rig.queue.enqueue({"claim": rig.run})
    rig.proxy.reset_mid_reply()
    try:
        with pytest.raises(BackendUnavailableError):
            await asyncio.wait_for(rig.queue.claim("cut", lease=0.5), CALL_BOUND)
    finally:
        rig.proxy.pass_through()
    row = await rig.locker.fetchrow(
        "SELECT state, attempts FROM queue_jobs WHERE id = $1::uuid", job_id
    )
    print("claim cut mid-reply:", dict(row))
    # Applied once or not at all, never twice behind the caller's back.
    assert (row["state"], row["attempts"]) in {("active", 1), ("queued", 0)}, dict(row)
    # The lease lapses and the job comes back: nothing is lost.
    job = await _until(lambda: rig.queue.claim("after", lease=60), lambda j: j is not None)
    assert job is not None and job.id == job_id
    assert job.attempts == row["attempts"] + 1
    await rig.queue.complete(job)
    await rig.settled()


@pytest.mark.timeout(60)
async def test_q_update_whose_reply_is_cut_fails_typed_and_counts_once(rig: Rig) -> None:
    state = f"sqlfault-{rig.run}-cut"
    assert await rig.db.update_q_value(AGENT, f"{state}-warm", "a", 1.0, 0.0, 1.0, 0.0) == 1.0
    rig.proxy.reset_mid_reply()
    try:
        with pytest.raises(BackendUnavailableError):
            await asyncio.wait_for(
                rig.db.update_q_value(AGENT, state, "a", 1.0, 0.0, 1.0, 0.0), CALL_BOUND
            )
    finally:
        rig.proxy.pass_through()
    visits = await rig.locker.fetchval(
        "SELECT visit_count FROM q_values WHERE agent_type = $1 AND state_hash = $2",
        AGENT,
        state,
    )
    print("q update cut mid-reply: visits", visits)
    assert visits in (None, 1)
    await _healed(rig)
