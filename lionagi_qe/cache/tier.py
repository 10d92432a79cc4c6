"""The Redis side of the cache: guarded calls, the breaker and its prober, leases and fills.

:class:`CacheTier` knows nothing of the memory contract: it reads records (a hit is one
``MGET``), takes leases, runs the database load it is handed (once per lease, shared by this
process's readers), fills and invalidates. Every Redis failure is absorbed here (:class:`CacheDown`
tells the caller to use the database) and counted by the
:class:`~lionagi_qe.cache.breaker.CircuitBreaker`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterCrossSlotError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from lionagi_qe.backends.redis_support import (
    Client,
    cancellable,
    connection_option,
    is_cluster,
    keyspace,
    set_connection_option,
)
from lionagi_qe.cache import scripts
from lionagi_qe.cache.breaker import CircuitBreaker
from lionagi_qe.cache.records import ABSENT_HIT, Hit, as_bytes, header_of, parse_hit
from lionagi_qe.cache.source import SourceRow

__all__ = ["REDIS_ERRORS", "CacheDown", "CacheTier", "Loader", "Rows", "build_client"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

Rows = dict[str, SourceRow]
#: Reads the live rows among some keys from the database.
Loader = Callable[[Sequence[str]], Awaitable[Rows]]

#: What a Redis call can fail with; all of it means "use the database this time".
REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
#: Allowance for the trip of a fill to Redis, taken off an entry's remaining time (promise b).
_TRANSIT_ALLOWANCE_MS = 5
#: Records looked up, filled or unlinked per Redis call (bounds how long a script holds Redis).
_BATCH = 1000
_FIRST_POLL = 0.002
_MAX_POLL = 0.032
_COUNTERS = (
    "hits",
    "misses",
    "fills",
    "invalidations",
    "flushes",
    "errors",
    "bypassed",
    "database_reads",
)


class CacheDown(Exception):
    """Internal: a Redis call failed or was skipped; the caller falls back to the database."""


class _Failed:
    """What a single-flight load resolves to when its holder failed (waiters load themselves)."""


_FAILED = _Failed()


def build_client(
    url: str, *, socket_timeout: float, socket_connect_timeout: float, max_connections: int
) -> redis.Redis:
    """A client on a pool of its own with short timeouts and a single, narrow retry.

    A plain pool (the tier bounds its calls in flight to the pool's size, and waiting for a
    slot falls under the per-operation cap): the blocking pool's condition variable costs a
    cache hit more than a sixth of a raw ``GET``.
    """
    pool = redis.ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        # One retry, and only when the connection broke (a restarted server leaves dead pooled
        # connections behind); a timeout means a hung server, and retrying would double it.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return redis.Redis.from_pool(pool)


class CacheTier:
    """Leases, fills and invalidations on one Redis, under one key prefix.

    On a Redis Cluster every key of the tier must share one slot (a hit is one ``MGET`` of the
    generation and the records; scripts take both): a prefix without a hash tag gets one
    (``keyspace(prefix)``: ``lionagi-cache:{lionagi-cache}:``), so the tier lives on one master.
    Whether the server is a cluster is told (a ``RedisCluster`` client) or found out by the
    first call (``INFO cluster``); then ``cluster_client`` builds the cluster client, which
    replaces the single-server one before anything else is sent. After a failover, the first
    connection to the promoted replica finds another ``run_id`` (:data:`~.scripts.SERVER_CHECK`)
    and bumps the generation: writes the old master acknowledged may never have reached it.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str,
        cache_ttl: float,
        op_timeout: float,
        breaker: CircuitBreaker,
        lock_wait: float,
        lease_ttl: float,
        max_in_flight: int,
        cluster_client: Callable[[], RedisCluster] | None = None,
        owns_client: bool = False,
    ) -> None:
        self.client: Client = client
        self.breaker = breaker
        self._prefix = prefix
        self._set_keys(keyspace(prefix) if isinstance(client, RedisCluster) else prefix)
        #: Builds a cluster client if the first call finds a cluster (None: never switch).
        self._cluster_client = cluster_client
        self._owns_client = owns_client
        self._decided = cluster_client is None
        self._deciding: asyncio.Lock | None = None
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self._cache_ttl_ms = max(1, int(cache_ttl * 1000))
        self._lease_ttl_ms = max(1, int(lease_ttl * 1000))
        self._op_timeout = op_timeout
        self._lock_wait = lock_wait
        self._slots = asyncio.Semaphore(max_in_flight)
        self._register_scripts()
        # Lease tokens are unique across processes: pid, random bytes, a counter.
        self._token_base = f"{os.getpid():x}.{os.urandom(6).hex()}."
        self._token_counter = itertools.count(1)
        #: In-process single-flight: lease token -> the holder's database load.
        self._flights: dict[str, asyncio.Future[Rows | _Failed]] = {}
        self._prober: asyncio.Task[None] | None = None
        self._stopped = False
        #: A committed write of this process could not invalidate; the next probe must bump.
        self._dirty = False
        self._server_check_refused = False
        self._hook_connections()

    def _set_keys(self, start: str) -> None:
        self.gen_key = f"{start}gen"
        self.server_key = f"{start}server"
        self.record_prefix = f"{start}e:"

    def _register_scripts(self) -> None:
        self._lookup_script = self.client.register_script(scripts.LOOKUP)
        self._fill_script = self.client.register_script(scripts.FILL)

    def _hook_connections(self) -> None:
        """Every new connection checks which server it reached before its first command. (A
        caller's client that already has a connect hook keeps it, without restart detection.)"""
        if connection_option(self.client, "redis_connect_func") is None:
            set_connection_option(self.client, "redis_connect_func", self._on_connect)
        else:
            logger.warning("the Redis client has a connect hook of its own; no restart detection")

    async def _resolve(self) -> None:
        """Find out (once) whether the server is a cluster; switch to a cluster client if so.

        Runs inside a guarded call (its failure is the call's). Concurrent first calls wait for
        one answer.
        """
        if self._deciding is None:
            self._deciding = asyncio.Lock()
        async with self._deciding:
            if self._decided:
                return
            plain = self.client
            assert isinstance(plain, redis.Redis) and self._cluster_client is not None
            if await is_cluster(plain):
                cluster = self._cluster_client()
                self.client = cluster
                self._set_keys(keyspace(self._prefix))
                self._register_scripts()
                self._hook_connections()
                # Load the slot map before concurrent commands (see RedisConnector).
                await cluster.initialize()
                if self._owns_client:
                    await plain.aclose()
            self._decided = True

    async def _on_connect(self, connection: AbstractConnection) -> None:
        """Connect hook: the usual handshake, then :data:`~.scripts.SERVER_CHECK`.

        A restarted server may have come back from an AOF or snapshot that lacks deletes it
        had confirmed, so the records it brought back are disowned before anything reads them.
        """
        await connection.on_connect()
        try:
            await connection.send_command(
                "EVAL", scripts.SERVER_CHECK, 2, self.server_key, self.gen_key
            )
            changed = await connection.read_response()
        except AskError:  # MOVED or ASK: a cluster node that does not hold the tier's slot
            return
        except ResponseError as exc:  # e.g. an ACL that forbids INFO: the cache still works
            if isinstance(exc, ClusterCrossSlotError):
                # The single-server client asking whether the server is a cluster: the keys
                # are not hash-tagged yet. The cluster client's connections check again.
                return
            if not self._server_check_refused:
                self._server_check_refused = True
                logger.warning("Redis refused the server check (%s); no restart detection", exc)
            return
        if changed:
            self.counts["flushes"] += 1
            logger.warning("Redis server changed (restart or failover); generation bumped")

    def record(self, key: str) -> str:
        """The Redis key of ``key``'s cache record."""
        return self.record_prefix + key

    def _next_token(self) -> str:
        return f"{self._token_base}{next(self._token_counter)}"

    # -- guarded calls, breaker, recovery ---------------------------------------------------

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation under the cap; any failure becomes :class:`CacheDown`."""
        try:
            async with asyncio.timeout(self._op_timeout), self._slots:
                if not self._decided:
                    await cancellable(self._resolve())
                # redis-py may swallow a cancellation (see redis_support.cancellable).
                result = await cancellable(operation())
        except REDIS_ERRORS as exc:
            self.counts["errors"] += 1
            was_closed = self.breaker.allow_request()
            self.breaker.record_failure()
            if was_closed and not self.breaker.allow_request():
                logger.warning("Redis cache unreachable (%s); database only", type(exc).__name__)
                self._start_prober()
            else:
                logger.debug("Redis cache call failed: %s", type(exc).__name__)
            raise CacheDown from exc
        self.breaker.record_success()
        return result

    def unconfirmed_write(self) -> None:
        """A committed write could not invalidate: stop trusting the cache until a bump."""
        if self.breaker.allow_request():
            logger.warning("a cache invalidation failed; database only until Redis is back")
        self._dirty = True
        self.breaker.trip()
        self._start_prober()

    def _start_prober(self) -> None:
        if self._stopped or (self._prober is not None and not self._prober.done()):
            return
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_closed())

    async def _probe_until_closed(self) -> None:
        """Background recovery: when the breaker allows a probe, probe; success closes it.

        If a write of this process could not invalidate, the probe *is* a generation bump:
        every record from before it is disowned, so nothing cached before the outage (and never
        invalidated during it) is served again. Otherwise a ``PING`` will do: an outage that
        only slowed reads left nothing stale behind (a restart is caught by the server check of
        the new connection). User calls never probe, so none of them waits on a dead server.
        """
        while not self._stopped:
            delay = self.breaker.seconds_until_probe()
            if delay is None:
                return
            if delay > 0:
                await asyncio.sleep(delay)
            ticket = self.breaker.try_probe()
            if ticket is None:
                await asyncio.sleep(0.001)
                continue
            bump = self._dirty
            try:
                async with asyncio.timeout(self._op_timeout), self._slots:
                    if not self._decided:
                        await self._resolve()
                    if bump:
                        await self.client.incr(self.gen_key)
                    else:
                        await self.client.ping()
            except REDIS_ERRORS as exc:
                logger.debug("Redis cache probe failed: %s", type(exc).__name__)
                self.breaker.probe_failed(ticket)
                continue
            # A write that could not invalidate during the probe voided the ticket (a trip):
            # then the breaker stays open, the flag stays set and the next probe bumps.
            if self.breaker.probe_succeeded(ticket):
                if bump:
                    self._dirty = False
                    self.counts["flushes"] += 1
                logger.warning("Redis cache is back%s", "; generation bumped" if bump else "")
                return

    async def bump_generation(self) -> bool:
        """Disown every record (``INCR`` the generation); False if Redis could not confirm."""
        if not self.breaker.allow_request():
            self.unconfirmed_write()
            return False
        try:
            await self.call(lambda: self.client.incr(self.gen_key))
        except CacheDown:
            self.unconfirmed_write()
            return False
        self.counts["flushes"] += 1
        return True

    async def invalidate(self, keys: Sequence[str]) -> None:
        """Unlink the records (and leases) of keys whose write just committed."""
        if not keys:
            return
        if not self.breaker.allow_request():
            self.unconfirmed_write()
            return
        records = [self.record(key) for key in keys]
        try:
            for start in range(0, len(records), _BATCH):
                chunk = records[start : start + _BATCH]
                await self.call(lambda chunk=chunk: self.client.unlink(*chunk))  # type: ignore[misc]
        except CacheDown:
            self.unconfirmed_write()
            return
        self.counts["invalidations"] += len(records)

    # -- lookups and fills ------------------------------------------------------------------

    async def _peek(self, keys: Sequence[str]) -> tuple[bytes, list[Any]]:
        """The generation and the records of ``keys``: one plain ``MGET``, no script."""
        replies: list[Any] = await self.call(
            lambda: self.client.mget(self.gen_key, *map(self.record, keys))
        )
        generation = replies[0]
        return (b"0" if generation is None else as_bytes(generation)), replies[1:]

    async def _lookup(
        self, keys: Sequence[str], mode: str, token: str, take_over: str = ""
    ) -> list[Any]:
        replies: list[Any] = await self.call(
            lambda: self._lookup_script(
                keys=[self.gen_key, *map(self.record, keys)],
                args=[mode, token, self._lease_ttl_ms, take_over],
            )
        )
        return replies

    @staticmethod
    def _hit_of(reply: Any, mode: str) -> Hit:
        """The hit a :data:`~.scripts.LOOKUP` reply of code HIT or ABSENT stands for."""
        if reply[0] == scripts.ABSENT:
            return ABSENT_HIT
        if mode == scripts.MODE_TTL:
            left = int(reply[1])
            return Hit(True, left_ms=None if left < 0 else left)
        hit = parse_hit(as_bytes(reply[1]), None)
        assert hit is not None
        return hit

    def _fill_args(self, rows: Rows, keys: Sequence[str], started: float) -> list[Any]:
        # Time since the database read was sent: the remaining time was measured at some moment
        # after that, so subtracting all of it errs on the short side (promise b).
        elapsed_ms = (time.monotonic() - started) * 1000 + _TRANSIT_ALLOWANCE_MS
        args: list[Any] = []
        for key in keys:
            row = rows.get(key)
            if row is None:
                args += [-2, "", ""]
            elif row.remaining is None:
                args += [-1, header_of(row), row.value_json]
            else:
                left = max(0, int(row.remaining * 1000 - elapsed_ms))
                args += [left, header_of(row), row.value_json]
        return args

    async def _fill(self, keys: Sequence[str], rows: Rows, token: str, started: float) -> None:
        """Write what the database said over our leases (a no-op where a write intervened)."""
        if not keys or not self.breaker.allow_request():
            return
        try:
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                args = [token, self._cache_ttl_ms, *self._fill_args(rows, chunk, started)]
                filled = await self.call(
                    lambda chunk=chunk, args=args: self._fill_script(  # type: ignore[misc]
                        keys=[self.gen_key, *map(self.record, chunk)], args=args
                    )
                )
                self.counts["fills"] += int(filled)
        except CacheDown:
            return

    async def _lead(
        self, load: Loader, token: str, keys: Sequence[str], leased: Sequence[str]
    ) -> Rows:
        """Load ``keys`` for the lease ``token`` holds on ``leased``; share it; fill ``leased``."""
        flight = self._flights.get(token)
        started = time.monotonic()
        try:
            try:
                rows = await load(keys)
            except BaseException:
                if flight is not None and not flight.done():
                    flight.set_result(_FAILED)
                raise
            if flight is not None and not flight.done():
                flight.set_result(rows)
            await self._fill(leased, rows, token, started)
        finally:
            self._flights.pop(token, None)
        return rows

    async def read(self, key: str, mode: str, load: Loader) -> Hit | SourceRow | None:
        """A :class:`Hit` from the cache, or the row (None: no live entry) from ``load``."""
        if not self.breaker.allow_request():
            self.counts["bypassed"] += 1
            return (await load([key])).get(key)
        if mode != scripts.MODE_TTL:  # a TTL is counted down on the Redis clock, by LOOKUP
            try:
                generation, (record,) = await self._peek([key])
            except CacheDown:
                return (await load([key])).get(key)
            hit = parse_hit(record if record is None else as_bytes(record), generation)
            if hit is not None:
                self.counts["hits"] += 1
                return hit
        return await self._read_slowly(key, mode, load)

    async def _read_slowly(self, key: str, mode: str, load: Loader) -> Hit | SourceRow | None:
        """Look up again and lease atomically; lead the load, share another's, or wait."""
        loop = asyncio.get_running_loop()
        give_up_at: float | None = None
        delay = _FIRST_POLL
        take_over = ""
        while True:
            token = self._next_token()
            # Registered before the lookup is sent, so a reader of this process that is told
            # "leased to <token>" finds the load to wait for even before we resume.
            self._flights[token] = loop.create_future()
            try:
                (reply,) = await self._lookup([key], mode, token, take_over)
            except BaseException as exc:
                # The lookup may have taken the lease before failing or being cancelled, and a
                # reader of this process may already await our flight: release it, or it waits
                # forever (it loads by itself on _FAILED).
                flight = self._flights.pop(token, None)
                if flight is not None and not flight.done():
                    flight.set_result(_FAILED)
                if isinstance(exc, CacheDown):
                    return (await load([key])).get(key)
                raise
            code = reply[0]
            if code == scripts.HIT or code == scripts.ABSENT:
                self._flights.pop(token, None)
                if give_up_at is None and mode == scripts.MODE_TTL:
                    self.counts["hits"] += 1  # other modes counted their miss in read()
                elif give_up_at is None:
                    self.counts["misses"] += 1  # filled between our MGET and our lookup
                return self._hit_of(reply, mode)
            if give_up_at is None:
                self.counts["misses"] += 1
            if code == scripts.LEASED:
                return (await self._lead(load, token, [key], [key])).get(key)
            self._flights.pop(token, None)
            # Leased to another reader. Of this process: share its load. It began after the
            # lease was taken and our lookup saw the lease, so it is no older than a read of
            # our own would be (a write that returned before we started unlinked older leases).
            holder = as_bytes(reply[1]).decode()
            flight = self._flights.get(holder)
            if flight is not None:
                rows = await asyncio.shield(flight)
                if isinstance(rows, dict):
                    return rows.get(key)
                return (await load([key])).get(key)
            # Of another process: poll for its fill; after lock_wait take the lease over once
            # (the holder's fill, should it still come, no longer matches and is dropped). If
            # someone else took it first, read the database without filling: the wait is bounded.
            now = loop.time()
            if give_up_at is None:
                give_up_at = now + self._lock_wait
            if now >= give_up_at:
                if take_over:
                    return (await load([key])).get(key)
                take_over = holder
                continue
            await asyncio.sleep(min(delay, give_up_at - now))
            delay = min(delay * 2, _MAX_POLL)

    async def read_many(self, keys: Sequence[str], load: Loader) -> tuple[dict[str, Hit], Rows]:
        """Hits found in the cache and rows loaded for the rest (one load, no waiting).

        Keys leased to other readers are loaded in the same statement and left to their holder
        to fill.
        """
        if not self.breaker.allow_request():
            self.counts["bypassed"] += len(keys)
            return {}, await load(keys)
        cached: dict[str, Hit] = {}
        rest: list[str] = []
        try:
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                generation, records = await self._peek(chunk)
                for key, record in zip(chunk, records, strict=True):
                    hit = parse_hit(record if record is None else as_bytes(record), generation)
                    if hit is None:
                        rest.append(key)
                    else:
                        cached[key] = hit
        except CacheDown:
            return cached, await load([key for key in keys if key not in cached])
        self.counts["hits"] += len(cached)
        self.counts["misses"] += len(rest)
        if not rest:
            return cached, {}
        token = self._next_token()
        self._flights[token] = asyncio.get_running_loop().create_future()
        leased: list[str] = []
        others: list[str] = []
        try:
            for start in range(0, len(rest), _BATCH):
                chunk = rest[start : start + _BATCH]
                replies = await self._lookup(chunk, scripts.MODE_VALUE, token)
                for key, reply in zip(chunk, replies, strict=True):
                    if reply[0] == scripts.LEASED:
                        leased.append(key)
                    elif reply[0] == scripts.BUSY:
                        others.append(key)
                    else:  # filled since the MGET
                        cached[key] = self._hit_of(reply, scripts.MODE_VALUE)
        except BaseException as exc:
            self._flights.pop(token).set_result(_FAILED)
            if not isinstance(exc, CacheDown):
                raise
            # Leases already taken lapse by themselves; load whatever was not found yet.
            return cached, await load([key for key in keys if key not in cached])
        if not leased and not others:
            self._flights.pop(token).set_result({})
            return cached, {}
        return cached, await self._lead(load, token, [*leased, *others], leased)

    async def stop(self) -> None:
        """Stop the prober (the client is closed by whoever owns it)."""
        self._stopped = True
        prober, self._prober = self._prober, None
        if prober is not None:
            prober.cancel()
            await asyncio.gather(prober, return_exceptions=True)
