"""``RedisMemory``: the memory contract on Redis alone (SPEC §3, §4), over ``redis.asyncio``.

Key layout. Every key starts with ``prefix`` verbatim, then a hash tag made from it: the
*keyspace* ``K`` (``lionagi:`` → ``lionagi:{lionagi}:``).

- ``K e:<key>`` — one hash per entry: ``v`` (the value's JSON text) and ``h`` (version,
  created/updated in server µs, expiry in server ms, size, partition, metadata; see
  :mod:`~lionagi_qe.backends.redis_scripts`). TTLs are native (``PEXPIREAT``), so Redis's
  clock decides expiry and an expired entry is gone for every reader at once.
- ``K idx`` — a sorted set of every indexed key, all scores 0: ``ZRANGEBYLEX`` over a prefix
  range lists keys in UTF-8 byte order, which is code-point order. Listing, search, statistics
  and cleanup walk this index in pages of ``batch_size``, never the database (no ``KEYS``, no
  database ``SCAN``), so foreign keys are never seen.
- ``K kp`` (hash key → partition) and ``K p:<partition>`` (a set per partition) —
  ``clear_partition`` visits only its own partition's members.

Expiry leaves index members behind: every reader treats a member without a live entry as
absent; ``cleanup_expired`` purges them (its count), and ``clear_partition`` and writes of the
same key fix them up as they pass.

Atomicity. Every write of an entry with its indexes is one Lua script (``EVALSHA``, cached;
see :mod:`~lionagi_qe.backends.redis_scripts`), so ``store`` is one round trip and
``store_many`` is all-or-nothing in one. Reads need no script: ``retrieve`` is one ``HGET``.
Calls pass a gate of ``max_connections`` slots in front of the pool
(:mod:`~lionagi_qe.backends.redis_support`), so the pool never grows beyond it.

Redis Cluster. A script may only touch keys of one slot, and the index is one sorted set, so
all keys of one store share one hash tag, hence one slot (one shard). The trade-off: a single
store does not spread across shards (its size and throughput are one node's), in exchange for
atomic index updates, all-or-nothing batches and ordered listing without a cross-shard merge.
Different prefixes hash to different slots, so many stores do spread over a cluster. A prefix
that already holds a hash tag keeps it (``{fleet}:a:`` and ``{fleet}:b:`` share a slot).
Scripts also reach keys they do not declare (an entry's former partition set); these share the
slot, which Redis Cluster accepts. Every script declares at least one key of the slot, so
redis-py routes it (``EVALSHA``) to the slot's master; a script missing there (a promoted
replica) is loaded again by redis-py (``NOSCRIPT`` → ``SCRIPT LOAD``). ``get_stats`` reads INFO
from that master. The client is a ``RedisCluster`` when told (``cluster=True``, ``nodes=[…]``,
``client=RedisCluster(…)``) or when the first call finds ``cluster_enabled:1`` (``INFO
cluster``); see :class:`~lionagi_qe.backends.redis_support.RedisConnector` and
:func:`~lionagi_qe.backends.redis_support.make_cluster` (commands never retried, redirections
followed).

Counters follow the SQL backend exactly: integers add as 64-bit integers (``HINCRBY``, overflow
is refused), anything else as doubles whose text is Python's ``repr`` of the same sum, so the
stored JSON and its size equal what Python would write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from lionagi_qe import codec
from lionagi_qe.backends import redis_scripts as lua
from lionagi_qe.backends.base import DEFAULT_MAX_VALUE_BYTES, KeyRange, MemoryBase, StoreRequest
from lionagi_qe.backends.coalesce import Coalescer
from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, ScannedEntry, scan_batch_size
from lionagi_qe.backends.redis_support import (
    Client,
    ConnectionGate,
    RedisConnector,
    cancellable,
    encode_batch,
    info_for_key,
    keyspace,
    ttl_millis,
    whole_range,
)
from lionagi_qe.entry import MemoryEntry
from lionagi_qe.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    KeyNotFoundError,
    PersistenceError,
    SerializationError,
)

__all__ = ["RedisMemory", "keyspace"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DRIVER_ERRORS = (RedisError, RedisClusterException, OSError)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _after(member: bytes | str) -> bytes | str:
    """The exclusive ``ZRANGEBYLEX`` bound just past ``member``."""
    return b"(" + member if isinstance(member, bytes) else "(" + member


def _micros(raw: bytes | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(raw))


def _entry_fields(key: str, value: bytes | str, header: bytes | str) -> dict[str, Any]:
    """An entry's public fields from its stored value and header.

    Header layout (see ``redis_scripts``): "version created updated expires size\x1fpartition
    \x1fmetadata".
    """
    numbers, partition, metadata = _text(header).split("\x1f", 2)
    version, created, updated, expires, _size = numbers.split(" ")
    return {
        "key": key,
        "value": codec.decode(value),
        "partition": partition,
        "version": int(version),
        "created_at": _micros(created),
        "updated_at": _micros(updated),
        "expires_at": _EPOCH + timedelta(milliseconds=int(expires)) if expires else None,
        "metadata": codec.decode(metadata),
    }


def _client_location(client: Client) -> str:
    """Where a caller's client points (no password), for error messages and ``repr``."""
    if isinstance(client, RedisCluster):
        names = list(client.nodes_manager.startup_nodes)
        return f"redis://{names[0] if names else '?'} (cluster)"
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _scanned(
    key: str, value: bytes | str, header: bytes | str, remaining_ms: int, read_at: float
) -> ScannedEntry:
    """An entry of a ``SCAN_PAGE`` reply."""
    return ScannedEntry(
        **_entry_fields(key, value, header),
        ttl=None if remaining_ms < 0 else remaining_ms / 1000,
        read_at=read_at,
    )


class RedisMemory(MemoryBase):
    """The memory contract on Redis: native TTLs, its own indexes, Lua for atomic writes.

    Args:
        host, port, db, password: where Redis is (ignored when ``url`` or ``client`` is given).
        max_connections: size of the connection pool; calls beyond it wait up to
            ``pool_timeout`` seconds for a connection (then :class:`BackendUnavailableError`).
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL; wins over host/port/db/password.
        prefix: the start of every key this store writes (several stores may share a database).
        namespace: the prefix every entry key must start with.
        max_value_bytes: the largest JSON form of a value.
        socket_timeout, socket_connect_timeout: seconds; a call that exceeds them raises
            :class:`BackendUnavailableError`. Commands are never retried (a retried write could
            apply twice).
        pool_timeout: seconds to wait for a free connection.
        client_name: the name connections announce (``CLIENT SETNAME``).
        batch_size: index members per page when listing, searching, counting or cleaning.
        client: an existing ``redis.asyncio.Redis`` or ``RedisCluster``; the caller keeps owning
            it and its pool (``close`` does not close it; ``max_connections`` and
            ``pool_timeout`` are its own).
        cluster: ``True``: the server is a Redis Cluster (``url``/``host`` name any node);
            ``False``: a single server; ``None`` (default): the first call asks it.
        nodes: ``host:port`` pairs or ``redis://`` URLs of cluster nodes (implies a cluster;
            any one that answers reveals the rest). Wins over ``host``/``port``.
    """

    backend_name = "redis"
    #: Reads in flight before further concurrent retrieves coalesce into one script call.
    COALESCE_INFLIGHT = 4

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        max_connections: int = 10,
        *,
        url: str | None = None,
        prefix: str = "lionagi:",
        namespace: str = "aqe/",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        socket_timeout: float | None = 5.0,
        socket_connect_timeout: float | None = 2.0,
        pool_timeout: float | None = 10.0,
        client_name: str | None = "lionagi_qe",
        batch_size: int = 1000,
        client: Client | None = None,
        cluster: bool | None = None,
        nodes: Sequence[str] | None = None,
    ) -> None:
        super().__init__(namespace=namespace, max_value_bytes=max_value_bytes)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError("batch_size must be a positive int")
        self.prefix = prefix
        self._keyspace = keyspace(prefix)
        self._entries = self._keyspace + "e:"
        self._idx = self._keyspace + "idx"
        self._kp = self._keyspace + "kp"
        self._batch = batch_size
        self._connector: RedisConnector | None = None
        self._given: Client | None = client
        if client is not None:
            if not isinstance(client, Redis | RedisCluster):
                raise InvalidArgumentError("client must be a redis.asyncio Redis or RedisCluster")
            self._given_location = _client_location(client)
            initial: Client = client
        else:
            self._connector = RedisConnector(
                host=host,
                port=port,
                db=db,
                password=password,
                url=url,
                nodes=nodes,
                cluster=cluster,
                max_connections=max_connections,
                pool_timeout=pool_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                client_name=client_name,
            )
            initial = self._connector.client
        # Scripts are registered once and run on whichever client is current (``client=``).
        register = initial.register_script
        self._store = register(lua.STORE)
        self._store_batch = register(lua.STORE_BATCH)
        self._store_many = register(lua.STORE_MANY)
        self._increment = register(lua.INCREMENT)
        self._expire = register(lua.EXPIRE)
        self._delete = register(lua.DELETE)
        self._values = register(lua.VALUES)
        self._live_keys = register(lua.LIVE_KEYS_PAGE)
        self._range_page = register(lua.RANGE_VALUES_PAGE)
        self._scan_page = register(lua.SCAN_PAGE)
        self._stats_page = register(lua.STATS_PAGE)
        self._cleanup_page = register(lua.CLEANUP_PAGE)
        self._clear_page = register(lua.CLEAR_PARTITION_PAGE)
        # Concurrent retrieves coalesce into one VALUES script call (one round trip, one reply).
        self._reads: Coalescer[str, bytes | str | None] = Coalescer(
            self._read_one, self._read_batch, max_inflight=self.COALESCE_INFLIGHT
        )
        # Concurrent plain stores coalesce into one STORE_BATCH call, each keeping its version
        # and its error; stores with a condition go alone (their refusal is per call anyway).
        self._writes: Coalescer[StoreRequest, int] = Coalescer(
            self._write_one, self._write_batch, max_inflight=self.COALESCE_INFLIGHT
        )

    @property
    def client(self) -> Client:
        """The client this memory runs on: a ``Redis``, or a ``RedisCluster`` on a cluster
        (known once told, or after the first call found out)."""
        if self._connector is not None:
            return self._connector.client
        assert self._given is not None
        return self._given

    @property
    def _pool(self) -> ConnectionPool | None:
        """The single-server pool this memory built (None on a cluster or a given client)."""
        return self._connector.pool if self._connector is not None else None

    @property
    def _gate(self) -> ConnectionGate | None:
        """The gate in front of the client this memory built (None for a given client)."""
        return self._connector.gate if self._connector is not None else None

    @property
    def _location(self) -> str:
        if self._connector is not None:
            return self._connector.location
        return self._given_location

    # -- plumbing ---------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> PersistenceError:
        what = "refused the command" if isinstance(exc, ResponseError) else "is unavailable"
        return BackendUnavailableError(
            f"Redis at {self._location} {what}: {type(exc).__name__}: {exc}"
        )

    async def _io(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``call`` on the client, through the gate (if this memory owns the client);
        translate driver errors.

        ``call`` receives the client because the client is only known once the first call
        found out whether the server is a cluster (see ``RedisConnector``).
        """
        connector = self._connector
        try:
            if connector is None:
                given = self._given
                assert given is not None
                if isinstance(given, RedisCluster):
                    # Load the slot map before the first command (see RedisConnector); at once
                    # once loaded.
                    await cancellable(given.initialize())
                return await cancellable(call(given))
            client = connector.client if connector.decided else await connector.resolve()
            return await connector.gate.run(call(client))
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return self._io(lambda client: script(keys=keys, args=args, client=client))

    async def _pages(
        self, script: AsyncScript, key_range: KeyRange, keys: list[str], size: int = 0
    ) -> AsyncGenerator[list[Any], None]:
        """Run a page script over ``key_range`` of the index until it has seen every member."""
        size = size or self._batch
        lower: bytes | str = "[" + key_range.lower
        upper = "(" + key_range.upper
        while True:
            reply = await self._script(script, keys, [self._keyspace, lower, upper, size])
            yield reply
            if int(reply[1]) < size:
                return
            lower = _after(reply[0])

    async def _read_one(self, key: str) -> bytes | str | None:
        value: bytes | str | None = await self._io(
            lambda client: client.hget(self._entries + key, "v")
        )
        return value

    async def _read_batch(self, keys: Sequence[str]) -> list[bytes | str | None]:
        unique = list(dict.fromkeys(keys))
        found = dict(zip(unique, await self._fetch(unique), strict=True))
        return [found[key] for key in keys]

    async def _fetch(self, keys: list[str]) -> list[bytes | str | None]:
        """The value JSON of each key (None where no live entry), in one round trip."""
        values: list[bytes | str | None] = await self._script(
            self._values, [self._entries + key for key in keys], []
        )
        return values

    # -- the contract -----------------------------------------------------------------------

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
        """Upsert ``value`` under ``key``; return the entry's new version.

        Raises:
            VersionConflictError: ``if_absent`` and a live entry exists, or ``expected_version``
                differs from the live entry's version (or there is no live entry).
        """
        self._check_open()
        request = self._store_request(
            key, value, ttl, partition, metadata, if_absent, expected_version
        )
        if not request.if_absent and request.expected_version is None:
            return await self._writes.submit(request)
        version = await self._store_one(request)
        if not version:
            raise request.conflict()
        return version

    async def _store_one(self, request: StoreRequest) -> int:
        """One STORE call: the new version, or 0 if the request's condition failed."""
        item, expected = request.item, request.expected_version
        mode = "absent" if request.if_absent else ("" if expected is None else "version")
        version = await self._script(
            self._store,
            [self._entries + item.key, self._idx, self._kp],
            [
                item.key,
                item.value_json,
                request.partition,
                request.metadata_json,
                ttl_millis(request.ttl),
                mode,
                expected or 0,
                self._keyspace,
            ],
        )
        return int(version)

    async def _write_one(self, request: StoreRequest) -> int:
        return await self._store_one(request)

    async def _write_batch(self, requests: Sequence[StoreRequest]) -> list[int | BaseException]:
        """Plain stores in one STORE_BATCH call; a request the server could not apply gets
        its own error (as its lone STORE would have raised), the others their versions."""
        args: list[Any] = [self._keyspace]
        for request in requests:
            args += [
                request.item.key,
                request.item.value_json,
                request.partition,
                request.metadata_json,
                ttl_millis(request.ttl),
            ]
        replies = await self._script(self._store_batch, [self._idx, self._kp], args)
        outcomes: list[int | BaseException] = []
        for reply in replies:
            if isinstance(reply, int):
                outcomes.append(reply)
            else:
                text = reply.decode() if isinstance(reply, bytes) else str(reply)
                outcomes.append(self._unavailable(ResponseError(text)))
        return outcomes

    async def retrieve(self, key: str, *, as_type: Any = None, default: Any = None) -> Any:
        """The live value of ``key``, validated into ``as_type`` if given; else ``default``."""
        self._check_open()
        checked = self._key(key)
        raw = await self._reads.submit(checked)
        if raw is None:
            return default
        value = codec.decode(raw)
        return value if as_type is None else codec.validate_as(value, as_type)

    async def get_entry(self, key: str) -> MemoryEntry | None:
        """The live entry with partition, version, timestamps, expiry and metadata."""
        self._check_open()
        checked = self._key(key)
        value, header = await self._io(
            lambda client: client.hmget(self._entries + checked, ["v", "h"])
        )
        if value is None or header is None:
            return None
        return MemoryEntry(**_entry_fields(checked, value, header))

    async def exists(self, key: str) -> bool:
        """True if ``key`` has a live entry."""
        self._check_open()
        checked = self._key(key)
        return bool(await self._io(lambda client: client.exists(self._entries + checked)))

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds (None: no expiry), read from the server (``PTTL``).

        Raises:
            KeyNotFoundError: there is no live entry.
        """
        self._check_open()
        checked = self._key(key)
        remaining = int(await self._io(lambda client: client.pttl(self._entries + checked)))
        if remaining == -2:
            raise KeyNotFoundError(f"no live entry for {checked!r}")
        return None if remaining == -1 else remaining / 1000

    async def expire(self, key: str, ttl: float) -> bool:
        """Set or replace the TTL of a live entry (a write: the version grows)."""
        self._check_open()
        checked = self._key(key)
        ttl_ms = ttl_millis(self._required_ttl(ttl))
        return bool(await self._script(self._expire, [self._entries + checked], [ttl_ms]))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if a live entry was removed."""
        self._check_open()
        checked = self._key(key)
        deleted = await self._script(
            self._delete, [self._entries + checked, self._idx, self._kp], [checked, self._keyspace]
        )
        return bool(deleted)

    async def search(
        self, pattern: str, *, regex: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Live entries whose keys match ``pattern``, in code-point order of keys.

        A glob walks only the index range of its literal prefix; a regex (Python
        ``re.search``) walks the namespace's index. A glob that is a prefix and ``*`` matches its
        whole range, so each page brings its values along (one round trip); otherwise keys are
        matched here and only the hits are read.
        """
        self._check_open()
        count = self._limit(limit)
        accept: Callable[[str], object]
        if regex:
            accept = self._regex(pattern).search
            key_range: KeyRange | None = self._namespace_range
        else:
            glob, key_range = self._glob(pattern)
            accept = glob.matches
            if key_range is not None and count != 0 and whole_range(glob):
                return await self._range_values(key_range, count)
        if key_range is None or count == 0:
            return {}
        found: dict[str, Any] = {}
        lower: bytes | str = "[" + key_range.lower
        upper = "(" + key_range.upper
        while True:
            members = await self._io(
                lambda client, lower=lower: client.zrangebylex(  # type: ignore[misc]
                    self._idx, lower, upper, start=0, num=self._batch
                )
            )
            hits = [key for key in map(_text, members) if accept(key)]
            if await self._collect(hits, found, count):
                return found
            if len(members) < self._batch:
                return found
            lower = _after(members[-1])

    async def _range_values(self, key_range: KeyRange, limit: int | None) -> dict[str, Any]:
        """Every live entry of ``key_range`` (up to ``limit``), values read with the keys."""
        found: dict[str, Any] = {}
        page = self._batch if limit is None else min(self._batch, limit)
        pages = self._pages(self._range_page, key_range, [self._idx], page)
        async with aclosing(pages):  # leaving early closes the generator at once
            async for reply in pages:
                pairs = reply[2:]
                for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
                    found[_text(key)] = codec.decode(raw)
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    async def _collect(self, hits: list[str], found: dict[str, Any], limit: int | None) -> bool:
        """Add the live ones among ``hits`` to ``found``; True once ``limit`` is reached."""
        start = 0
        while start < len(hits):
            # Under a limit, read no more values than could still be needed.
            size = len(hits) if limit is None else max(limit - len(found), 1)
            chunk = hits[start : start + size]
            start += size
            for key, raw in zip(chunk, await self._fetch(chunk), strict=True):
                if raw is not None:
                    found[key] = codec.decode(raw)
            if limit is not None and len(found) >= limit:
                return True
        return False

    async def list_keys(self, prefix: str | None = None) -> list[str]:
        """Live keys starting with the literal ``prefix`` (no wildcards), code-point sorted."""
        self._check_open()
        key_range = self._list_range(prefix)
        if key_range is None:
            return []
        keys: list[str] = []
        async for page in self._pages(self._live_keys, key_range, [self._idx]):
            keys.extend(map(_text, page[2]))
        return keys

    def scan(
        self, prefix: str | None = None, *, batch_size: int = DEFAULT_SCAN_BATCH
    ) -> AsyncIterator[ScannedEntry]:
        """Every live entry under the literal ``prefix``, in code-point order, page by page.

        Each page is one read-only script: ``ZRANGEBYLEX`` of the index after the last member
        seen, then each member's hash and ``PTTL`` (``ttl`` is Redis's own remaining time).
        Index members whose entries expired are skipped. Arguments are checked here, before
        any I/O.
        """
        self._check_open()
        key_range = self._list_range(prefix)
        size = scan_batch_size(batch_size)
        return self._scan(key_range, size)

    async def _scan(self, key_range: KeyRange | None, size: int) -> AsyncIterator[ScannedEntry]:
        if key_range is None:
            return
        pages = self._pages(self._scan_page, key_range, [self._idx], size)
        async with aclosing(pages):
            async for reply in pages:
                read_at = time.monotonic()
                flat = reply[2:]
                for index in range(0, len(flat), 4):
                    key, value, header, remaining = flat[index : index + 4]
                    yield _scanned(_text(key), value, header, int(remaining), read_at)

    async def store_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: float | None = None,
        partition: str = "default",
    ) -> int:
        """Store every item in one script: one round trip, all or nothing."""
        self._check_open()
        ttl_ms = ttl_millis(self._ttl(ttl))
        label = self._partition(partition)
        batch = await encode_batch(items, self._items)
        if not batch:
            return 0
        self._check_open()
        # One argument, joined in C: a Python-level loop over 2n parts would hold the loop.
        packed = "\0".join(chain.from_iterable(batch.items()))
        keys = [self._idx, self._kp, self._keyspace + "p:" + label]
        args = [self._keyspace, label, ttl_ms, packed]
        return int(await self._script(self._store_many, keys, args))

    async def retrieve_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live entries among ``keys`` (missing and expired keys are left out)."""
        self._check_open()
        checked = self._keys(keys)
        if not checked:
            return {}
        values = await self._fetch(checked)
        return {
            key: codec.decode(raw)
            for key, raw in zip(checked, values, strict=True)
            if raw is not None
        }

    async def increment(
        self, key: str, delta: int | float = 1, ttl: float | None = None
    ) -> int | float:
        """Add ``delta`` atomically and return the new value (created at ``delta``).

        ``ttl=None`` keeps the counter's current expiry; a number replaces it. The result is an
        int while the counter and every delta are ints, a float otherwise.

        Raises:
            SerializationError: the live value is not a number, or the sum overflows (64-bit
                integers, finite doubles).
        """
        self._check_open()
        checked = self._key(key)
        amount = self._delta(delta)
        ttl_ms = ttl_millis(self._ttl(ttl))
        initial = self._encode(amount)
        status, new = await self._script(
            self._increment,
            [self._entries + checked, self._idx, self._kp],
            [
                checked,
                initial,
                "1" if isinstance(amount, int) else "0",
                initial,
                ttl_ms,
                self._keyspace,
            ],
        )
        if int(status) == 0:
            raise SerializationError(f"{checked!r} holds a value that is not a number")
        if int(status) < 0:
            raise SerializationError(f"incrementing {checked!r} by {amount!r} overflows")
        return self._as_number(codec.decode(new))

    async def clear_partition(self, partition: str) -> int:
        """Delete every entry labelled ``partition``; return how many live ones went."""
        self._check_open()
        label = self._partition(partition)
        keys = [self._idx, self._kp, self._keyspace + "p:" + label]
        cursor: bytes | str = "0"
        deleted = 0
        while True:
            args = [self._keyspace, label, cursor, self._batch, self.namespace]
            cursor, count = await self._script(self._clear_page, keys, args)
            deleted += int(count)
            if _text(cursor) == "0":
                return deleted

    async def get_stats(self) -> dict[str, Any]:
        """Counts of this store's live and expired entries, sizes, and the server's INFO."""
        self._check_open()
        live = expired = size = 0
        partitions: dict[str, int] = {}
        async for page in self._pages(self._stats_page, self._namespace_range, [self._idx]):
            live += int(page[2])
            expired += int(page[3])
            size += int(page[4])
            flat = page[5]
            for name, count in zip(flat[::2], flat[1::2], strict=True):
                label = _text(name)
                partitions[label] = partitions.get(label, 0) + int(count)
        info, node = await self._io(
            lambda client: info_for_key(client, self._idx, "memory", "clients", "keyspace")
        )
        return {
            "backend": self.backend_name,
            "namespace": self.namespace,
            "prefix": self.prefix,
            "total_keys": live,
            "total_expired": expired,
            "partitions": dict(sorted(partitions.items())),
            "size_bytes": size,
            "size_mb": round(size / (1024 * 1024), 6),
            "memory_used": int(info["used_memory"]),
            "memory_used_human": info.get("used_memory_human"),
            "memory_peak": int(info["used_memory_peak"]),
            "memory_peak_human": info.get("used_memory_peak_human"),
            "connected_clients": int(info["connected_clients"]),
            "keyspace_info": {name: data for name, data in info.items() if name.startswith("db")},
            "server": node,
            "cluster": isinstance(self.client, RedisCluster),
        }

    async def cleanup_expired(self) -> int:
        """Purge index members whose entries Redis has expired; return how many."""
        self._check_open()
        purged = 0
        keys = [self._idx, self._kp]
        async for page in self._pages(self._cleanup_page, self._namespace_range, keys):
            purged += int(page[2])
        return purged

    async def close(self) -> None:
        """Close; a pool this memory created is disconnected (a given ``client`` is not)."""
        if self._closed:
            return
        self._closed = True
        await self._reads.drain()
        await self._writes.drain()
        if self._connector is not None:
            try:
                await self._connector.aclose()
            except _DRIVER_ERRORS as exc:  # pragma: no cover - closing sockets rarely fails
                logger.debug("closing the Redis pool failed: %s", type(exc).__name__)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self._location} prefix={self.prefix!r} "
            f"namespace={self.namespace!r} {state}>"
        )
