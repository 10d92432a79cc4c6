"""``CachedMemory``: the database as the source of truth, Redis as a cache-aside tier in front.

Reads go to Redis first, then to the database, and fill the cache; writes commit in the
database first, then invalidate. The four promises of SPEC §4 and how they are kept (the Redis
layout is in :mod:`lionagi_qe.cache.scripts`, the Redis side in :mod:`lionagi_qe.cache.tier`):

(a) **No stale read after a write returns, in any process.** A hit is one ``MGET`` of the
    cache generation and the key's record. A reader that finds nothing usable looks again in a
    Lua call that also takes a *lease* on the record (Redis runs scripts one at a time), reads
    the database, and may fill only over its own lease. A writer commits, then ``UNLINK`` s the
    records it touched, which removes any lease with them. If a reader's database read predates
    a commit, its lease predates the writer's unlink, so either the unlink removes the lease
    (the fill is refused) or the fill came first and the unlink removes the filled record
    before the write returns; and any record a later ``MGET`` finds was filled under a lease
    taken after the unlink. The stale fill is impossible, not unlikely. Versions are not used
    as the fence on purpose: they restart at 1 after a delete or an expiry, so "never overwrite
    a newer version" would let a slow reader's version 5 from before a delete beat the version
    1 written after it.
(b) **No cache record outlives its entry.** The fill reads ``seconds_until(expires_at)`` by the
    database clock in the same statement as the row, subtracts the monotonic time spent since
    the read was sent plus an allowance for the trip to Redis, caps it at ``cache_ttl`` and
    sets that as the record's ``PEXPIRE``. ``ttl()`` served from the cache counts down from a
    deadline kept on the Redis clock. No application wall clock is involved.
(c) **One database fill per hot key per expiry.** One reader in all processes holds the lease.
    Readers of this process that meet it await the holder's load (single-flight, joined only
    through a lease their own lookup saw, so nobody joins a load older than their call);
    readers of other processes poll briefly, then take the lease over (so a crashed holder
    costs one ``lock_wait``).
(d) **Redis down or hanging: bounded latency, nothing stale afterwards.** Short socket
    timeouts, one retry on broken connections only (never on timeouts: a hung server would cost
    twice), a hard cap per Redis operation, and a circuit breaker: after ``breaker_failures``
    consecutive failures Redis is skipped for ``breaker_reset`` seconds. A write that cannot
    confirm its invalidation trips the breaker at once and marks the process *dirty*; its
    recovery probe (in the background, so no call waits on a dead server) then *bumps the cache
    generation*: every record and lease from before the bump is disowned, so nothing Redis kept
    through the outage (frozen, partitioned, restarted from its AOF) is served. And every new
    connection checks the server's ``run_id`` before its first command: a restarted or failed-
    over server (whose persisted data may lack deletes it had confirmed) gets the generation
    bumped before anything reads from it, even when the one retry hid the restart. Bumping
    rather than deleting the keys written meanwhile: that set is unbounded, ``clear_partition``
    cannot even name it, and other processes' writes are unknown here; a bump is one O(1)
    command, costs one miss per hot key, and old records age out within ``cache_ttl``. An
    outage that only slowed reads leaves nothing stale, so it ends without a bump (no cache
    flush each time load trips the breaker).

One window is inherent in a cache that keeps working while Redis is unreachable: a process that
never lost Redis can read the pre-outage value of a key written (by another process) during the
outage until that writer's probe bumps the generation — at most ``breaker_reset`` plus one probe
after Redis is reachable from the writer again, and never longer than ``cache_ttl``.

``search``, ``list_keys``, ``get_stats`` (the counts) and ``cleanup_expired`` go to the database,
the source of truth. Redis errors never reach the caller (the call falls back to the database);
database errors are raised exactly as :class:`PostgresMemory` raises them.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import suppress
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from lionagi_qe import codec
from lionagi_qe.backends.base import MemoryBase
from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, ScannedEntry
from lionagi_qe.backends.redis_support import Client, make_cluster
from lionagi_qe.backends.settle import outlive
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import scripts
from lionagi_qe.cache.breaker import BreakerState, CircuitBreaker
from lionagi_qe.cache.records import Hit, entry_of, entry_of_row
from lionagi_qe.cache.source import SourceRow, read_rows
from lionagi_qe.cache.tier import REDIS_ERRORS, CacheTier, Rows, build_client
from lionagi_qe.entry import MemoryEntry
from lionagi_qe.errors import (
    ClosedError,
    InvalidArgumentError,
    KeyNotFoundError,
    SchemaMissingError,
    VersionConflictError,
)

__all__ = ["CachedMemory"]

T = TypeVar("T")

#: Errors after which the database certainly wrote nothing (raised before any I/O, or a refused
#: condition), so there is nothing to invalidate.
_NOTHING_WRITTEN = (ValueError, VersionConflictError, ClosedError, SchemaMissingError)


def _count(name: str, count: object) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1")
    return count


def _positive(name: str, seconds: object) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise InvalidArgumentError(f"{name} must be a positive number of seconds")
    return float(seconds)


class CachedMemory(MemoryBase):
    """The memory contract on a database, with Redis as a cache-aside tier in front (SPEC §4).

    Reads (``retrieve``, ``get_entry``, ``exists``, ``ttl``, ``retrieve_many``) are served from
    Redis when they can be; ``search``, ``list_keys``, ``get_stats`` and ``cleanup_expired`` are
    always answered by the database, the source of truth. Writes commit in the database, then
    invalidate what they touched (``clear_partition`` disowns the whole cache generation).

    Args:
        database: the source of truth. It must commit each call itself (built on a URL, an
            engine, a ``DatabaseManager`` or a session factory), since invalidation must follow
            the commit; a memory joined to a caller's ``AsyncSession`` is refused.
        redis_url: the Redis to cache in; the memory owns the client and pool it builds
            (closed by :meth:`close`). Give this or ``client``.
        client: a ``redis.asyncio.Redis`` or ``RedisCluster`` owned by the caller (not closed
            here); its own timeouts and retries apply inside the per-operation cap.
        cluster: ``True``: ``redis_url`` names a node of a Redis Cluster; ``False``: a single
            server; ``None`` (default): the first Redis call asks the server (``INFO cluster``).
        prefix: every Redis key this tier writes starts with it (on a cluster, followed by a
            hash tag made from it unless it holds one, so that the tier's keys share a slot).
        cache_ttl: the longest life of a cache record, in seconds.
        socket_timeout: seconds to wait for a Redis reply.
        socket_connect_timeout: seconds to wait for a Redis connection. Every Redis operation
            is also capped at ``socket_connect_timeout + 2 * socket_timeout``.
        breaker_failures: consecutive Redis failures that open the circuit breaker.
        breaker_reset: seconds the breaker stays open before the recovery probe.
        max_connections: size of the Redis pool; calls in flight are bounded to it, and waiting
            for a slot falls under the per-operation cap.
        lock_wait: seconds a reader waits for another process's fill before taking it over.
        lease_ttl: seconds a fill lease lives if its holder vanishes.
    """

    backend_name = "cached"

    def __init__(
        self,
        database: PostgresMemory,
        *,
        redis_url: str | None = None,
        client: Client | None = None,
        cluster: bool | None = None,
        prefix: str = "lionagi-cache:",
        cache_ttl: float = 300.0,
        socket_timeout: float = 0.25,
        socket_connect_timeout: float = 0.25,
        breaker_failures: int = 3,
        breaker_reset: float = 0.5,
        max_connections: int = 50,
        lock_wait: float = 0.25,
        lease_ttl: float = 10.0,
    ) -> None:
        if not isinstance(database, PostgresMemory):
            raise TypeError(f"CachedMemory wraps a PostgresMemory, not {type(database).__name__}")
        if getattr(database, "_session", None) is not None:
            raise InvalidArgumentError(
                "CachedMemory needs a database that commits each call (a URL, engine, "
                "DatabaseManager or session factory), not one joined to a caller's session"
            )
        if (redis_url is None) == (client is None):
            raise InvalidArgumentError("give exactly one of redis_url or client")
        if not isinstance(prefix, str) or not prefix:
            raise InvalidArgumentError("prefix must be a non-empty str")
        socket_timeout = _positive("socket_timeout", socket_timeout)
        socket_connect_timeout = _positive("socket_connect_timeout", socket_connect_timeout)
        max_connections = _count("max_connections", max_connections)
        breaker = CircuitBreaker(
            _count("breaker_failures", breaker_failures), _positive("breaker_reset", breaker_reset)
        )
        super().__init__(namespace=database.namespace, max_value_bytes=database.max_value_bytes)
        self._database = database
        self._prefix = prefix
        if cluster is not None and not isinstance(cluster, bool):
            raise InvalidArgumentError("cluster must be True, False or None")
        self._owns_client = client is None
        factory: Callable[[], RedisCluster] | None = None
        if client is None:
            assert redis_url is not None
            url = redis_url

            def build_cluster() -> RedisCluster:
                return make_cluster(
                    url=url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    max_connections=max_connections,
                )

            factory = build_cluster
            if cluster:
                client = build_cluster()
            else:
                client = build_client(
                    redis_url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_connect_timeout,
                    max_connections=max_connections,
                )
        self._client = client  # as built or given (a detected cluster replaces it in the tier)
        pool = getattr(client, "connection_pool", None)
        self._tier = CacheTier(
            client,
            prefix=prefix,
            cache_ttl=_positive("cache_ttl", cache_ttl),
            op_timeout=socket_connect_timeout + 2 * socket_timeout,
            breaker=breaker,
            lock_wait=_positive("lock_wait", lock_wait),
            lease_ttl=_positive("lease_ttl", lease_ttl),
            max_in_flight=max_connections
            if self._owns_client
            else getattr(pool, "max_connections", None) or max_connections,
            # Found out at the first call, unless told (``cluster``) or given a client.
            cluster_client=factory if cluster is None else None,
            owns_client=self._owns_client,
        )
        self._background: set[asyncio.Task[Any]] = set()

    # -- extras -----------------------------------------------------------------------------

    @property
    def database(self) -> PostgresMemory:
        """The wrapped source of truth."""
        return self._database

    @property
    def prefix(self) -> str:
        """The prefix of every Redis key this tier writes."""
        return self._prefix

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state (``closed`` while Redis is in use)."""
        return self._tier.breaker.state

    async def flush_cache(self) -> bool:
        """Disown every cache record (bump the generation); False if Redis could not confirm.

        For operators who changed the database behind the cache's back. When Redis is
        unreachable the breaker trips and the recovery probe bumps the generation later.
        """
        self._check_open()
        return await self._tier.bump_generation()

    async def _load_from_database(self, keys: Sequence[str]) -> Rows:
        """Read the live rows among ``keys`` from the database (one statement; a test seam)."""
        self._tier.counts["database_reads"] += 1
        return await read_rows(self._database, keys)

    async def _after_write(self, keys: Sequence[str], write: Awaitable[T]) -> T:
        """Await a database write, then invalidate ``keys`` (also when the outcome is unknown).

        A cancelled caller reaches the ``except`` only once the write has settled:
        :class:`PostgresMemory` writes finish before they let a cancellation through
        (:mod:`lionagi_qe.backends.settle`), since a statement dropped mid-flight may still
        commit after the caller's next write. The commit may have happened, so the caller is
        then held until the invalidation is done too, and gets its ``CancelledError``.
        """
        try:
            result = await write
        except asyncio.CancelledError:
            await outlive(self._spawn(self._tier.invalidate(keys)))
            raise
        except _NOTHING_WRITTEN:
            raise
        except Exception:
            # The commit may have happened before the error (a lost acknowledgement).
            await self._invalidate(keys)
            raise
        await self._invalidate(keys)
        return result

    async def _invalidate(self, keys: Sequence[str]) -> None:
        # A task of its own, awaited through a shield: a caller cancelled after the commit
        # must not abandon the unlink halfway and leave the old value cached.
        await asyncio.shield(self._spawn(self._tier.invalidate(keys)))

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        async def run() -> Any:
            return await work

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- reads ------------------------------------------------------------------------------

    async def _read(self, key: str, mode: str) -> Hit | SourceRow | None:
        return await self._tier.read(key, mode, self._load_from_database)

    async def retrieve(self, key: str, *, as_type: Any = None, default: Any = None) -> Any:
        """The live value of ``key``, validated into ``as_type`` if given; else ``default``."""
        self._check_open()
        found = await self._read(self._key(key), scripts.MODE_VALUE)
        if isinstance(found, Hit):
            if not found.found:
                return default
            value = codec.decode(found.value)
        elif found is None:
            return default
        else:
            value = codec.decode(found.value_json)
        return value if as_type is None else codec.validate_as(value, as_type)

    async def get_entry(self, key: str) -> MemoryEntry | None:
        """The live entry with partition, version, timestamps, expiry and metadata."""
        self._check_open()
        checked = self._key(key)
        found = await self._read(checked, scripts.MODE_ENTRY)
        if isinstance(found, Hit):
            return entry_of(checked, found) if found.found else None
        return None if found is None else entry_of_row(found)

    async def exists(self, key: str) -> bool:
        """True if ``key`` has a live entry."""
        self._check_open()
        found = await self._read(self._key(key), scripts.MODE_EXISTS)
        return found.found if isinstance(found, Hit) else found is not None

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds (None: no expiry). Raises KeyNotFoundError if there is no entry."""
        self._check_open()
        checked = self._key(key)
        found = await self._read(checked, scripts.MODE_TTL)
        if found is None or (isinstance(found, Hit) and not found.found):
            raise KeyNotFoundError(f"no live entry for {checked!r}")
        if isinstance(found, Hit):
            return None if found.left_ms is None else found.left_ms / 1000
        return found.remaining

    async def retrieve_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live entries among ``keys``: one ``MGET`` per batch, one database read for misses."""
        self._check_open()
        checked = self._keys(keys)
        if not checked:
            return {}
        cached, rows = await self._tier.read_many(checked, self._load_from_database)
        result: dict[str, Any] = {}
        for key in checked:
            hit = cached.get(key)
            if hit is not None:
                if hit.found:
                    result[key] = codec.decode(hit.value)
            elif key in rows:
                result[key] = codec.decode(rows[key].value_json)
        return result

    # -- the database alone -----------------------------------------------------------------

    async def search(
        self, pattern: str, *, regex: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Live entries whose keys match ``pattern``; answered by the database (the truth)."""
        self._check_open()
        return await self._database.search(pattern, regex=regex, limit=limit)

    async def list_keys(self, prefix: str | None = None) -> list[str]:
        """Live keys starting with the literal ``prefix``; answered by the database."""
        self._check_open()
        return await self._database.list_keys(prefix)

    def scan(
        self, prefix: str | None = None, *, batch_size: int = DEFAULT_SCAN_BATCH
    ) -> AsyncIterator[ScannedEntry]:
        """Every live entry under the literal ``prefix``, page by page; read from the database.

        The cache is neither read nor filled: a scan visits every entry once, so filling would
        only evict hot records, and the database is the source of truth.
        """
        self._check_open()
        return self._database.scan(prefix, batch_size=batch_size)

    async def cleanup_expired(self) -> int:
        """Delete expired rows in the database (their cache records have expired already)."""
        self._check_open()
        return await self._database.cleanup_expired()

    async def get_stats(self) -> dict[str, Any]:
        """The database's statistics plus this process's cache counters and breaker state."""
        self._check_open()
        stats = await self._database.get_stats()
        counts = self._tier.counts
        breaker = self._tier.breaker
        stats["database_backend"] = stats.get("backend")
        stats["backend"] = self.backend_name
        stats.update({f"cache_{name}": count for name, count in counts.items()})
        stats["breaker_state"] = breaker.state.value
        stats["breaker_opened"] = breaker.times_opened
        return stats

    # -- writes -----------------------------------------------------------------------------

    async def store(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        partition: str = "default",
        *,
        metadata: Mapping[str, Any] | None = None,
        if_absent: bool = False,
        expected_version: int | None = None,
    ) -> int:
        """Upsert in the database, then invalidate; return the entry's new version."""
        self._check_open()
        checked = self._key(key)
        write = self._database.store(
            checked,
            value,
            ttl,
            partition,
            metadata=metadata,
            if_absent=if_absent,
            expected_version=expected_version,
        )
        return await self._after_write([checked], write)

    async def store_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: float | None = None,
        partition: str = "default",
    ) -> int:
        """Store every item in the database (all or nothing), then invalidate them all."""
        self._check_open()
        if not isinstance(items, Mapping | str | bytes | list | tuple):
            # A one-shot iterator must be read once for both steps; something not iterable is
            # passed on for the database to refuse with its own error.
            with suppress(TypeError):
                items = list(items)
        write = self._database.store_many(items, ttl, partition)
        return await self._after_write(_keys_of(items), write)

    async def increment(
        self, key: str, delta: int | float = 1, ttl: float | None = None
    ) -> int | float:
        """Add ``delta`` atomically in the database, then invalidate."""
        self._check_open()
        checked = self._key(key)
        return await self._after_write([checked], self._database.increment(checked, delta, ttl))

    async def expire(self, key: str, ttl: float) -> bool:
        """Set or replace the TTL of a live entry in the database, then invalidate."""
        self._check_open()
        checked = self._key(key)
        return await self._after_write([checked], self._database.expire(checked, ttl))

    async def delete(self, key: str) -> bool:
        """Delete in the database, then invalidate; True if a live entry was removed."""
        self._check_open()
        checked = self._key(key)
        return await self._after_write([checked], self._database.delete(checked))

    async def clear_partition(self, partition: str) -> int:
        """Delete the partition's entries in the database, then bump the cache generation.

        The database does not name the keys it deleted, so every record is disowned (one
        ``INCR``); when nothing live was deleted no record can be affected and the cache stays.
        """
        self._check_open()
        try:
            removed = await self._database.clear_partition(partition)
        except _NOTHING_WRITTEN:
            raise
        except BaseException:
            self._spawn(self._tier.bump_generation())
            raise
        if removed:
            await self._tier.bump_generation()
        return removed

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the prober, close the Redis client (if built here) and the wrapped database."""
        if self._closed:
            return
        self._closed = True
        await self._tier.stop()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        try:
            if self._owns_client:
                await self._tier.client.aclose()
        except REDIS_ERRORS:
            pass  # closing a connection to a dead server cannot fail the caller
        finally:
            await self._database.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._tier.breaker.state.value
        return f"<CachedMemory prefix={self._prefix!r} database={self._database!r} {state}>"


def _keys_of(items: Any) -> list[str]:
    """The keys of a ``store_many`` batch, read defensively (only to invalidate them)."""
    if isinstance(items, Mapping):
        return [key for key in items if isinstance(key, str)]
    if not isinstance(items, list | tuple):
        return []
    return [
        pair[0]
        for pair in items
        if isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str)
    ]
