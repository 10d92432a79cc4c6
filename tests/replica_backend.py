"""Contract-suite backend through a PostgreSQL primary/replica pair (issue 8).

One pair per test session, shared by every xdist worker (:func:`shared_replica_pair`), and a
migrated database per worker on it (created on the primary, streamed to the replica). Each test
gets a :class:`PostgresMemory` on the primary with the replica configured and
``replica_wait`` set, so reads after the test's own writes are answered by the replica once it
has replayed them (the contract then checks read-your-writes through the replica) and by the
primary when it has not within the bound.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.testing.helpers import run_sync
from lionagi_qe.testing.replication import (
    ReplicaPair,
    release_replica_pair,
    shared_replica_pair,
    wait_for_replay,
)
from lionagi_qe.testing.servers import ServerUnavailableError, create_database, drop_database

#: ``pytest.param``s appended to the contract suite's ``BACKENDS``.
PARAMS: list[Any] = [
    pytest.param("replica_memory", id="replica", marks=[pytest.mark.postgres]),
]

#: Seconds a contract read after the test's own write may wait for the replica.
CONTRACT_REPLICA_WAIT = 2.0

_CLEANUP = ("DELETE FROM qe_memory", "DELETE FROM partitions WHERE name <> 'default'")


@pytest.fixture(scope="session")
def aqe_replica_pair() -> Iterator[ReplicaPair]:
    """The session's shared primary/replica pair (started by the first worker to ask)."""
    try:
        pair = shared_replica_pair()
    except ServerUnavailableError as exc:
        pytest.exit(str(exc), returncode=3)
    try:
        yield pair
    finally:
        release_replica_pair()


@pytest.fixture(scope="session")
def aqe_replica_urls(
    aqe_replica_pair: ReplicaPair, pytestconfig: pytest.Config
) -> Iterator[tuple[str, str]]:
    """``(primary, replica)`` URLs of a migrated database of this worker's own on the pair."""
    worker = getattr(pytestconfig, "workerinput", {}).get("workerid") or "main"
    name = f"aqe_replica_{worker}_{uuid.uuid4().hex[:8]}"
    primary = create_database(aqe_replica_pair.primary_url, name)
    replica = make_url(aqe_replica_pair.replica_url).set(database=name)

    async def upgrade() -> None:
        engine = create_engine(primary, poolclass=NullPool)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()
        async with asyncio.timeout(60):
            await wait_for_replay(aqe_replica_pair.primary_url, aqe_replica_pair.replica_url)

    try:
        run_sync(upgrade)
        yield primary, replica.render_as_string(hide_password=False)
    finally:
        drop_database(aqe_replica_pair.primary_url, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def aqe_replica_primary_engine(
    aqe_replica_urls: tuple[str, str],
) -> AsyncIterator[AsyncEngine]:
    """An engine on the worker's database on the pair's primary."""
    engine = create_engine(aqe_replica_urls[0], pool_size=10)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _empty(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for statement in _CLEANUP:
            await connection.execute(text(statement))


@pytest_asyncio.fixture(loop_scope="session")
async def replica_memory(
    aqe_replica_primary_engine: AsyncEngine, aqe_replica_urls: tuple[str, str]
) -> AsyncIterator[PostgresMemory]:
    """A PostgresMemory on the pair (replica configured), empty before and after the test."""
    await _empty(aqe_replica_primary_engine)
    memory = PostgresMemory(
        aqe_replica_primary_engine,
        replicas=[aqe_replica_urls[1]],
        replica_wait=CONTRACT_REPLICA_WAIT,
        replica_max_lag=10.0,
    )
    try:
        yield memory
    finally:
        await memory.close()
        await _empty(aqe_replica_primary_engine)
