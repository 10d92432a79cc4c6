"""What the cache tests share: seams to force interleavings, naive caches, a private Redis.

- :class:`SeamedCachedMemory` is ``CachedMemory`` with two hold points: right after a reader's
  database read (before its fill) and right after a writer's commit (before its invalidation).
- The naive caches are what the promises are measured against. They are honest cache-asides
  that work in the happy path (tested at the bottom of this module) and have the same seams:
  ``NaiveCacheAside`` (GET, else read the database and SET with a fixed TTL; writes commit then
  DEL), ``NaiveInvalidateFirst`` (DEL, then write), ``VersionFencedCache`` (fills refused only
  when the cached version or tombstone is newer), ``NaiveSingleFlight`` (readers of a key join
  whatever load of it is in flight).
- :class:`PrivateRedis` is a ``redis-server`` of the test's own on a free loopback port, to stop,
  freeze (SIGSTOP) and restart without touching the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import codec
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.cache.records import parse_hit
from lionagi_qe.cache.source import SourceRow, read_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

KEY = "aqe/cache/hot"


# -- seams ------------------------------------------------------------------------------------


@dataclass
class Hold:
    """One armed hold point: ``reached`` is set when a task arrives, which waits for ``release``."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


class Seams:
    """Hold points and a database-read counter, shared by every implementation under test."""

    database_reads: int
    _read_holds: list[Hold]
    _write_holds: list[Hold]

    def _init_seams(self) -> None:
        self.database_reads = 0
        self._read_holds = []
        self._write_holds = []

    def hold_next_read(self) -> Hold:
        """The next database read (of a cache fill) waits, after reading, until released."""
        hold = Hold()
        self._read_holds.append(hold)
        return hold

    def hold_next_write(self) -> Hold:
        """The next write waits between its two steps (database and cache) until released."""
        hold = Hold()
        self._write_holds.append(hold)
        return hold

    async def _after_database_read(self) -> None:
        self.database_reads += 1
        if self._read_holds:
            hold = self._read_holds.pop(0)
            hold.reached.set()
            await hold.released.wait()

    async def _between_write_steps(self) -> None:
        if self._write_holds:
            hold = self._write_holds.pop(0)
            hold.reached.set()
            await hold.released.wait()


class SeamedCachedMemory(Seams, CachedMemory):
    """CachedMemory with the hold points: after the fill's read, and between commit and unlink."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_seams()
        self.lookups = 0
        invalidate = self._tier.invalidate
        lookup = self._tier._lookup

        async def counted_lookup(keys: Sequence[str], *args: Any) -> list[Any]:
            self.lookups += 1
            return await lookup(keys, *args)

        self._tier._lookup = counted_lookup  # type: ignore[method-assign]

        async def held_invalidate(keys: Sequence[str]) -> None:
            await self._between_write_steps()
            await invalidate(keys)

        self._tier.invalidate = held_invalidate  # type: ignore[method-assign]

    async def _load_from_database(self, keys: Sequence[str]) -> dict[str, SourceRow]:
        rows = await super()._load_from_database(keys)
        await self._after_database_read()
        return rows


# -- naive caches -----------------------------------------------------------------------------


class NaiveCacheAside(Seams):
    """Textbook cache-aside: GET; on a miss read the database and SET with a fixed TTL.

    Writes commit in the database, then DEL. Redis errors are swallowed (the database answers).
    """

    def __init__(
        self, database: PostgresMemory, client: aioredis.Redis, prefix: str, cache_ttl: float = 300
    ) -> None:
        self._init_seams()
        self.database = database
        self.client = client
        self.prefix = prefix
        self.cache_ttl_ms = int(cache_ttl * 1000)
        self.flights: dict[str, asyncio.Future[SourceRow | None]] = {}

    def record(self, key: str) -> str:
        return f"{self.prefix}naive:{key}"

    async def _cached(self, key: str) -> bytes | None:
        with contextlib.suppress(redis.RedisError, OSError):
            raw: bytes | None = await self.client.get(self.record(key))
            return raw
        return None

    async def _load(self, key: str) -> SourceRow | None:
        rows = await read_rows(self.database, [key])
        await self._after_database_read()
        return rows.get(key)

    async def _fill(self, key: str, row: SourceRow) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.set(self.record(key), row.value_json, px=self.cache_ttl_ms)

    async def _invalidate(self, key: str) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.delete(self.record(key))

    async def retrieve(self, key: str, *, default: Any = None) -> Any:
        raw = await self._cached(key)
        if raw is not None:
            return codec.decode(raw)
        row = await self._load(key)
        if row is None:
            return default
        await self._fill(key, row)
        return codec.decode(row.value_json)

    async def store(self, key: str, value: Any, ttl: float | None = None) -> int:
        version = await self.database.store(key, value, ttl)
        await self._between_write_steps()
        await self._invalidate(key)
        return version

    async def delete(self, key: str) -> bool:
        deleted = await self.database.delete(key)
        await self._between_write_steps()
        await self._invalidate(key)
        return deleted

    async def close(self) -> None:
        await self.client.aclose()
        await self.database.close()


class NaiveInvalidateFirst(NaiveCacheAside):
    """Cache-aside that invalidates before writing (the other classic ordering)."""

    async def store(self, key: str, value: Any, ttl: float | None = None) -> int:
        await self._invalidate(key)
        await self._between_write_steps()
        return await self.database.store(key, value, ttl)


_FENCED_FILL = """
local current = redis.call('HGET', KEYS[1], 'n')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class VersionFencedCache(NaiveCacheAside):
    """Versioned fills: a fill is refused if the cached version (or a tombstone's) is newer.

    A write leaves a tombstone carrying its version; a delete leaves one that refuses every
    fill for a second. This is the fence the lease design is measured against.
    """

    TOMBSTONE_MS = 1000

    async def _cached(self, key: str) -> bytes | None:
        raw: bytes | None = await self.client.hget(self.record(key), "v")
        return raw

    async def _fill(self, key: str, row: SourceRow) -> None:
        await self.client.eval(
            _FENCED_FILL, 1, self.record(key), row.version, row.value_json, self.cache_ttl_ms
        )

    async def _tombstone(self, key: str, version: int) -> None:
        record = self.record(key)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(record)
            pipe.hset(record, "n", version)
            pipe.pexpire(record, self.TOMBSTONE_MS)
            await pipe.execute()

    async def store(self, key: str, value: Any, ttl: float | None = None) -> int:
        version = await self.database.store(key, value, ttl)
        await self._between_write_steps()
        await self._tombstone(key, version)
        return version

    async def delete(self, key: str) -> bool:
        deleted = await self.database.delete(key)
        await self._between_write_steps()
        await self._tombstone(key, 2**62)
        return deleted


class NaiveSingleFlight(NaiveCacheAside):
    """Cache-aside whose readers of a key join any load of that key already in flight."""

    async def _load(self, key: str) -> SourceRow | None:
        flight = self.flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self.flights[key] = flight
        try:
            row = await super()._load(key)
            flight.set_result(row)
            return row
        finally:
            self.flights.pop(key, None)


# -- fixtures ---------------------------------------------------------------------------------


async def empty_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM qe_memory"))
        await connection.execute(text("DELETE FROM partitions WHERE name <> 'default'"))


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@dataclass
class Factory:
    """Builds cache-tier instances ("processes") that share one database and one prefix."""

    engine: AsyncEngine
    redis_url: str
    prefix: str = field(default_factory=lambda: f"aqe-test:{uuid.uuid4().hex[:12]}:")
    made: list[Any] = field(default_factory=list)
    urls: set[str] = field(default_factory=set)

    def cached(self, *, redis_url: str | None = None, **options: Any) -> SeamedCachedMemory:
        if redis_url is None:
            # The shared server also serves other suites on a busy machine: patient timeouts
            # keep its latency spikes from tripping the breaker in tests about other promises.
            # The outage tests run private servers with the product's short defaults.
            options.setdefault("socket_timeout", 2.0)
            options.setdefault("socket_connect_timeout", 2.0)
        url = redis_url or self.redis_url
        self.urls.add(url)
        memory = SeamedCachedMemory(
            PostgresMemory(self.engine), redis_url=url, prefix=self.prefix, **options
        )
        self.made.append(memory)
        return memory

    def naive(
        self,
        kind: type[NaiveCacheAside] = NaiveCacheAside,
        *,
        redis_url: str | None = None,
        **kw: Any,
    ) -> NaiveCacheAside:
        url = redis_url or self.redis_url
        self.urls.add(url)
        # The same client settings as CachedMemory's own: short timeouts, one retry on a broken
        # connection (so a restart is as invisible to it as to us).
        options: dict[str, Any] = {
            "socket_timeout": 0.25,
            "socket_connect_timeout": 0.25,
            "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        }
        options.update(kw.pop("client_options", {}))
        client = aioredis.Redis.from_url(url, **options)
        memory = kind(PostgresMemory(self.engine), client, self.prefix, **kw)
        self.made.append(memory)
        return memory

    def raw(self, redis_url: str | None = None) -> aioredis.Redis:
        client = aioredis.Redis.from_url(redis_url or self.redis_url, socket_timeout=2)
        self.made.append(client)
        return client

    async def close(self) -> None:
        for thing in reversed(self.made):
            with contextlib.suppress(Exception):
                await thing.aclose() if isinstance(thing, aioredis.Redis) else await thing.close()
        for url in self.urls:
            with contextlib.suppress(Exception):
                await delete_prefix(url, self.prefix)


@pytest_asyncio.fixture(loop_scope="session")
async def factory(aqe_engine: AsyncEngine, aqe_redis_url: str) -> AsyncIterator[Factory]:
    """Cache-tier instances on the worker's database and the test Redis, cleaned up after."""
    await empty_tables(aqe_engine)
    made = Factory(aqe_engine, aqe_redis_url)
    try:
        yield made
    finally:
        await made.close()
        await empty_tables(aqe_engine)


async def cached_value(raw: aioredis.Redis, memory: CachedMemory, key: str) -> bytes | None:
    """The value JSON a key's record holds in Redis, whatever its generation (None: no value)."""
    record = await raw.get(memory._tier.record(key))
    if record is None or not record.startswith(b"V"):
        return None
    hit = parse_hit(record, None)
    assert hit is not None
    return hit.value


async def until(predicate: Callable[[], Any], within: float = 5.0, step: float = 0.02) -> None:
    """Wait until ``predicate()`` (sync or async) is true, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(step)


# -- a private redis-server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A ``redis-server`` of the test's own: start, kill, freeze, thaw, restart on one port."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            probe.close()

    def kill(self) -> None:
        """Stop the server outright (SIGKILL: no goodbye, no final save)."""
        assert self.process is not None
        self.thaw()
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.process is not None and self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        if self.process is not None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """Start a private redis-server (``appendonly`` optional) and always stop it afterwards."""
    servers: list[PrivateRedis] = []

    def start(*, appendonly: bool = False) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        server.directory.mkdir()
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# -- the naive caches are real caches -----------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [NaiveCacheAside, NaiveInvalidateFirst, VersionFencedCache, NaiveSingleFlight]
)
async def test_naive_caches_work_in_the_happy_path(factory: Factory, kind: Any) -> None:
    naive = factory.naive(kind)
    assert await naive.retrieve(KEY, default="missing") == "missing"
    await naive.store(KEY, {"v": 1})
    assert await naive.retrieve(KEY) == {"v": 1}
    reads = naive.database_reads
    assert await naive.retrieve(KEY) == {"v": 1}
    assert naive.database_reads == reads, "the second read was a cache hit"
    await naive.store(KEY, {"v": 2})
    assert await naive.retrieve(KEY) == {"v": 2}
    assert await naive.delete(KEY) is True
    assert await naive.retrieve(KEY) is None


async def test_private_redis_freezes_and_thaws(private_redis: Any) -> None:
    server = private_redis()
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.2)
    try:
        await client.set("k", "v")
        server.freeze()
        with pytest.raises(redis.TimeoutError):
            await client.get("k")
        server.thaw()
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()
