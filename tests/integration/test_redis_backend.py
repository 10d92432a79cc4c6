"""RedisMemory beyond the contract suite: what only a Redis backend can get wrong.

Real Redis only: the shared test server (each test under a key prefix of its own) and, for
restarts and passwords, private ``redis-server`` processes on free loopback ports.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio as redis
from redis.crc import key_slot

from lionagi_qe.backends.redis import RedisMemory, keyspace
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidPartitionError,
    InvalidPatternError,
    InvalidTTLError,
    KeyNotFoundError,
    SerializationError,
    ValueTooLargeError,
)
from lionagi_qe.persistence import RedisMemory as PersistenceRedisMemory
from lionagi_qe.persistence.redis_memory import RedisMemory as OriginalPathRedisMemory
from lionagi_qe.testing import run_concurrently

pytestmark = [pytest.mark.integration, pytest.mark.redis]

MakeMemory = Callable[..., RedisMemory]


def _entry_key(memory: RedisMemory, key: str) -> str:
    return keyspace(memory.prefix) + "e:" + key


async def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.unlink(*keys)


@pytest_asyncio.fixture(loop_scope="session")
async def raw(aqe_redis_url: str) -> AsyncIterator[redis.Redis]:
    """A plain client on the shared test server, for looking behind the backend's back."""
    client = redis.Redis.from_url(aqe_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def make_memory(aqe_redis_url: str, raw: redis.Redis) -> AsyncIterator[MakeMemory]:
    """Build RedisMemories on the shared server, each under a fresh prefix deleted afterwards."""
    made: list[RedisMemory] = []

    def make(**kwargs: Any) -> RedisMemory:
        kwargs.setdefault("url", aqe_redis_url)
        kwargs.setdefault("prefix", f"aqe-test:{uuid.uuid4().hex[:12]}:")
        memory = RedisMemory(**kwargs)
        made.append(memory)
        return memory

    try:
        yield make
    finally:
        for memory in made:
            await memory.close()
            await _delete_prefix(raw, memory.prefix)


# -- private servers --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of this test's own on a free loopback port, data in ``directory``."""

    def __init__(self, directory: Path, *args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.port = _free_port()
        self.directory = directory
        self.args = args
        self.password: str | None = None
        if "--requirepass" in args:
            self.password = args[args.index("--requirepass") + 1]
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            *self.args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            for _ in range(200):
                try:
                    if await client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, OSError):
                    await asyncio.sleep(0.05)
            pytest.fail(f"private redis-server on port {self.port} did not start")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """SHUTDOWN (the AOF is flushed first), then wait for the process to exit."""
        if self.process is None or self.process.returncode is not None:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            await client.shutdown()
        except (redis.ConnectionError, OSError):
            pass  # the server closes the connection as it goes
        finally:
            await client.aclose()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def private_redis(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start private servers on demand; every one is stopped at the end."""
    servers: list[PrivateRedis] = []

    async def start(*args: str) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", *args)
        server.directory.mkdir()
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def hanging_port() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# -- TTLs on the server -----------------------------------------------------------------------


async def test_ttl_is_native_and_read_back_from_the_server(
    redis_memory: RedisMemory, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The application's wall clock is an hour fast: nothing may depend on it.
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 3600 * 10**9)
    await redis_memory.store("aqe/test/hb", "alive", ttl=30)
    entry_key = _entry_key(redis_memory, "aqe/test/hb")
    server_ms = await raw.pttl(entry_key)
    assert 29_000 < server_ms <= 30_000, "the entry carries a native Redis expiry"
    remaining = await redis_memory.ttl("aqe/test/hb")
    assert remaining is not None and abs(remaining * 1000 - server_ms) < 1000
    entry = await redis_memory.get_entry("aqe/test/hb")
    assert entry is not None and entry.expires_at is not None
    # expires_at is the server's own expiry time, to the millisecond (server clock, not ours).
    expire_time_ms = await raw.execute_command("PEXPIRETIME", entry_key)
    assert int(entry.expires_at.timestamp() * 1000 + 0.5) == expire_time_ms
    seconds, micros = await raw.time()
    server_now = seconds + micros / 1e6
    assert abs(entry.created_at.timestamp() - server_now) < 5
    assert abs(entry.expires_at.timestamp() - (server_now + 30)) < 5


async def test_float_ttl_has_millisecond_precision(
    redis_memory: RedisMemory, raw: redis.Redis
) -> None:
    await redis_memory.store("aqe/test/ms", 1, ttl=1.2345)
    server_ms = await raw.pttl(_entry_key(redis_memory, "aqe/test/ms"))
    assert 1_100 < server_ms <= 1_235


async def test_store_without_ttl_persists_and_expire_replaces(
    redis_memory: RedisMemory, raw: redis.Redis
) -> None:
    entry_key = _entry_key(redis_memory, "aqe/test/persist")
    await redis_memory.store("aqe/test/persist", 1, ttl=50)
    await redis_memory.store("aqe/test/persist", 2)
    assert await raw.pttl(entry_key) == -1, "ttl=None removes the server-side expiry"
    assert await redis_memory.expire("aqe/test/persist", 7) is True
    assert 6_000 < await raw.pttl(entry_key) <= 7_000
    await redis_memory.increment("aqe/test/persist-counter", 1, ttl=20)
    await redis_memory.increment("aqe/test/persist-counter", 1)
    assert await raw.pttl(_entry_key(redis_memory, "aqe/test/persist-counter")) > 19_000


async def test_server_expiry_removes_the_data(redis_memory: RedisMemory, raw: redis.Redis) -> None:
    await redis_memory.store("aqe/test/short", "x", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await raw.exists(_entry_key(redis_memory, "aqe/test/short")) == 0
    stats = await redis_memory.get_stats()
    assert (stats["total_keys"], stats["total_expired"]) == (0, 1)
    assert await redis_memory.cleanup_expired() == 1, "the index member is purged and counted"
    assert (await redis_memory.get_stats())["total_expired"] == 0


async def test_delete_removes_index_members(redis_memory: RedisMemory, raw: redis.Redis) -> None:
    await redis_memory.store("aqe/test/d/live", 1, partition="p")
    await redis_memory.store("aqe/test/d/dead", 1, partition="p", ttl=0.2)
    await asyncio.sleep(0.35)
    assert await redis_memory.delete("aqe/test/d/live") is True
    assert await redis_memory.delete("aqe/test/d/dead") is False
    stats = await redis_memory.get_stats()
    # As on SQL: an expired leftover stays counted as expired until cleanup_expired.
    assert (stats["total_keys"], stats["total_expired"]) == (0, 1)
    space = keyspace(redis_memory.prefix)
    assert await raw.zrange(space + "idx", 0, -1) == [b"aqe/test/d/dead"]
    assert await raw.smembers(space + "p:p") == {b"aqe/test/d/dead"}
    assert await redis_memory.cleanup_expired() == 1
    assert await raw.exists(space + "idx", space + "kp", space + "p:p") == 0, "nothing left"


# -- search and listing -----------------------------------------------------------------------


async def test_glob_is_ours_not_redis_match(redis_memory: RedisMemory) -> None:
    keys = ["aqe/s/a^", "aqe/s/ab", "aqe/s/ac", "aqe/s/é", "aqe/s/x", "aqe/s/\\q"]
    await redis_memory.store_many({key: key for key in keys})
    # Redis MATCH reads [^b] as "not b" and ? as one byte; our glob reads ^ as a literal in a
    # class (negation is [!b]) and ? as one character.
    assert list(await redis_memory.search("aqe/s/a[^b]")) == ["aqe/s/a^", "aqe/s/ab"]
    assert list(await redis_memory.search("aqe/s/a[!b]")) == ["aqe/s/a^", "aqe/s/ac"]
    assert list(await redis_memory.search("aqe/s/?")) == ["aqe/s/x", "aqe/s/é"]
    assert list(await redis_memory.search("aqe/s/\\\\q")) == ["aqe/s/\\q"]


async def test_listing_is_code_point_sorted(redis_memory: RedisMemory) -> None:
    keys = [
        "aqe/l/b",
        "aqe/l/a",
        "aqe/l/B",
        "aqe/l/ä",
        "aqe/l/𝄞",
        "aqe/l/z",
        "aqe/l/a/b",
        "aqe/l/a0",
    ]
    shuffled = keys[:]
    random.shuffle(shuffled)
    for key in shuffled:
        await redis_memory.store(key, 1)
    assert await redis_memory.list_keys("aqe/l/") == sorted(keys)
    assert list(await redis_memory.search("aqe/l/*")) == sorted(keys)
    assert await redis_memory.list_keys("aqe/l/a") == ["aqe/l/a", "aqe/l/a/b", "aqe/l/a0"]


async def test_pages_of_the_index_add_up(make_memory: MakeMemory) -> None:
    """A tiny batch size makes every walk cross many page boundaries, dead members included."""
    memory = make_memory(batch_size=3)
    live = {f"aqe/pg/{i:02d}": i for i in range(0, 40, 2)}
    await memory.store_many(live, partition="even")
    await memory.store_many({f"aqe/pg/{i:02d}": i for i in range(1, 40, 2)}, ttl=0.2)
    await memory.store("aqe/pg/zz", "odd-one", partition="other")
    await asyncio.sleep(0.35)
    everything = {**live, "aqe/pg/zz": "odd-one"}
    assert await memory.list_keys() == sorted(everything)
    assert await memory.search("aqe/pg/*") == everything
    assert list(await memory.search("aqe/pg/*", limit=7)) == sorted(everything)[:7]
    assert list(await memory.search(r"/\d[05]$", regex=True, limit=3)) == [
        "aqe/pg/00",
        "aqe/pg/10",
        "aqe/pg/20",
    ]
    stats = await memory.get_stats()
    assert stats["total_keys"] == 21 and stats["total_expired"] == 20
    assert stats["partitions"] == {"even": 20, "other": 1}
    assert await memory.clear_partition("default") == 0
    assert (await memory.get_stats())["total_expired"] == 0, "clearing purges dead members"
    assert await memory.clear_partition("even") == 20
    assert await memory.list_keys() == ["aqe/pg/zz"]


async def test_cleanup_walks_pages(make_memory: MakeMemory) -> None:
    memory = make_memory(batch_size=4)
    await memory.store_many({f"aqe/cu/{i:02d}": i for i in range(25)}, ttl=0.2)
    await memory.store_many({f"aqe/cu/k{i:02d}": i for i in range(6)})
    await asyncio.sleep(0.35)
    assert await memory.cleanup_expired() == 25
    assert await memory.cleanup_expired() == 0
    assert len(await memory.list_keys()) == 6


# -- statistics -------------------------------------------------------------------------------


async def test_stats_carry_real_server_figures(
    redis_memory: RedisMemory, raw: redis.Redis, aqe_redis_url: str
) -> None:
    await redis_memory.store_many({f"aqe/st/{i}": "v" * 100 for i in range(10)})
    await raw.set(f"aqe-foreign:{uuid.uuid4().hex}", "not ours", ex=60)
    stats = await redis_memory.get_stats()
    info = await raw.info("memory")
    assert stats["backend"] == "redis"
    assert stats["total_keys"] == 10, "only this store's keys count"
    assert stats["memory_used"] > 0 and stats["memory_peak"] > 0
    assert stats["memory_peak"] >= min(stats["memory_used"], info["used_memory_peak"])
    assert abs(stats["memory_used"] - info["used_memory"]) < 64 * 1024 * 1024
    assert stats["connected_clients"] >= 2  # the memory's connection and ``raw``
    db = urlsplit(aqe_redis_url).path.strip("/") or "0"
    keyspace_info = stats["keyspace_info"][f"db{db}"]
    assert keyspace_info["keys"] >= 10 + 3  # our entries, our indexes, the foreign key
    assert keyspace_info["expires"] >= 1


# -- the pool ---------------------------------------------------------------------------------


async def _connections_named(raw: redis.Redis, name: str) -> int:
    return sum(1 for client in await raw.client_list() if client.get("name") == name)


async def test_hundred_concurrent_operations_share_a_bounded_pool(
    make_memory: MakeMemory, raw: redis.Redis
) -> None:
    name = f"aqe-pool-{uuid.uuid4().hex[:8]}"
    memory = make_memory(max_connections=4, client_name=name)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await _connections_named(raw, name))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())

    async def agent(i: int) -> Any:
        await memory.store(f"aqe/pool/{i}", {"i": i}, partition="pool")
        await memory.increment("aqe/pool/count")
        return await memory.retrieve(f"aqe/pool/{i}")

    try:
        results = await asyncio.gather(*(agent(i) for i in range(100)))
    finally:
        watcher.cancel()
    assert results == [{"i": i} for i in range(100)]
    assert await memory.retrieve("aqe/pool/count") == 100
    opened = await _connections_named(raw, name)
    assert 2 <= opened <= 4, "calls ran concurrently and the pool kept its bound"
    assert peak <= 4
    await asyncio.gather(*(memory.retrieve(f"aqe/pool/{i}") for i in range(100)))
    assert await _connections_named(raw, name) == opened, "connections are reused"
    await memory.close()
    await asyncio.sleep(0.05)
    assert await _connections_named(raw, name) == 0, "close() disconnects the pool"


async def test_a_full_pool_makes_callers_wait_then_fail_typed(
    make_memory: MakeMemory, hanging_port: int
) -> None:
    one = make_memory(max_connections=1, pool_timeout=5)
    await one.store("aqe/full/x", 1)
    assert await asyncio.gather(*(one.retrieve("aqe/full/x") for _ in range(20))) == [1] * 20

    # A server that never answers holds the only connection for a whole socket timeout.
    stuck = RedisMemory(
        port=hanging_port, max_connections=1, pool_timeout=0.05, socket_timeout=1.0, prefix="x:"
    )
    try:
        holder = asyncio.create_task(stuck.retrieve("aqe/full/x"))
        await asyncio.sleep(0.05)
        with pytest.raises(BackendUnavailableError, match=r"came free within 0\.05 s"):
            await stuck.retrieve("aqe/full/x")
        with pytest.raises(BackendUnavailableError, match="TimeoutError"):
            await holder
    finally:
        await stuck.close()


async def test_cancelled_calls_do_not_leak_connections(
    make_memory: MakeMemory, raw: redis.Redis
) -> None:
    name = f"aqe-cancel-{uuid.uuid4().hex[:8]}"
    memory = make_memory(max_connections=2, client_name=name, pool_timeout=2)
    batch = {f"aqe/cancel/{i}": "x" * 200 for i in range(2000)}
    for _ in range(3):
        tasks = [asyncio.create_task(memory.store_many(batch)) for _ in range(6)]
        await asyncio.sleep(0.002)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Both connections must be usable again: two calls at once, each within the pool timeout.
    results = await asyncio.gather(*(memory.exists("aqe/cancel/1") for _ in range(10)))
    assert len(results) == 10
    assert await _connections_named(raw, name) <= 2


async def test_no_event_loop_stall_under_load(redis_memory: RedisMemory) -> None:
    """Liveness, not speed: while a call waits on Redis, the event loop keeps turning."""
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - due)

    async def agent(i: int) -> None:
        await redis_memory.store(f"aqe/tick/k{i}", {"i": i}, ttl=30)
        assert await redis_memory.retrieve(f"aqe/tick/k{i}") == {"i": i}
        if i % 5 == 0:
            await redis_memory.store_many({f"aqe/tick/{i}/{j}": j for j in range(100)})
            assert len(await redis_memory.search(f"aqe/tick/{i}/*")) == 100

    task = asyncio.create_task(ticker())
    try:
        report = await run_concurrently([lambda i=i: agent(i) for i in range(200)], limit=50)
        report.raise_first()
        assert report.max_in_flight == 50
        assert lags and max(lags) < 1.0, "the loop kept turning under 200 operations"
        # One call whose server side runs long (a 60,000-entry script): a blocking client
        # would freeze the loop for all of it; ours encodes in small chunks, then only waits.
        batch = {f"aqe/tick/big/{i}": "v" * 50 for i in range(60_000)}
        await asyncio.sleep(0.01)  # building the batch held the loop: not the memory's doing
        # Garbage-collector pauses (their length grows with the whole process's heap, coverage
        # included) are not what this test is about: blocking I/O is.
        gc.disable()
        lags.clear()
        started = time.perf_counter()
        assert await redis_memory.store_many(batch) == 60_000
        took = time.perf_counter() - started
        await asyncio.sleep(0.01)  # let a tick that came late record its lateness
    finally:
        gc.enable()
        task.cancel()
    assert len(lags) > 10, f"only {len(lags)} ticks in {took * 1000:.0f} ms"
    assert max(lags) < 0.15, f"event loop stalled for {max(lags) * 1000:.0f} ms"


# -- foreign keys and isolation ---------------------------------------------------------------


async def test_foreign_keys_never_appear_and_never_crash(
    make_memory: MakeMemory, raw: redis.Redis
) -> None:
    memory = make_memory()
    uid = uuid.uuid4().hex[:10]
    other = f"aqe-foreign:{uid}:"
    foreign: list[bytes | str] = [
        f"aqe/foreign/{uid}",  # looks like an entry key, no prefix
        f"lionagi:aqe/foreign/{uid}",  # the original layout's key form
        keyspace(other) + "e:aqe/test/a",  # another store's entry
        keyspace(other) + "idx",
        b"aqe/\xff\xfe" + uid.encode(),  # not UTF-8
        memory.prefix.rstrip(":") + "-sibling:aqe/x",  # shares a textual prefix, not ours
    ]
    await raw.set(foreign[0], "plain", ex=120)
    await raw.rpush(foreign[1], "a", "list")
    await raw.expire(foreign[1], 120)
    await raw.hset(foreign[2], mapping={"v": '"theirs"', "n": "1", "p": "default"})
    await raw.expire(foreign[2], 120)
    await raw.zadd(foreign[3], {"aqe/test/a": 0, "aqe/test/zz": 0})
    await raw.expire(foreign[3], 120)
    await raw.set(foreign[4], b"\x80\x81 binary", ex=120)
    await raw.sadd(foreign[5], "member")
    await raw.expire(foreign[5], 120)
    other_namespace = make_memory(prefix=memory.prefix, namespace="other/")
    try:
        await other_namespace.store("other/x", "other namespace", partition="default")
        await memory.store("aqe/test/a", "ours")
        await memory.store("aqe/test/b", "ours too", partition="mine")

        assert await memory.list_keys() == ["aqe/test/a", "aqe/test/b"]
        assert await memory.search("*") == {"aqe/test/a": "ours", "aqe/test/b": "ours too"}
        assert list(await memory.search(".", regex=True)) == ["aqe/test/a", "aqe/test/b"]
        assert await memory.retrieve("aqe/test/a") == "ours"
        stats = await memory.get_stats()
        assert stats["total_keys"] == 2 and stats["partitions"] == {"default": 1, "mine": 1}
        assert await memory.cleanup_expired() == 0
        assert await memory.clear_partition("default") == 1
        assert await other_namespace.retrieve("other/x") == "other namespace"
        assert await other_namespace.list_keys() == ["other/x"]
        assert (await other_namespace.get_stats())["total_keys"] == 1
        # Nothing foreign was touched.
        assert await raw.get(foreign[0]) == b"plain"
        assert await raw.lrange(foreign[1], 0, -1) == [b"a", b"list"]
        assert await raw.hget(foreign[2], "v") == b'"theirs"'
        assert await raw.zcard(foreign[3]) == 2
        assert await raw.get(foreign[4]) == b"\x80\x81 binary"
        assert await raw.smembers(foreign[5]) == {b"member"}
    finally:
        await raw.delete(*foreign)


async def test_two_prefixes_are_isolated(make_memory: MakeMemory) -> None:
    first, second = make_memory(), make_memory()
    await first.store("aqe/shared/key", "first", partition="p")
    await second.store("aqe/shared/key", "second", partition="p")
    await second.store("aqe/shared/only-second", 2, partition="p")
    assert await first.retrieve("aqe/shared/key") == "first"
    assert await first.list_keys() == ["aqe/shared/key"]
    assert await first.clear_partition("p") == 1
    assert await second.retrieve("aqe/shared/key") == "second"
    assert (await second.get_stats())["partitions"] == {"p": 2}
    assert await second.increment("aqe/shared/n") == 1
    assert await first.increment("aqe/shared/n", 10) == 10


async def test_every_key_starts_with_the_prefix_and_shares_one_cluster_slot(
    private_redis: Callable[..., Any],
) -> None:
    server = await private_redis()
    prefix = "fleet-7:"
    memory = RedisMemory(url=server.url, prefix=prefix)
    other = RedisMemory(url=server.url, prefix="fleet-8:")
    try:
        await memory.store("aqe/a", 1, partition="x", ttl=60)
        await memory.store_many({"aqe/b": 2, "aqe/c": 3}, partition="y")
        await memory.increment("aqe/n")
        await other.store("aqe/a", 1)
        keys = [key async for key in memory.client.scan_iter(count=1000)]
        ours = [key for key in keys if key.startswith(prefix.encode())]
        assert len(ours) + 4 == len(keys), "only the other store's 4 keys lie outside"
        assert len({key_slot(key) for key in ours}) == 1, "one hash tag: one cluster slot"
        theirs = {key_slot(key) for key in keys if key not in ours}
        assert len(theirs) == 1 and theirs != {key_slot(ours[0])}
    finally:
        await memory.close()
        await other.close()


def test_keyspace_hash_tags() -> None:
    assert keyspace("lionagi:") == "lionagi:{lionagi}:"
    assert keyspace("{fleet}:a:").startswith("{fleet}:a:")
    assert key_slot(keyspace("{fleet}:a:").encode() + b"e:x") == key_slot(b"{fleet}")
    for bad in ("", "a{}b:"):
        with pytest.raises(InvalidArgumentError):
            keyspace(bad)


# -- values that only Lua computes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "deltas"),
    [
        (0.1, [0.2]),
        (1e16, [1.0]),
        (5e-324, [5e-324]),
        (1e22, [1e22]),
        (-0.5, [0.5]),
        (123456789.123456789, [1e-7, 3]),
        (2, [0.25, 1e300]),
        (1.5, [-3]),
    ],
)
async def test_float_counters_are_stored_as_python_writes_them(
    redis_memory: RedisMemory, raw: redis.Redis, start: Any, deltas: list[Any]
) -> None:
    await redis_memory.store("aqe/test/f", start)
    expected = start
    for delta in deltas:
        expected += delta
        assert await redis_memory.increment("aqe/test/f", delta) == expected
    stored = await raw.hget(_entry_key(redis_memory, "aqe/test/f"), "v")
    assert stored == json.dumps(expected).encode(), "the JSON text is Python's repr"
    stats = await redis_memory.get_stats()
    assert stats["size_bytes"] == len("aqe/test/f") + len(json.dumps(expected))


async def test_integer_counters_are_exact_64_bit(redis_memory: RedisMemory) -> None:
    big = 2**62 + 1  # beyond a double's 53-bit mantissa
    await redis_memory.store("aqe/test/big", big)
    assert await redis_memory.increment("aqe/test/big", 2**62 - 2) == 2**63 - 1
    with pytest.raises(SerializationError, match="overflows"):
        await redis_memory.increment("aqe/test/big", 1)
    assert await redis_memory.retrieve("aqe/test/big") == 2**63 - 1
    entry = await redis_memory.get_entry("aqe/test/big")
    assert entry is not None and entry.version == 2, "a refused increment writes nothing"


async def test_store_many_is_all_or_nothing_on_a_server_error(
    redis_memory: RedisMemory, raw: redis.Redis
) -> None:
    await redis_memory.store("aqe/test/keep", "kept")
    # Someone wrote a string where an entry hash belongs: the script fails on its read phase.
    await raw.set(_entry_key(redis_memory, "aqe/test/m/5"), "clobbered")
    batch = {f"aqe/test/m/{i}": i for i in range(10)}
    with pytest.raises(BackendUnavailableError) as info:
        await redis_memory.store_many(batch)
    assert "WRONGTYPE" in str(info.value)
    assert await redis_memory.list_keys("aqe/test/m/") == []
    assert await redis_memory.retrieve_many([key for key in batch if key != "aqe/test/m/5"]) == {}
    stats = await redis_memory.get_stats()
    assert stats["total_keys"] == 1 and stats["partitions"] == {"default": 1}


async def test_large_batches_are_encoded_in_chunks(redis_memory: RedisMemory) -> None:
    pairs = [(f"aqe/big/{i:05d}", i) for i in range(2500)]
    pairs.append(("aqe/big/00007", "last wins across chunks"))
    assert await redis_memory.store_many(iter(pairs), partition="big") == 2500
    assert await redis_memory.retrieve("aqe/big/00007") == "last wins across chunks"
    assert await redis_memory.retrieve("aqe/big/02499") == 2499
    bad = {f"aqe/bad/{i:05d}": i for i in range(2500)}
    bad["aqe/bad/02400"] = float("nan")  # in the third chunk
    with pytest.raises(SerializationError):
        await redis_memory.store_many(bad)
    assert await redis_memory.list_keys("aqe/bad/") == []
    assert (await redis_memory.get_stats())["partitions"] == {"big": 2500}


# -- persistence ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_values_versions_and_ttls_survive_a_restart(
    private_redis: Callable[..., Any],
) -> None:
    server = await private_redis()
    memory = RedisMemory(url=server.url, prefix="persist:")
    try:
        await memory.store("aqe/p/plain", {"v": 1}, partition="kept", metadata={"by": "gen-1"})
        await memory.store("aqe/p/plain", {"v": 2}, partition="kept", metadata={"by": "gen-2"})
        await memory.store("aqe/p/ttl", "lease", ttl=60)
        await memory.store("aqe/p/brief", "gone soon", ttl=1.0)
        await memory.increment("aqe/p/counter", 41)
        await memory.increment("aqe/p/counter")
        before = {key: await memory.get_entry(key) for key in ("aqe/p/plain", "aqe/p/ttl")}
        stored_at = time.monotonic()

        await server.stop()
        with pytest.raises(BackendUnavailableError):
            await memory.retrieve("aqe/p/plain")
        await server.start()
        await asyncio.sleep(max(0.0, 1.2 - (time.monotonic() - stored_at)))

        # The same memory heals (stale pooled sockets are replaced; scripts are reloaded).
        assert await memory.get_entry("aqe/p/plain") == before["aqe/p/plain"]
        after = await memory.get_entry("aqe/p/ttl")
        assert after == before["aqe/p/ttl"], "value, version and expires_at survive"
        remaining = await memory.ttl("aqe/p/ttl")
        assert remaining is not None and 45 < remaining <= 60
        assert await memory.retrieve("aqe/p/brief") is None, "expired while the server was down"
        assert await memory.retrieve("aqe/p/counter") == 42
        assert await memory.store("aqe/p/plain", {"v": 3}) == 3
        assert await memory.increment("aqe/p/counter") == 43
        assert await memory.list_keys() == ["aqe/p/counter", "aqe/p/plain", "aqe/p/ttl"]
        stats = await memory.get_stats()
        assert stats["total_keys"] == 3 and stats["total_expired"] == 1

        fresh = RedisMemory(url=server.url, prefix="persist:")
        try:
            assert await fresh.retrieve("aqe/p/plain") == {"v": 3}
            assert await fresh.cleanup_expired() == 1
        finally:
            await fresh.close()
    finally:
        await memory.close()


# -- construction, credentials, lifecycle -----------------------------------------------------


async def test_constructor_forms(aqe_redis_url: str, raw: redis.Redis) -> None:
    parts = urlsplit(aqe_redis_url)
    prefix = f"aqe-test:{uuid.uuid4().hex[:12]}:"
    caller_client = redis.Redis.from_url(aqe_redis_url)
    forms = [
        RedisMemory(parts.hostname or "localhost", parts.port or 6379, prefix=prefix),
        RedisMemory(host="127.0.0.1", port=parts.port or 6379, db=0, prefix=prefix),
        RedisMemory(url=aqe_redis_url, prefix=prefix, max_connections=3),
        RedisMemory(host="nowhere.invalid", port=1, url=aqe_redis_url, prefix=prefix),
        RedisMemory(client=caller_client, prefix=prefix),
    ]
    try:
        assert await forms[0].store("aqe/ctor/x", "hello") == 1
        for memory in forms:
            assert await memory.retrieve("aqe/ctor/x") == "hello", repr(memory)
        assert PersistenceRedisMemory is RedisMemory is OriginalPathRedisMemory
    finally:
        for memory in forms:
            await memory.close()
    assert await caller_client.ping(), "close() leaves a caller's client open"
    await caller_client.aclose()
    await _delete_prefix(raw, prefix)


async def test_a_callers_client_may_decode_responses(
    make_memory: MakeMemory, aqe_redis_url: str
) -> None:
    """A ``client=`` built with ``decode_responses=True`` hands back str, not bytes."""
    text_client = redis.Redis.from_url(aqe_redis_url, decode_responses=True)
    memory = make_memory(client=text_client, batch_size=2)
    try:
        await memory.store("aqe/txt/a", {"é": 1}, partition="p", metadata={"m": 1}, ttl=60)
        await memory.store_many({"aqe/txt/b": "two", "aqe/txt/c": [3]})
        await memory.store("aqe/txt/dead", 0, ttl=0.05)
        await asyncio.sleep(0.1)
        entry = await memory.get_entry("aqe/txt/a")
        assert entry is not None and entry.metadata == {"m": 1} and entry.expires_at is not None
        assert await memory.search("aqe/txt/*") == {
            "aqe/txt/a": {"é": 1},
            "aqe/txt/b": "two",
            "aqe/txt/c": [3],
        }
        assert list(await memory.search("aqe/txt/[ab]")) == ["aqe/txt/a", "aqe/txt/b"]
        assert await memory.list_keys("aqe/txt/") == ["aqe/txt/a", "aqe/txt/b", "aqe/txt/c"]
        assert await memory.increment("aqe/txt/n", 1.5) == 1.5
        assert (await memory.get_stats())["partitions"] == {"default": 3, "p": 1}
        assert await memory.cleanup_expired() == 1
        assert await memory.clear_partition("default") == 3
    finally:
        await text_client.aclose()


async def test_password_protected_server(private_redis: Callable[..., Any]) -> None:
    secret = f"pw-{uuid.uuid4().hex[:12]}"
    server = await private_redis("--requirepass", secret)
    by_host = RedisMemory("127.0.0.1", server.port, password=secret, prefix="auth:")
    by_url = RedisMemory(url=server.url, prefix="auth:")
    wrong = RedisMemory(url=f"redis://:wrong-{secret}@127.0.0.1:{server.port}/0", prefix="auth:")
    anonymous = RedisMemory("127.0.0.1", server.port, prefix="auth:")
    try:
        assert await by_host.store("aqe/auth/x", 1) == 1
        assert await by_url.retrieve("aqe/auth/x") == 1
        for memory in (wrong, anonymous):
            with pytest.raises(BackendUnavailableError) as info:
                await memory.retrieve("aqe/auth/x")
            assert secret not in str(info.value)
        for memory in (by_host, by_url, wrong):
            assert secret not in repr(memory)
        assert "***" in repr(by_url)
    finally:
        for memory in (by_host, by_url, wrong, anonymous):
            await memory.close()


async def test_invalid_url_is_a_typed_error_without_the_password() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        RedisMemory(url="http://user:hunter2@example.com/")
    assert "hunter2" not in str(info.value)


async def test_unreachable_and_hanging_servers_fail_fast(hanging_port: int) -> None:
    refused = RedisMemory(port=_free_port(), socket_connect_timeout=0.2, prefix="x:")
    hanging = RedisMemory(
        port=hanging_port, socket_timeout=0.2, socket_connect_timeout=0.2, prefix="x:"
    )
    try:
        for memory in (refused, hanging):
            started = time.perf_counter()
            with pytest.raises(BackendUnavailableError) as info:
                await memory.store("aqe/x", 1)
            assert time.perf_counter() - started < 2
            assert isinstance(info.value.__cause__, redis.RedisError | OSError)
    finally:
        await refused.close()
        await hanging.close()


async def test_bad_input_is_refused_before_any_io() -> None:
    """Against a port where nothing listens: any I/O would raise BackendUnavailableError."""
    memory = RedisMemory(port=_free_port(), socket_connect_timeout=0.2, prefix="x:")
    calls: list[tuple[type[Exception], Callable[[], Any]]] = [
        (InvalidKeyError, lambda: memory.store("outside/x", 1)),
        (InvalidKeyError, lambda: memory.retrieve("aqe/\n")),
        (InvalidKeyError, lambda: memory.list_keys(b"aqe/")),  # type: ignore[arg-type]
        (SerializationError, lambda: memory.store("aqe/x", float("nan"))),
        (ValueTooLargeError, lambda: memory.store("aqe/x", "x" * memory.max_value_bytes)),
        (InvalidTTLError, lambda: memory.store("aqe/x", 1, ttl=0)),
        (InvalidTTLError, lambda: memory.expire("aqe/x", -1)),
        (InvalidPartitionError, lambda: memory.clear_partition("")),
        (InvalidPatternError, lambda: memory.search("aqe/[")),
        (InvalidPatternError, lambda: memory.search("(", regex=True)),
        (InvalidArgumentError, lambda: memory.search("aqe/*", limit=-1)),
        (InvalidArgumentError, lambda: memory.increment("aqe/n", "1")),
        (InvalidArgumentError, lambda: memory.store_many("aqe/x")),
        (SerializationError, lambda: memory.store_many({"aqe/a": 1, "aqe/b": object()})),
        (InvalidArgumentError, lambda: memory.retrieve_many("aqe/x")),
        (InvalidArgumentError, lambda: memory.store("aqe/x", 1, expected_version=0)),
    ]
    try:
        for error, call in calls:
            with pytest.raises(error):
                await call()
        with pytest.raises(BackendUnavailableError):
            await memory.retrieve("aqe/x")
    finally:
        await memory.close()


async def test_close_is_final(make_memory: MakeMemory) -> None:
    memory = make_memory()
    await memory.store("aqe/c/x", 1)
    await memory.close()
    await memory.close()  # idempotent
    assert "closed" in repr(memory)
    for call in (
        lambda: memory.store("aqe/c/x", 2),
        lambda: memory.retrieve("aqe/c/x"),
        lambda: memory.search("aqe/*"),
        lambda: memory.list_keys(),
        lambda: memory.get_stats(),
        lambda: memory.cleanup_expired(),
        lambda: memory.clear_partition("default"),
        lambda: memory.increment("aqe/c/n"),
    ):
        with pytest.raises(ClosedError):
            await call()
    with pytest.raises(ClosedError):
        async with memory:
            pass


async def test_ttl_of_missing_key(redis_memory: RedisMemory) -> None:
    with pytest.raises(KeyNotFoundError):
        await redis_memory.ttl("aqe/test/none")
