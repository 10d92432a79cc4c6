"""Failing a Redis Cluster master over during a steady load (issue 8, SPEC §11).

Both tests hold the shared cluster *exclusively* (no other worker's cluster test runs
meanwhile) and leave it healed: three masters, each with a linked replica (the fixture's
teardown restarts a killed node once its slots were failed over, and waits).

- ``CLUSTER FAILOVER`` run on a replica is *coordinated*: the master stops accepting writes,
  the replica catches up with its replication offset, then takes over. No acknowledged write
  may be lost, and redis-py follows the ``MOVED`` replies to the new master.
- A master killed with SIGKILL is failed over by the cluster after ``cluster-node-timeout``
  (1 s here) plus an election. Calls in between fail fast (``BackendUnavailableError``, never
  retried) and succeed again once the replica is promoted; recovery must stay within
  :data:`RECOVERY_BOUND`. Replication is asynchronous: writes the master acknowledged but had
  not yet sent to its replica are lost, as Redis documents; the test counts them (it does not
  demand zero) and checks that the store stays self-consistent and that nothing acknowledged
  after the recovery is lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from cluster_backend import delete_cluster_prefix
from redis.crc import key_slot
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.redis_support import keyspace
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.errors import BackendUnavailableError
from lionagi_qe.testing.redis_cluster import ThrowawayCluster

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

#: Seconds within which calls must succeed again after a master was killed.
RECOVERY_BOUND = 30.0
#: Seconds without a failed call that count as recovered.
QUIET = 0.5
WRITERS = 6


@pytest.fixture
def exclusive_cluster(aqe_redis_cluster: ThrowawayCluster) -> Iterator[ThrowawayCluster]:
    """The cluster, held alone; healed (and waited for) before it is let go."""
    with aqe_redis_cluster.exclusive():
        yield aqe_redis_cluster


@dataclass
class Load:
    """What a steady write load saw: acknowledged writes, attempts, failures, timings."""

    acked: dict[str, tuple[int, float]] = field(default_factory=dict)  # key → (value, start)
    counter_acked: int = 0
    counter_attempted: int = 0
    errors: list[float] = field(default_factory=list)
    successes: list[tuple[float, float]] = field(default_factory=list)  # (start, end)

    def first_success_started_after(self, moment: float) -> float | None:
        ends = [end for start, end in self.successes if start >= moment]
        return min(ends) if ends else None


async def _writer(memory: RedisMemory, worker: int, stop: asyncio.Event, load: Load) -> None:
    number = 0
    while not stop.is_set():
        key = f"aqe/load/{worker}/{number}"
        number += 1
        start = time.monotonic()
        try:
            await memory.store(key, number)
            load.acked[key] = (number, start)
            load.counter_attempted += 1
            await memory.increment("aqe/load/counter")
            load.counter_acked += 1
            load.successes.append((start, time.monotonic()))
        except BackendUnavailableError:
            load.errors.append(time.monotonic())
            await asyncio.sleep(0.01)


def _prefix() -> str:
    return f"aqe-test:{uuid.uuid4().hex[:12]}:"


async def _wait_until(check: Callable[[], bool], bound: float) -> float:
    """Poll the blocking ``check`` (in a thread) until true; the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > bound:
            raise AssertionError(f"not within {bound} s: {check}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_coordinated_failover_loses_no_acknowledged_write(
    exclusive_cluster: ThrowawayCluster,
) -> None:
    cluster = exclusive_cluster
    prefix = _prefix()
    slot = key_slot(keyspace(prefix).encode())
    master = await asyncio.to_thread(cluster.master_of_slot, slot)
    replica = await asyncio.to_thread(cluster.replica_of, master)
    memory = RedisMemory(nodes=cluster.urls, prefix=prefix, socket_timeout=3.0)
    load, stop = Load(), asyncio.Event()
    try:
        writers = [
            asyncio.create_task(_writer(memory, worker, stop, load)) for worker in range(WRITERS)
        ]
        await asyncio.sleep(0.3)
        before = len(load.acked)

        def failover() -> None:
            with cluster.client(replica) as client:
                client.execute_command("CLUSTER FAILOVER")

        switched_at = time.monotonic()
        await asyncio.to_thread(failover)
        took = await _wait_until(lambda: cluster.master_of_slot(slot) == replica, 20)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*writers)

        assert before > 0
        assert load.first_success_started_after(switched_at + took) is not None
        stored = await memory.retrieve_many(list(load.acked))
        lost = [key for key, (value, _start) in load.acked.items() if stored.get(key) != value]
        assert lost == [], f"{len(lost)} acknowledged writes lost in a coordinated failover"
        counter = await memory.retrieve("aqe/load/counter")
        assert load.counter_acked <= counter <= load.counter_attempted
        assert set(load.acked) <= set(await memory.list_keys("aqe/load/"))
        print(
            f"\ncoordinated failover: {len(load.acked)} writes acknowledged, "
            f"{len(load.errors)} calls failed, slot moved after {took:.2f} s"
        )
    finally:
        stop.set()
        await memory.close()
        await delete_cluster_prefix(cluster, prefix)


async def test_killed_master_calls_recover_within_a_bound(
    exclusive_cluster: ThrowawayCluster,
) -> None:
    cluster = exclusive_cluster
    prefix = _prefix()
    slot = key_slot(keyspace(prefix).encode())
    master = await asyncio.to_thread(cluster.master_of_slot, slot)
    memory = RedisMemory(nodes=cluster.urls, prefix=prefix, socket_timeout=3.0)
    load, stop = Load(), asyncio.Event()
    try:
        writers = [
            asyncio.create_task(_writer(memory, worker, stop, load)) for worker in range(WRITERS)
        ]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.kill, master)  # returns once the process is gone
        killed_at = time.monotonic()
        # Recovered: calls succeed again, and keep succeeding for QUIET seconds. (Until every
        # node has heard of the promotion, by gossip, a client that reloads its slot map from
        # a node that has not may be sent to the dead master once more.)
        deadline = killed_at + RECOVERY_BOUND
        while True:
            recovered = load.first_success_started_after(killed_at)
            now = time.monotonic()
            if recovered is not None and now - max(load.errors, default=killed_at) > QUIET:
                break
            assert now < deadline, "calls did not recover after a killed master"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*writers)

        recovery = recovered - killed_at
        settled = max(load.errors) - killed_at
        assert settled < RECOVERY_BOUND
        assert load.errors, "the kill went unnoticed: the test did not test a failover"
        await _wait_until(
            lambda: len(owners := cluster.owners_of_slot(slot)) == 1 and master not in owners, 20
        )
        stored = await memory.retrieve_many(list(load.acked))
        lost = [key for key, (value, _s) in load.acked.items() if stored.get(key) != value]
        # Asynchronous replication: what the master acknowledged just before it died may be
        # missing. Nothing acknowledged after the promotion may be.
        assert [key for key in lost if load.acked[key][1] >= recovered] == []
        # The index and the entries moved together (one slot, one replication stream).
        listed = await memory.list_keys("aqe/load/")
        assert listed == sorted(await memory.search("aqe/load/*"))
        assert set(load.acked) - set(lost) <= set(listed)
        print(
            f"\nkilled master: first call back {recovery:.2f} s after the kill, last failure "
            f"after {settled:.2f} s ({len(load.errors)} calls failed); {len(lost)} of "
            f"{len(load.acked)} acknowledged writes lost"
        )
    finally:
        stop.set()
        await memory.close()
        await delete_cluster_prefix(cluster, prefix)


async def test_a_timed_out_call_is_not_retried_on_a_cluster(
    exclusive_cluster: ThrowawayCluster,
) -> None:
    """redis-py's cluster client retries a command after a timeout by default, and a
    timed-out increment may still run, so a retry would count it twice. Here the slot's master
    stalls (``DEBUG SLEEP``) past the socket timeout: the call fails, and the counter moves
    exactly once, when the server wakes. (With redis-py's default retries, a retry sent once the
    server is awake runs too: the counter moves twice or more.)"""
    cluster = exclusive_cluster
    prefix = _prefix()
    slot = key_slot(keyspace(prefix).encode())
    memory = RedisMemory(nodes=cluster.urls, prefix=prefix, socket_timeout=0.2)
    try:
        assert await memory.increment("aqe/once") == 1
        master = await asyncio.to_thread(cluster.master_of_slot, slot)

        def stall() -> None:
            with cluster.client(master, timeout=5) as client:
                client.execute_command("DEBUG", "SLEEP", "0.7")

        def asleep() -> bool:
            with cluster.client(master, timeout=0.05) as client:
                try:
                    client.ping()
                except redis.RedisError:  # a timeout, while connecting or reading
                    return True
                return False

        stalled = asyncio.create_task(asyncio.to_thread(stall))
        await _wait_until(asleep, 10)
        with pytest.raises(BackendUnavailableError):
            await memory.increment("aqe/once")
        await stalled
        assert await memory.retrieve("aqe/once") == 2
    finally:
        await memory.close()
        await delete_cluster_prefix(cluster, prefix)


@pytest.mark.postgres
async def test_cache_generation_is_bumped_when_its_master_fails_over(
    exclusive_cluster: ThrowawayCluster, aqe_engine: AsyncEngine
) -> None:
    """A promoted replica may lack invalidations the old master acknowledged, so the cache
    must not trust records it finds there: the first connection to the new master sees another
    server ``run_id`` and bumps the generation. Reads stay right throughout."""
    cluster = exclusive_cluster
    prefix = _prefix()
    async with aqe_engine.begin() as connection:
        await connection.execute(text("DELETE FROM qe_memory"))
    memory = CachedMemory(PostgresMemory(aqe_engine), redis_url=cluster.url, prefix=prefix)
    try:
        await memory.store("aqe/cached/a", "one")
        assert await memory.retrieve("aqe/cached/a") == "one"  # filled
        assert await memory.retrieve("aqe/cached/a") == "one"  # a hit
        hits, flushes = memory._tier.counts["hits"], memory._tier.counts["flushes"]
        assert hits >= 1
        slot = key_slot(keyspace(prefix).encode())
        master = await asyncio.to_thread(cluster.master_of_slot, slot)
        replica = await asyncio.to_thread(cluster.replica_of, master)

        def failover() -> None:
            with cluster.client(replica) as client:
                client.execute_command("CLUSTER FAILOVER")

        await asyncio.to_thread(failover)
        await _wait_until(lambda: cluster.master_of_slot(slot) == replica, 20)
        for _attempt in range(50):  # until a call reaches the new master
            assert await memory.retrieve("aqe/cached/a") == "one"
            if memory._tier.counts["flushes"] > flushes:
                break
            await asyncio.sleep(0.05)
        assert memory._tier.counts["flushes"] > flushes
        await memory.store("aqe/cached/a", "two")
        assert await memory.retrieve("aqe/cached/a") == "two"
    finally:
        await memory.close()
        await delete_cluster_prefix(cluster, prefix)
        async with aqe_engine.begin() as connection:
            await connection.execute(text("DELETE FROM qe_memory"))
