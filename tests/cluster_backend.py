"""Contract-suite backends on a Redis Cluster (issue 8).

One throwaway cluster (three masters, one replica each) serves the whole session, every xdist
worker included (:func:`~lionagi_qe.testing.redis_cluster.start_shared_cluster`). Each test gets
a memory under a key prefix of its own, so its keys share one hash slot, hence one master, and
different tests spread over the masters. ``redis_cluster_memory`` is given only one node's
URL: it must find out by itself that the server is a cluster (``INFO cluster``) and discover the
rest. Every test that uses the cluster holds it *shared*, so a destructive test of another
worker (failover, a killed master) never runs under it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.redis_support import keyspace
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.testing.redis_cluster import (
    ThrowawayCluster,
    release_shared_cluster,
    start_shared_cluster,
)
from lionagi_qe.testing.servers import ServerUnavailableError

#: ``pytest.param``s appended to the contract suite's ``BACKENDS``.
PARAMS: list[Any] = [
    pytest.param("redis_cluster_memory", id="redis-cluster", marks=[pytest.mark.redis]),
    pytest.param(
        "cached_cluster_memory",
        id="cached-cluster",
        marks=[pytest.mark.postgres, pytest.mark.redis],
    ),
]

_MEMORY_CLEANUP = (
    "DELETE FROM qe_memory",
    "DELETE FROM partitions WHERE name <> 'default'",
)


@pytest.fixture(scope="session")
def aqe_redis_cluster() -> Iterator[ThrowawayCluster]:
    """The session's shared throwaway Redis Cluster (started by the first worker to ask)."""
    try:
        cluster = start_shared_cluster()
    except ServerUnavailableError as exc:
        pytest.exit(str(exc), returncode=3)
    try:
        yield cluster
    finally:
        release_shared_cluster()


@pytest.fixture
def aqe_cluster_shared(aqe_redis_cluster: ThrowawayCluster) -> Iterator[ThrowawayCluster]:
    """The cluster, held shared for the test (no other worker's destructive test meanwhile)."""
    with aqe_redis_cluster.shared():
        yield aqe_redis_cluster


def cluster_prefix() -> str:
    """A key prefix of the test's own (its hash tag decides the test's slot)."""
    return f"aqe-test:{uuid.uuid4().hex[:12]}:"


async def delete_cluster_prefix(cluster: ThrowawayCluster, prefix: str) -> None:
    """Delete every key under ``prefix``: all in one slot (the prefix's hash tag), so only
    the master of that slot is scanned (a plain client, no cluster discovery).

    Right after a master was killed, a node may still name it as the slot's owner for a
    moment (the news spreads by gossip): then the lookup is repeated, a bounded number of
    times.
    """
    for attempt in range(20):
        port = await asyncio.to_thread(cluster.master_of_key, keyspace(prefix))
        client = Redis(host="127.0.0.1", port=port)
        try:
            batch = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(batch), 500):
                await client.unlink(*batch[start : start + 500])
            return
        except (RedisConnectionError, ReadOnlyError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.25)
        finally:
            await client.aclose()


async def _empty_memory_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for statement in _MEMORY_CLEANUP:
            await connection.execute(text(statement))


@pytest_asyncio.fixture(loop_scope="session")
async def redis_cluster_memory(aqe_cluster_shared: ThrowawayCluster) -> AsyncIterator[Any]:
    """A RedisMemory on the cluster, given one node's URL (it detects the cluster)."""
    prefix = cluster_prefix()
    memory = RedisMemory(url=aqe_cluster_shared.url, prefix=prefix)
    try:
        yield memory
    finally:
        await memory.close()
        await delete_cluster_prefix(aqe_cluster_shared, prefix)


@pytest_asyncio.fixture(loop_scope="session")
async def cached_cluster_memory(
    aqe_engine: AsyncEngine, aqe_cluster_shared: ThrowawayCluster
) -> AsyncIterator[Any]:
    """A CachedMemory: the worker's PostgreSQL database behind a cache on the cluster."""
    await _empty_memory_tables(aqe_engine)
    prefix = cluster_prefix()
    memory = CachedMemory(
        PostgresMemory(aqe_engine), redis_url=aqe_cluster_shared.url, prefix=prefix
    )
    try:
        yield memory
    finally:
        await memory.close()
        await delete_cluster_prefix(aqe_cluster_shared, prefix)
        await _empty_memory_tables(aqe_engine)
