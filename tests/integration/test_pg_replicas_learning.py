"""Opt-in stale reads of Q-values (``stale_ok=True``) through a read replica, and without one.

The replica tests run on the session's shared primary/replica pair, in this worker's own
database on it (``aqe_replica_urls`` from ``tests/replica_backend.py``). Which server answered
is proved as in ``test_pg_replicas.py``: with replay paused, a Q-value written on the primary is
new there and old on the replica. Pausing is server-wide, so the pause is short and taken under a
lock file (one test at a time across xdist workers); the contract suite's reads that meet it wait
``replica_wait`` and fall back to the primary, as designed. "Replica stopped" is a fault proxy in
front of the shared replica that refuses and resets every connection: stopping the shared
replica itself would disturb every other worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import delete, func, literal, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lionagi_qe import DatabaseManager
from lionagi_qe.db.replicas import Replica
from lionagi_qe.db.sql import seconds_from_now
from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.models import QValue
from lionagi_qe.repositories.learning import QValueRepository
from lionagi_qe.testing.faults import FaultProxy
from lionagi_qe.testing.replication import (
    ReplicaPair,
    pause_replay,
    resume_replay,
    wait_for_replay,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "test-generator"
#: Upper bound of every wait below (a hang guard, not a speed assertion).
DEADLINE = 30.0


def new_state() -> str:
    return f"replica-learning-{uuid.uuid4().hex}"


def _replica(manager: DatabaseManager) -> Replica:
    assert manager.replicas is not None
    return manager.replicas.replicas[0]


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``condition`` until true (bounded by DEADLINE)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)


async def _in_recovery(conn: AsyncConnection) -> bool:
    return bool(await conn.scalar(select(func.pg_is_in_recovery())))


async def _warm(reader: DatabaseManager) -> None:
    """Read until the replica answers (the router learns in the background that it is fresh).

    Through :meth:`Database.read` itself, not the code under test: a broken stale path then
    fails the assertions that follow instead of hanging here.
    """
    await _until(lambda: reader.read(_in_recovery, stale_ok=True))


async def _replayed(pair: ReplicaPair) -> None:
    async with asyncio.timeout(DEADLINE):
        await wait_for_replay(pair.primary_url, pair.replica_url)


@contextlib.asynccontextmanager
async def _replay_paused(pair: ReplicaPair) -> AsyncIterator[None]:
    """Pause the shared replica's replay, one holder at a time across processes."""
    lock_path = os.path.join(tempfile.gettempdir(), f"aqe-pause-{pair.replica_port}.lock")
    handle = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.02)
        await pause_replay(pair.replica_url)
        try:
            yield
        finally:
            await resume_replay(pair.replica_url)
    finally:
        os.close(handle)  # releases the lock


@contextlib.asynccontextmanager
async def _managers(
    primary_url: str, replica_url: str, **options: Any
) -> AsyncIterator[tuple[DatabaseManager, DatabaseManager]]:
    """``(writer, reader)``: the writer has no replicas, so its writes are someone else's to
    the reader; the reader has the replica. Their Q-values are deleted afterwards."""
    writer = DatabaseManager(primary_url, min_connections=1, max_connections=2)
    reader = DatabaseManager(
        primary_url,
        min_connections=1,
        max_connections=4,
        replicas=[replica_url],
        replica_max_lag=60.0,
        **options,
    )
    try:
        yield writer, reader
    finally:
        await reader.close()
        async with writer.engine.begin() as conn:
            await conn.execute(delete(QValue).where(QValue.state_hash.like("replica-learning-%")))
        await writer.close()


async def test_stale_ok_reads_come_from_the_replica_default_reads_from_the_primary(
    aqe_replica_pair: ReplicaPair, aqe_replica_urls: tuple[str, str]
) -> None:
    state = new_state()
    async with _managers(*aqe_replica_urls) as (writer, reader):
        await writer.upsert_q_value(AGENT, state, "a", 1.0)
        await writer.upsert_q_value(AGENT, state, "b", 0.5)
        await _replayed(aqe_replica_pair)
        await _warm(reader)
        async with _replay_paused(aqe_replica_pair):
            await writer.upsert_q_value(AGENT, state, "a", 0.25)  # on the primary only
            served = _replica(reader).reads

            # Stale-ok: the replica answers, and it has not seen the update.
            assert await reader.get_q_value(AGENT, state, "a", stale_ok=True) == 1.0
            stale = await reader.get_all_q_values_for_state(AGENT, state, stale_ok=True)
            assert [(row["action_hash"], row["q_value"]) for row in stale] == [
                ("a", 1.0),
                ("b", 0.5),
            ]
            best = await reader.get_best_action(AGENT, state, stale_ok=True)
            assert best is not None
            assert best["action_hash"] == "a"
            assert _replica(reader).reads == served + 3
            assert _replica(reader).failures == 0  # read-only queries: nothing to refuse

            # Default reads: the primary answers with the update.
            assert await reader.get_q_value(AGENT, state, "a") == 0.25
            best = await reader.get_best_action(AGENT, state)
            assert best is not None
            assert best["action_hash"] == "b"
            assert _replica(reader).reads == served + 3


async def test_stale_ok_statistics_come_from_the_replica(
    aqe_replica_pair: ReplicaPair, aqe_replica_urls: tuple[str, str]
) -> None:
    state = new_state()
    async with _managers(*aqe_replica_urls) as (writer, reader):
        await writer.upsert_q_value(AGENT, state, "a", 1.0)
        await _replayed(aqe_replica_pair)
        await _warm(reader)
        async with _replay_paused(aqe_replica_pair):
            await writer.upsert_q_value(AGENT, state, "b", 0.5)  # on the primary only
            served = _replica(reader).reads
            fresh = await reader.get_learning_statistics(AGENT)
            stale = await reader.get_learning_statistics(AGENT, stale_ok=True)
            assert _replica(reader).reads == served + 1
            assert stale["q_values"]["count"] == fresh["q_values"]["count"] - 1
        with pytest.raises(InvalidArgumentError):
            await reader.get_learning_statistics(AGENT, stale_ok=1)  # type: ignore[arg-type]


async def test_stale_ok_reads_see_the_callers_own_writes(
    aqe_replica_pair: ReplicaPair, aqe_replica_urls: tuple[str, str]
) -> None:
    state = new_state()
    async with _managers(*aqe_replica_urls) as (writer, reader):
        await writer.upsert_q_value(AGENT, state, "a", 1.0)
        await _replayed(aqe_replica_pair)
        await _warm(reader)
        async with _replay_paused(aqe_replica_pair):
            served = _replica(reader).reads
            # The reader's own writes: a TD update and a batch, both missing on the replica.
            value = await reader.update_q_value(AGENT, state, "a", 2.0, 0.0, 0.5, 0.9)
            assert value == 1.5
            await reader.batch_update_q_values(
                [
                    {
                        "agent_type": AGENT,
                        "state_hash": state,
                        "action_hash": "b",
                        "reward": 4.0,
                        "next_max_q": 0.0,
                        "alpha": 1.0,
                        "gamma": 0.5,
                    }
                ]
            )

            assert await reader.get_q_value(AGENT, state, "a", stale_ok=True) == 1.5
            stale = await reader.get_all_q_values_for_state(AGENT, state, stale_ok=True)
            assert [(row["action_hash"], row["q_value"]) for row in stale] == [
                ("b", 4.0),
                ("a", 1.5),
            ]
            best = await reader.get_best_action(AGENT, state, stale_ok=True)
            assert best is not None
            assert best["action_hash"] == "b"
            assert _replica(reader).reads == served  # all from the primary


async def test_stale_ok_reads_fall_back_to_the_primary_when_the_replica_stops(
    aqe_replica_pair: ReplicaPair, aqe_replica_urls: tuple[str, str]
) -> None:
    primary_url, replica_url = aqe_replica_urls
    target = make_url(replica_url)
    assert target.host is not None
    assert target.port is not None
    state = new_state()
    async with FaultProxy(target.host, target.port) as proxy:
        proxied = target.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
        async with _managers(primary_url, proxied, replica_retry_after=60.0) as (writer, reader):
            for action, value in (("a", 3.0), ("b", 2.0)):
                await writer.upsert_q_value(AGENT, state, action, value)
            await _replayed(aqe_replica_pair)
            await _warm(reader)
            expected = await reader.get_all_q_values_for_state(AGENT, state, stale_ok=True)
            assert [row["action_hash"] for row in expected] == ["a", "b"]

            async def load() -> None:
                for _ in range(20):
                    assert await reader.get_q_value(AGENT, state, "a", stale_ok=True) == 3.0
                    assert (
                        await reader.get_all_q_values_for_state(AGENT, state, stale_ok=True)
                        == expected
                    )
                    assert await reader.get_best_action(AGENT, state, stale_ok=True) == expected[0]

            readers = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(0)
            proxy.refuse()  # the replica is gone: new connections refused ...
            proxy.drop_connections()  # ... and the live ones reset
            async with asyncio.timeout(DEADLINE):
                await asyncio.gather(*readers)  # no caller saw an error

            # Pooled connections die on first use: the next read fails on the replica, is
            # rerun on the primary, and the replica is then left alone.
            assert await reader.get_q_value(AGENT, state, "b", stale_ok=True) == 2.0
            assert reader.replicas is not None
            stats = reader.replicas.stats()
            assert stats["fallbacks"] >= 1
            assert stats["replicas"][0]["state"] == "down"
            served = _replica(reader).reads
            assert await reader.get_best_action(AGENT, state, stale_ok=True) == expected[0]
            assert _replica(reader).reads == served


async def _expiry(manager: DatabaseManager, state: str) -> dict[str, datetime]:
    async with manager.engine.connect() as conn:
        rows = await conn.execute(
            select(QValue.action_hash, QValue.expires_at).where(QValue.state_hash == state)
        )
        return {row.action_hash: row.expires_at for row in rows}


async def test_stale_ok_without_replicas_reads_the_same_and_refreshes_nothing(
    manager: DatabaseManager,
) -> None:
    # PostgreSQL (no replicas configured) and SQLite: the stale path is a plain read of the
    # primary. Ties exercise the order: q_value, then visits, then action_hash by code point
    # ("B" < "a" < "z" < "é", which a locale collation would order differently).
    state = new_state()
    for action in ("z", "é", "a", "B", "tied-more-visits", "low", "gone"):
        await manager.upsert_q_value(AGENT, state, action, 1.0 if action != "low" else -1.0)
    await manager.upsert_q_value(AGENT, state, "tied-more-visits", 1.0)
    async with manager.engine.begin() as conn:
        await conn.execute(
            update(QValue)
            .where(QValue.state_hash == state)
            .values(expires_at=seconds_from_now(literal(7777.0)))
        )
        await conn.execute(
            update(QValue)
            .where(QValue.state_hash == state, QValue.action_hash == "gone")
            .values(expires_at=seconds_from_now(literal(-10.0)))
        )
    before = await _expiry(manager, state)

    stale_all = await manager.get_all_q_values_for_state(AGENT, state, stale_ok=True)
    stale_best = await manager.get_best_action(AGENT, state, stale_ok=True)
    stale_values = {
        action: await manager.get_q_value(AGENT, state, action, stale_ok=True)
        for action in ("a", "low", "gone", "missing")
    }
    assert await _expiry(manager, state) == before  # stale-ok reads wrote nothing

    assert [row["action_hash"] for row in stale_all] == [
        "tied-more-visits",
        "B",
        "a",
        "z",
        "é",
        "low",
    ]
    assert stale_values == {"a": 1.0, "low": -1.0, "gone": None, "missing": None}
    assert await manager.get_all_q_values_for_state(AGENT, state) == stale_all
    assert await manager.get_best_action(AGENT, state) == stale_best == stale_all[0]
    for action, value in stale_values.items():
        assert await manager.get_q_value(AGENT, state, action) == value
    assert await _expiry(manager, state) != before  # the default reads did refresh
    assert await manager.get_all_q_values_for_state(AGENT, new_state(), stale_ok=True) == []
    assert await manager.get_best_action(AGENT, new_state(), stale_ok=True) is None


async def test_stale_ok_must_be_a_bool(manager: DatabaseManager) -> None:
    state = new_state()
    await manager.upsert_q_value(AGENT, state, "a", 1.0)
    before = await _expiry(manager, state)
    with pytest.raises(InvalidArgumentError):
        await manager.get_q_value(AGENT, state, "a", stale_ok="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await manager.get_all_q_values_for_state(AGENT, state, stale_ok=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        await manager.get_best_action(AGENT, state, stale_ok=None)  # type: ignore[arg-type]
    assert await _expiry(manager, state) == before  # nothing ran, not even the refreshing read


async def test_peeks_order_by_code_point_under_any_collation(aqe_engine: AsyncEngine) -> None:
    # A database whose default collation is a locale's (here ICU English, where "a" < "B")
    # must not change the order of a peek: for_state sorts in Python (code points), and a
    # peek sorts in SQL, so it has to say COLLATE "C". The column's collation is changed inside
    # a transaction that is rolled back (DDL is transactional in PostgreSQL).
    state = new_state()
    async with aqe_engine.connect() as conn:
        await conn.execute(
            text(
                'ALTER TABLE q_values ALTER COLUMN action_hash TYPE varchar(128) COLLATE "en-x-icu"'
            )
        )
        repository = QValueRepository(conn, "postgresql")
        for action in ("z", "é", "a", "B"):
            await repository.upsert(
                AGENT, state, action, 1.0, state_data=None, action_data=None, retention=None
            )
        peeked = await repository.peek_state(AGENT, state)
        assert [row["action_hash"] for row in peeked] == ["B", "a", "z", "é"]
        assert await repository.peek_state(AGENT, state, best_only=True) == peeked[:1]
        assert await repository.for_state(AGENT, state, None) == peeked
        await conn.rollback()
