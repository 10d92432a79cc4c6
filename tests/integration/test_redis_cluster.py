"""RedisMemory on a real Redis Cluster (issue 8): detection, placement, statistics, the gate.

The contract suite already runs on the cluster (``redis-cluster`` and ``cached-cluster`` in
``tests/cluster_backend.py``); these tests check what only a cluster has: a store's keys share
one slot, stores under different prefixes land on different masters, ``get_stats`` reads INFO
from the master of the store's slot, and the gate and cancellation hold per node. Destructive
tests (failover, a killed master) are in ``test_redis_cluster_failover.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from cluster_backend import delete_cluster_prefix
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.redis_support import keyspace, make_cluster
from lionagi_qe.errors import BackendUnavailableError, InvalidArgumentError
from lionagi_qe.testing.redis_cluster import ThrowawayCluster

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _slot(prefix: str) -> int:
    return key_slot(keyspace(prefix).encode())


async def _prefixes_per_master(cluster: ThrowawayCluster) -> dict[int, str]:
    """A fresh prefix whose slot each live master serves: master port → prefix."""
    ranges = await asyncio.to_thread(cluster.slot_ranges)
    masters = {port for _start, _end, port in ranges}
    found: dict[int, str] = {}
    while len(found) < len(masters):
        prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
        slot = _slot(prefix)
        port = next(port for start, end, port in ranges if start <= slot <= end)
        found.setdefault(port, prefix)
    return found


@pytest_asyncio.fixture(loop_scope="session")
async def stores(aqe_cluster_shared: ThrowawayCluster) -> AsyncIterator[dict[int, RedisMemory]]:
    """One RedisMemory per master (master port → memory), told the nodes' list."""
    prefixes = await _prefixes_per_master(aqe_cluster_shared)
    memories = {
        port: RedisMemory(nodes=aqe_cluster_shared.urls, prefix=prefix)
        for port, prefix in prefixes.items()
    }
    try:
        yield memories
    finally:
        for port, memory in memories.items():
            await memory.close()
            await delete_cluster_prefix(aqe_cluster_shared, prefixes[port])


async def _node_keys(cluster: ThrowawayCluster, port: int, prefix: str) -> list[bytes]:
    client = Redis(host="127.0.0.1", port=port)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    finally:
        await client.aclose()


async def test_a_url_of_one_node_is_found_to_be_a_cluster(
    aqe_cluster_shared: ThrowawayCluster,
) -> None:
    """Given one node's URL and no hint, the first call finds the cluster (``INFO cluster``):
    keys of every slot then work, whichever node the URL named."""
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    for url in aqe_cluster_shared.urls[:3]:
        memory = RedisMemory(url=url, prefix=prefix)
        try:
            assert isinstance(memory.client, Redis)  # nothing asked yet
            await memory.store("aqe/detected", url)
            assert isinstance(memory.client, RedisCluster)
            assert await memory.retrieve("aqe/detected") == url
            assert "(cluster)" in repr(memory)
        finally:
            await memory.close()
    await delete_cluster_prefix(aqe_cluster_shared, prefix)


async def test_a_single_server_is_not_taken_for_a_cluster(aqe_redis_url: str) -> None:
    memory = RedisMemory(url=aqe_redis_url, prefix=f"aqe-test:{uuid.uuid4().hex[:12]}:")
    try:
        assert await memory.store("aqe/single", 1) == 1
        assert type(memory.client) is Redis
        assert await memory.delete("aqe/single")
    finally:
        await memory.close()


async def test_told_single_server_on_a_cluster_fails_with_a_typed_error(
    aqe_cluster_shared: ThrowawayCluster,
) -> None:
    """``cluster=False`` on a cluster node: a key of another master's slot is refused (MOVED),
    as a BackendUnavailableError, not a driver error."""
    prefixes = await _prefixes_per_master(aqe_cluster_shared)
    url_port = aqe_cluster_shared.ports[0]
    elsewhere = next(port for port in prefixes if port != url_port)
    memory = RedisMemory(
        url=f"redis://127.0.0.1:{url_port}/0", prefix=prefixes[elsewhere], cluster=False
    )
    try:
        with pytest.raises(BackendUnavailableError, match="MovedError"):
            await memory.store("aqe/moved", 1)
    finally:
        await memory.close()


def test_bad_cluster_arguments_are_refused_before_any_io() -> None:
    with pytest.raises(InvalidArgumentError):
        RedisMemory(nodes="127.0.0.1:7000")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        RedisMemory(nodes=["no-port"])
    with pytest.raises(InvalidArgumentError):
        RedisMemory(nodes=["127.0.0.1:7000"], cluster=False)
    with pytest.raises(InvalidArgumentError):
        RedisMemory(cluster="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        RedisMemory(url="redis://127.0.0.1:7000/1", cluster=True)
    with pytest.raises(InvalidArgumentError):
        make_cluster(url="http://127.0.0.1:7000", max_connections=2)
    with pytest.raises(InvalidArgumentError):
        make_cluster(nodes=["redis://"], max_connections=2)
    with pytest.raises(InvalidArgumentError):
        make_cluster(nodes=["127.0.0.1:7000"], max_connections=0)
    for bad in (
        {"nodes": ["ftp://user:secret@127.0.0.1:7000"]},
        {"url": "redis://user:secret@127.0.0.1:notaport/0"},
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            make_cluster(max_connections=2, **bad)  # type: ignore[arg-type]
        assert "secret" not in str(caught.value)


async def _exercise(memory: RedisMemory, tag: str, count: int) -> None:
    """Every kind of call: scripts with several keys, reads, listing, search, partitions."""
    await memory.store_many({f"aqe/{tag}/{i:03d}": i for i in range(count)}, partition="bulk")
    await memory.store(f"aqe/{tag}/meta", {"tag": tag}, partition="meta", ttl=60)
    await memory.store(f"aqe/{tag}/gone", 0, partition="bulk", ttl=0.001)
    assert await memory.increment(f"aqe/{tag}/counter", 2) == 2
    assert await memory.retrieve_many([f"aqe/{tag}/000", f"aqe/{tag}/meta"]) == {
        f"aqe/{tag}/000": 0,
        f"aqe/{tag}/meta": {"tag": tag},
    }
    assert len(await memory.list_keys(f"aqe/{tag}/0")) == count
    assert len(await memory.search(f"aqe/{tag}/0[0-4]?")) == min(count, 50)
    assert await memory.expire(f"aqe/{tag}/meta", 30)
    assert await memory.delete(f"aqe/{tag}/001")
    assert await memory.clear_partition("meta") == 1
    await memory.cleanup_expired()


async def test_stores_under_different_prefixes_land_on_different_masters(
    aqe_cluster_shared: ThrowawayCluster, stores: dict[int, RedisMemory]
) -> None:
    """A store on each master: every operation works there, and each store's keys (entries,
    index, partition sets) all live on its own master, in one slot."""
    assert len(stores) == 3
    for port, memory in stores.items():
        await _exercise(memory, f"m{port}", 12)
    for port, memory in stores.items():
        keys = await _node_keys(aqe_cluster_shared, port, memory.prefix)
        assert len(keys) > 12  # entries plus the index, the key→partition hash, partition sets
        assert {key_slot(key) for key in keys} == {_slot(memory.prefix)}
        for other in stores:
            if other != port:
                assert await _node_keys(aqe_cluster_shared, other, memory.prefix) == []


async def test_stats_come_from_the_master_of_the_slot_and_add_up(
    aqe_cluster_shared: ThrowawayCluster, stores: dict[int, RedisMemory]
) -> None:
    counts = dict(zip(stores, (5, 7, 11), strict=True))
    for port, memory in stores.items():
        await memory.store_many({f"aqe/s/{i}": i for i in range(counts[port])}, partition="p")
        await memory.store("aqe/s/extra", "x")
    total = 0
    for port, memory in stores.items():
        stats = await memory.get_stats()
        assert stats["cluster"] is True
        assert stats["server"] == f"127.0.0.1:{port}"  # INFO from the slot's master
        assert stats["total_keys"] == counts[port] + 1
        assert stats["partitions"] == {"default": 1, "p": counts[port]}
        assert stats["memory_used"] > 0 and stats["connected_clients"] >= 1
        assert stats["keyspace_info"]["db0"]["keys"] >= counts[port] + 1
        total += stats["total_keys"]
    assert total == sum(counts.values()) + len(stores)


async def test_the_gate_bounds_connections_per_node_and_cancellation_leaks_none(
    aqe_cluster_shared: ThrowawayCluster,
) -> None:
    """Many concurrent calls, a third of them cancelled mid-flight, through a gate of 2: no
    node ever gets a third connection (redis-py would refuse it: MaxConnectionsError), and
    afterwards every connection is back in its node's free list."""
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    memory = RedisMemory(url=aqe_cluster_shared.url, prefix=prefix, max_connections=2)
    try:
        await memory.store_many({f"aqe/g/{i}": i for i in range(50)})

        async def call(number: int) -> Any:
            if number % 3 == 0:
                task = asyncio.ensure_future(memory.search("aqe/g/*"))
                await asyncio.sleep(0.0005 * (number % 7))
                task.cancel()
                return await asyncio.gather(task, return_exceptions=True)
            return await memory.store(f"aqe/g/{number}", number)

        results = await asyncio.gather(*(call(n) for n in range(120)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        client = memory.client
        assert isinstance(client, RedisCluster)
        await asyncio.sleep(0.05)  # let redis-py finish background reconnects
        for node in client.get_nodes():
            assert len(node._connections) <= 2, node
            assert len(node._free) == len(node._connections), node  # none left checked out
        assert await memory.retrieve("aqe/g/1") == 1
        expected = set(range(50)) | {n for n in range(120) if n % 3}
        assert len(await memory.list_keys("aqe/g/")) == len(expected)
    finally:
        await memory.close()
        await delete_cluster_prefix(aqe_cluster_shared, prefix)


async def test_connections_closed_by_the_server_are_replaced_before_use(
    aqe_cluster_shared: ThrowawayCluster,
) -> None:
    """A node that closed this client's idle connections (``CLIENT KILL``, an idle timeout, a
    restart) costs no call a failure: commands are never retried, so each closed connection
    must be replaced before a command is sent on it."""
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    name = f"aqe-heal-{uuid.uuid4().hex[:8]}"
    memory = RedisMemory(url=aqe_cluster_shared.url, prefix=prefix, client_name=name)
    try:
        await asyncio.gather(*(memory.store(f"aqe/h/{i}", i) for i in range(8)))
        master = await asyncio.to_thread(aqe_cluster_shared.master_of_slot, _slot(prefix))
        admin = Redis(host="127.0.0.1", port=master)
        try:
            mine = [c for c in await admin.client_list() if c.get("name") == name]
            assert mine, "the memory's connections announce their name"
            for connection in mine:
                await admin.client_kill_filter(_id=connection["id"])
        finally:
            await admin.aclose()
        await asyncio.sleep(0.05)  # the FINs arrive; the connections sit idle in the pool
        results = await asyncio.gather(
            *(memory.retrieve(f"aqe/h/{i}") for i in range(8)), return_exceptions=True
        )
        assert results == list(range(8))
    finally:
        await memory.close()
        await delete_cluster_prefix(aqe_cluster_shared, prefix)
