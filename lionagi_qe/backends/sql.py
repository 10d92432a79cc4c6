"""``PostgresMemory``: the memory contract on PostgreSQL, and on SQLite for the embedded default.

Hot paths are single Core statements built once (compiled-cache friendly) and run on an
autocommit connection: one round trip per call, no BEGIN/COMMIT around a statement that is
atomic on its own. Multi-statement operations run in one transaction.

With read replicas (``replicas=[…]``, PostgreSQL only), ``search``, ``list_keys``, ``scan`` and
``get_stats`` may be answered by a streaming replica; every other call, point reads included,
goes to the primary (see :mod:`lionagi_qe.db.replicas`). Point reads stay there because agents
use them to coordinate (read a version, then compare-and-set) and so must see other processes'
latest writes, not only their own. Without replicas the hot paths are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from lionagi_qe import codec
from lionagi_qe.backends.base import DEFAULT_MAX_VALUE_BYTES, KeyRange, MemoryBase
from lionagi_qe.backends.coalesce import Coalescer
from lionagi_qe.backends.protocol import DEFAULT_SCAN_BATCH, ScannedEntry, scan_batch_size
from lionagi_qe.backends.settle import finish_then_cancel
from lionagi_qe.db.direct import DirectRunner, supports_direct
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.manager import Database
from lionagi_qe.db.replicas import Replica, ReplicaRouter
from lionagi_qe.db.translate import FOREIGN_KEY_VIOLATION, SCHEMA_HINT, sqlstate_of, translate
from lionagi_qe.entry import MemoryEntry
from lionagi_qe.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    KeyNotFoundError,
    PersistenceError,
    SchemaMissingError,
    SerializationError,
)
from lionagi_qe.repositories.memory import EntryRow, MemoryRepository, StoreRow, UpsertRow

__all__ = ["PostgresMemory"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DatabaseSource = Database | AsyncEngine | async_sessionmaker[AsyncSession] | AsyncSession | str


class PostgresMemory(MemoryBase):
    """The memory contract over SQLAlchemy: PostgreSQL (asyncpg) or SQLite (aiosqlite).

    Args:
        db_manager: where to run: a :class:`DatabaseManager`, an :class:`AsyncEngine`, an
            ``async_sessionmaker`` (each call is one committed unit of work), an
            :class:`AsyncSession` (calls join the caller's transaction and never commit), or a
            database URL (the memory then owns its engine and disposes it on :meth:`close`).
        namespace: the prefix every key must start with.
        max_value_bytes: the largest JSON form of a value.
        auto_migrate: upgrade the schema on first use; default True for SQLite (the embedded
            store sets itself up) and False for PostgreSQL, where a missing schema raises
            :class:`SchemaMissingError` naming ``lionagi-qe db upgrade``.
        cleanup_batch_size: rows ``cleanup_expired`` deletes per statement.
        replicas: URLs of streaming replicas of the database (PostgreSQL; the memory must be
            built from a URL or an engine, and owns the replica engines). A memory built from a
            :class:`DatabaseManager` uses that manager's replicas instead.
        replica_max_lag, replica_wait, replica_retry_after, replica_connect_timeout: the
            routing bounds (see :class:`~lionagi_qe.db.replicas.ReplicaRouter`).
        pool_size: pool size when the memory creates its own engine from a URL.
    """

    backend_name = "postgresql"
    #: Statements of one kind (reads, plain writes) in flight before further calls coalesce.
    COALESCE_INFLIGHT = 4

    def __init__(
        self,
        db_manager: DatabaseSource,
        *,
        namespace: str = "aqe/",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        auto_migrate: bool | None = None,
        cleanup_batch_size: int = 1000,
        replicas: Sequence[str] | None = None,
        replica_max_lag: float = 5.0,
        replica_wait: float = 0.0,
        replica_retry_after: float = 5.0,
        replica_connect_timeout: float = 2.0,
        **engine_options: Any,
    ) -> None:
        super().__init__(namespace=namespace, max_value_bytes=max_value_bytes)
        if isinstance(replicas, str):
            raise InvalidArgumentError("replicas must be a list of URLs, not one string")
        self._owned_engine: AsyncEngine | None = None
        self._engine: AsyncEngine | None = None
        self._session_factory: async_sessionmaker[AsyncSession] | None = None
        self._session: AsyncSession | None = None
        if isinstance(db_manager, str):
            self._owned_engine = self._engine = create_engine(db_manager, **engine_options)
        elif isinstance(db_manager, Database):
            self._engine = db_manager.engine
        elif isinstance(db_manager, AsyncEngine):
            self._engine = db_manager
        elif isinstance(db_manager, async_sessionmaker):
            self._session_factory = db_manager
        elif isinstance(db_manager, AsyncSession):
            self._session = db_manager
        else:
            raise TypeError(f"cannot build PostgresMemory from {type(db_manager).__name__}")
        #: Routes stale-ok reads to replicas; None without replicas.
        self._router: ReplicaRouter | None = None
        self._owned_router: ReplicaRouter | None = None
        if isinstance(db_manager, Database) and db_manager.replicas is not None:
            if replicas:
                raise InvalidArgumentError("give replicas to the DatabaseManager or here, not both")
            self._router = db_manager.replicas
        elif replicas:
            if self._engine is None:
                raise InvalidArgumentError("replicas need a memory built from a URL or an engine")
            self._router = self._owned_router = ReplicaRouter(
                self._engine,
                list(replicas),
                max_lag=replica_max_lag,
                wait=replica_wait,
                retry_after=replica_retry_after,
                connect_timeout=replica_connect_timeout,
                **engine_options,
            )
        bind = self._bind_engine()
        self.dialect = bind.dialect.name if bind is not None else "postgresql"
        if self.dialect == "sqlite":
            self.backend_name = "sqlite"
        self._autocommit = (
            self._engine.execution_options(isolation_level="AUTOCOMMIT") if self._engine else None
        )
        # Single statements on PostgreSQL skip AsyncConnection (see lionagi_qe.db.direct).
        self._direct = (
            DirectRunner(self._engine)
            if self._engine is not None and supports_direct(self._engine)
            else None
        )
        # Concurrent retrieves and plain stores coalesce into multi-row statements.
        self._reads: Coalescer[str, str | None] | None = None
        self._writes: Coalescer[UpsertRow, int] | None = None
        if self._direct is not None:
            inflight = self.COALESCE_INFLIGHT
            self._reads = Coalescer(self._read_one, self._read_batch, max_inflight=inflight)
            self._writes = Coalescer(self._write_one, self._write_batch, max_inflight=inflight)
        self._auto_migrate = self.dialect == "sqlite" if auto_migrate is None else auto_migrate
        self._cleanup_batch_size = cleanup_batch_size
        self._ready = False
        self._init_lock = asyncio.Lock()
        self._session_lock = asyncio.Lock()
        self._known_partitions: set[str] = set()

    def _bind_engine(self) -> AsyncEngine | None:
        if self._engine is not None:
            return self._engine
        if self._session_factory is not None:
            bind = self._session_factory.kw.get("bind")
            return bind if isinstance(bind, AsyncEngine) else None
        if self._session is not None and isinstance(self._session.bind, AsyncEngine):
            return self._session.bind
        if self._session is not None and isinstance(self._session.bind, AsyncConnection):
            return self._session.bind.engine
        return None

    @property
    def held_connections(self) -> int:
        """Pooled connections this memory keeps checked out between calls.

        On PostgreSQL the memory keeps the connection its last single-statement call used
        (at most one, for at most a few seconds) so that a sequential caller pays no pool
        checkout; :meth:`close` hands it back. 0 or 1.
        """
        return 0 if self._direct is None else self._direct.held

    @property
    def replicas(self) -> ReplicaRouter | None:
        """The read router (replicas, their state and read counts); None without replicas."""
        return self._router

    @property
    def engine(self) -> AsyncEngine | None:
        """The engine this memory runs on (None when built on a session)."""
        return self._engine

    # -- plumbing ---------------------------------------------------------------------------

    async def _initialize(self) -> None:
        async with self._init_lock:
            if self._ready:
                return
            self._check_open()
            if self._engine is not None:
                # Alembic is heavy to import; only the first call of a memory needs it.
                from lionagi_qe.db import migrate

                try:
                    if self._auto_migrate:
                        await migrate.upgrade(self._engine)
                    elif not await migrate.has_schema(self._engine):
                        raise SchemaMissingError(SCHEMA_HINT)
                except (SQLAlchemyError, OSError, TimeoutError) as exc:
                    raise translate(exc) from exc
            self._ready = True

    @asynccontextmanager
    async def _repository(
        self, *, write: bool = False, atomic: bool = False
    ) -> AsyncIterator[MemoryRepository]:
        """A repository on an autocommit connection, a transaction, or the caller's session.

        PostgreSQL: single statements run in autocommit (one round trip each), ``atomic`` work
        in a transaction. SQLite: reads run without a transaction and writes in one, since
        every driver call there is a hop to aiosqlite's thread and switching a connection to
        autocommit and back costs two more.
        """
        self._check_open()
        if not self._ready:
            await self._initialize()
        try:
            if self._direct is not None and not self._direct.observed():
                if atomic:
                    async with self._direct.transaction() as bound:
                        yield MemoryRepository(bound, self.dialect)
                else:
                    yield MemoryRepository(self._direct, self.dialect)
                return
            try:
                if self._autocommit is not None and self._engine is not None:
                    if atomic or (write and self.dialect == "sqlite"):
                        async with self._engine.begin() as conn:
                            yield MemoryRepository(conn, self.dialect)
                    else:
                        source = self._engine if self.dialect == "sqlite" else self._autocommit
                        async with source.connect() as conn:
                            yield MemoryRepository(conn, self.dialect)
                elif self._session_factory is not None:
                    async with self._session_factory() as session, session.begin():
                        yield MemoryRepository(session, self.dialect)
                else:
                    assert self._session is not None
                    async with self._session_lock:
                        yield MemoryRepository(self._session, self.dialect)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise translate(exc) from exc
        finally:
            # After the write returned, failed or was cancelled (it may have been applied):
            # stale-ok reads now need a replica that has replayed it.
            if self._router is not None and (write or atomic):
                self._router.note_write()

    async def _stale_read(self, work: Callable[[MemoryRepository], Awaitable[T]]) -> T:
        """Run the read ``work`` on a replica when the router allows, else on the primary.

        A replica's failure (down, lost connection, a query cancelled by recovery) reruns the
        read on the primary: a read may run twice, and the caller never sees a replica's error.
        """
        router = self._router
        if router is not None:
            self._check_open()
            if not self._ready:
                await self._initialize()
            replica = await router.choose()
            if replica is not None:
                try:
                    result = await self._on_replica(replica, work)
                except PersistenceError as exc:
                    router.failed(replica, exc)
                else:
                    router.served(replica)
                    return result
        async with self._repository() as repo:
            return await work(repo)

    async def _on_replica(
        self, replica: Replica, work: Callable[[MemoryRepository], Awaitable[T]]
    ) -> T:
        if replica.runner is not None and not replica.runner.observed():
            return await work(MemoryRepository(replica.runner, self.dialect))
        try:
            engine = replica.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with engine.connect() as conn:
                return await work(MemoryRepository(conn, self.dialect))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc) from exc

    async def _ensure_partition(self, repo: MemoryRepository, partition: str) -> None:
        # Partition rows are labels that are never deleted by us: remember the ones we made so
        # the hot path stays one statement. Inside a caller's session, always make sure.
        if partition in self._known_partitions:
            return
        await repo.ensure_partition(partition)
        if self._engine is not None:
            self._known_partitions.add(partition)

    async def _with_partition(self, partition: str, write: Any, *, atomic: bool = False) -> Any:
        """Run ``write(repo)`` after making sure ``partition`` exists; retry once if it vanished."""
        for attempt in (1, 2):
            try:
                async with self._repository(write=True, atomic=atomic) as repo:
                    await self._ensure_partition(repo, partition)
                    return await write(repo)
            except PersistenceError as exc:
                cause = exc.__cause__
                if attempt == 2 or cause is None or sqlstate_of(cause) != FOREIGN_KEY_VIOLATION:
                    raise
                self._known_partitions.discard(partition)
        raise AssertionError("unreachable")  # pragma: no cover

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
        item = request.item
        row = UpsertRow(
            item.key,
            item.value_json,
            request.partition,
            request.metadata_json,
            item.size_bytes,
            request.ttl,
        )
        if request.if_absent or request.expected_version is not None:
            version = await finish_then_cancel(
                self._upsert(row, request.if_absent, request.expected_version)
            )
            if version is None:
                raise request.conflict()
            return version
        if self._writes is not None:
            return await finish_then_cancel(self._writes.submit(row))
        return await finish_then_cancel(self._write_one(row))

    async def retrieve(self, key: str, *, as_type: Any = None, default: Any = None) -> Any:
        """The live value of ``key``, validated into ``as_type`` if given; else ``default``."""
        self._check_open()
        checked = self._key(key)
        if self._reads is not None:
            value_json = await self._reads.submit(checked)
        else:
            value_json = await self._read_one(checked)
        if value_json is None:
            return default
        value = codec.decode(value_json)
        return value if as_type is None else codec.validate_as(value, as_type)

    # -- coalesced calls ---------------------------------------------------------------------

    async def _read_one(self, key: str) -> str | None:
        async with self._repository() as repo:
            return await repo.get_value(key)

    async def _read_batch(self, keys: Sequence[str]) -> list[str | None]:
        async with self._repository() as repo:
            found = await repo.retrieve_many(list(dict.fromkeys(keys)))
        return [found.get(key) for key in keys]

    async def _upsert(
        self, row: UpsertRow, if_absent: bool = False, expected_version: int | None = None
    ) -> int | None:
        """One upsert statement; the new version, or None if its condition failed."""

        async def write(repo: MemoryRepository) -> int | None:
            return await repo.upsert(
                row.key,
                row.value_json,
                partition=row.partition,
                metadata_json=row.metadata_json,
                size_bytes=row.size_bytes,
                ttl=row.ttl,
                if_absent=if_absent,
                expected_version=expected_version,
            )

        version: int | None = await self._with_partition(row.partition, write)
        return version

    async def _write_one(self, row: UpsertRow) -> int:
        version = await self._upsert(row)
        assert version is not None  # an unconditional upsert always returns its version
        return version

    async def _write_batch(self, rows: Sequence[UpsertRow]) -> list[int | BaseException]:
        """One statement per run of distinct keys; a failed statement falls back to one call
        per row, so each caller gets its own result or error."""
        outcomes: list[int | BaseException | None] = [None] * len(rows)
        pending = list(enumerate(rows))
        try:
            missing = {row.partition for row in rows} - self._known_partitions
            if missing:
                async with self._repository(write=True) as repo:
                    for partition in sorted(missing):
                        await self._ensure_partition(repo, partition)
            while pending:
                seen: set[str] = set()
                chunk: list[tuple[int, UpsertRow]] = []
                later: list[tuple[int, UpsertRow]] = []
                for index, row in pending:
                    (later if row.key in seen else chunk).append((index, row))
                    seen.add(row.key)
                async with self._repository(write=True) as repo:
                    versions = await repo.upsert_rows([row for _, row in chunk])
                for index, row in chunk:
                    outcomes[index] = versions[row.key]
                pending = later
        except BackendUnavailableError:
            raise
        except PersistenceError:
            singles = await asyncio.gather(
                *(self._write_one(row) for _, row in pending), return_exceptions=True
            )
            for (index, _), outcome in zip(pending, singles, strict=True):
                outcomes[index] = outcome
        assert all(outcome is not None for outcome in outcomes)
        return cast("list[int | BaseException]", outcomes)

    async def get_entry(self, key: str) -> MemoryEntry | None:
        """The live entry with partition, version, timestamps, expiry and metadata."""
        self._check_open()
        checked = self._key(key)
        async with self._repository() as repo:
            row = await repo.get_entry(checked)
        if row is None:
            return None
        return MemoryEntry(**_entry_fields(row))

    async def read_entries(self, keys: Iterable[str]) -> dict[str, EntryRow]:
        """The live rows among ``keys`` as stored (JSON text), each with its remaining TTL by
        the database clock, in one statement. For tiers that cache this store's rows."""
        self._check_open()
        checked = self._keys(keys)
        if not checked:
            return {}
        async with self._repository() as repo:
            rows = await repo.get_entries(checked)
        return {row.key: row for row in rows}

    async def exists(self, key: str) -> bool:
        """True if ``key`` has a live entry."""
        self._check_open()
        checked = self._key(key)
        async with self._repository() as repo:
            return await repo.exists(checked)

    async def ttl(self, key: str) -> float | None:
        """Remaining seconds (None: no expiry). Raises KeyNotFoundError if there is no entry."""
        self._check_open()
        checked = self._key(key)
        async with self._repository() as repo:
            found, remaining = await repo.ttl(checked)
        if not found:
            raise KeyNotFoundError(f"no live entry for {checked!r}")
        return remaining

    async def expire(self, key: str, ttl: float) -> bool:
        """Set or replace the TTL of a live entry (a write: the version grows)."""
        self._check_open()
        checked = self._key(key)
        seconds = self._required_ttl(ttl)
        return await finish_then_cancel(self._expire(checked, seconds))

    async def _expire(self, key: str, seconds: float) -> bool:
        async with self._repository(write=True) as repo:
            return await repo.expire(key, seconds)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if a live entry was removed."""
        self._check_open()
        checked = self._key(key)
        return await finish_then_cancel(self._delete(checked))

    async def _delete(self, key: str) -> bool:
        async with self._repository(write=True) as repo:
            return await repo.delete(key)

    async def search(
        self, pattern: str, *, regex: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Live entries whose keys match ``pattern``, in code-point order of keys.

        A glob is answered by the database from an index range on its literal prefix plus an
        exact match (PostgreSQL ``~``, SQLite ``GLOB``); a regex (Python ``re.search``) is
        matched here against the namespace's live keys, then only the hits are read.
        """
        self._check_open()
        count = self._limit(limit)
        if regex:
            compiled = self._regex(pattern)
            namespace = self._namespace_range

            async def by_regex(repo: MemoryRepository) -> tuple[list[str], dict[str, str]]:
                keys = await repo.list_keys(namespace.lower, namespace.upper)
                hits = [key for key in keys if compiled.search(key)]
                if count is not None:
                    hits = hits[:count]
                return hits, (await repo.retrieve_many(hits) if hits else {})

            hits, found = await self._stale_read(by_regex)
            return {key: codec.decode(found[key]) for key in hits if key in found}
        glob, key_range = self._glob(pattern)
        if key_range is None or count == 0:
            return {}

        async def by_glob(repo: MemoryRepository) -> list[tuple[str, str]]:
            assert key_range is not None
            if self.dialect == "postgresql":
                return list(
                    await repo.search(
                        key_range.lower, key_range.upper, glob.posix_regex, "regex", count
                    )
                )
            if glob.sqlite_glob is not None:
                return list(
                    await repo.search(
                        key_range.lower, key_range.upper, glob.sqlite_glob, "glob", count
                    )
                )
            rows = await repo.search(key_range.lower, key_range.upper, None, None, None)
            return [row for row in rows if glob.matches(row[0])][: count or None]

        rows = await self._stale_read(by_glob)
        return {key: codec.decode(value_json) for key, value_json in rows}

    async def list_keys(self, prefix: str | None = None) -> list[str]:
        """Live keys starting with the literal ``prefix`` (no wildcards), code-point sorted."""
        self._check_open()
        key_range = self._list_range(prefix)
        if key_range is None:
            return []

        async def keys(repo: MemoryRepository) -> list[str]:
            return await repo.list_keys(key_range.lower, key_range.upper)

        return await self._stale_read(keys)

    def scan(
        self, prefix: str | None = None, *, batch_size: int = DEFAULT_SCAN_BATCH
    ) -> AsyncIterator[ScannedEntry]:
        """Every live entry under the literal ``prefix``, in code-point order, page by page.

        Each page is one statement (``key > last ORDER BY key LIMIT batch_size`` on the
        ``COLLATE "C"`` key index, never OFFSET) on its own connection, so no connection or
        transaction is held between pages. ``ttl`` is the remaining time by the database clock,
        read in the same statement. Arguments are checked here, before any I/O.
        """
        self._check_open()
        key_range = self._list_range(prefix)
        size = scan_batch_size(batch_size)
        return self._scan(key_range, size)

    async def _scan(self, key_range: KeyRange | None, size: int) -> AsyncIterator[ScannedEntry]:
        if key_range is None:
            return
        after: str | None = None
        while True:

            async def page(repo: MemoryRepository, after: str | None = after) -> list[EntryRow]:
                return list(await repo.scan_page(key_range.lower, key_range.upper, after, size))

            rows = await self._stale_read(page)
            read_at = time.monotonic()
            for row in rows:
                yield ScannedEntry(
                    **_entry_fields(row),
                    ttl=row.remaining,
                    read_at=read_at,
                )
            if len(rows) < size:
                return
            after = rows[-1].key

    async def store_many(
        self,
        items: Mapping[str, Any] | Iterable[tuple[str, Any]],
        ttl: float | None = None,
        partition: str = "default",
    ) -> int:
        """Store every item in one transaction, all or nothing (PostgreSQL: one statement per
        2,000 entries; encoding yields to the event loop every 256 values)."""
        self._check_open()
        seconds = self._ttl(ttl)
        label = self._partition(partition)
        batch = await self._items_yielding(items)
        if not batch:
            return 0
        rows = [StoreRow(item.key, item.value_json, item.size_bytes) for item in batch]

        async def write(repo: MemoryRepository) -> None:
            await repo.store_many(rows, partition=label, ttl=seconds)

        await finish_then_cancel(self._with_partition(label, write, atomic=True))
        return len(rows)

    async def retrieve_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The live entries among ``keys`` (missing and expired keys are left out)."""
        self._check_open()
        checked = self._keys(keys)
        if not checked:
            return {}
        async with self._repository() as repo:
            found = await repo.retrieve_many(checked)
        return {key: codec.decode(found[key]) for key in checked if key in found}

    async def increment(
        self, key: str, delta: int | float = 1, ttl: float | None = None
    ) -> int | float:
        """Add ``delta`` atomically and return the new value (created at ``delta``).

        ``ttl=None`` keeps the counter's current expiry; a number replaces it. The result is an
        int while the counter and every delta are ints, a float otherwise.

        Raises:
            SerializationError: the live value is not a number, or an integer sum would leave
                the 64-bit range (counters are 64-bit on every backend).
        """
        self._check_open()
        checked = self._key(key)
        amount = self._delta(delta)
        seconds = self._ttl(ttl)
        initial = self._encode(amount)
        result = await finish_then_cancel(self._increment(checked, amount, seconds, initial))
        if result is None:
            raise SerializationError(
                f"{checked!r} holds a value that is not a number, or the sum leaves 64 bits"
            )
        return self._as_number(codec.decode(result[0]))

    async def _increment(
        self, key: str, amount: int | float, seconds: float | None, initial: str
    ) -> tuple[str, int] | None:
        async with self._repository(write=True) as repo:
            return await repo.increment(
                key, amount, ttl=seconds, initial_json=initial, size_bytes=len(key) + len(initial)
            )

    async def clear_partition(self, partition: str) -> int:
        """Delete every entry labelled ``partition``; return how many live ones went."""
        self._check_open()
        label = self._partition(partition)
        return await finish_then_cancel(self._clear_partition(label))

    async def _clear_partition(self, label: str) -> int:
        key_range = self._namespace_range
        async with self._repository(atomic=True) as repo:
            return await repo.clear_partition(label, key_range.lower, key_range.upper)

    async def get_stats(self) -> dict[str, Any]:
        """Counts of live and expired entries, live counts per partition and sizes."""
        self._check_open()
        key_range = self._namespace_range

        async def counts(repo: MemoryRepository) -> dict[str, Any]:
            return await repo.stats(key_range.lower, key_range.upper)

        stats = await self._stale_read(counts)
        size = stats["size_bytes"]
        result = {
            "backend": self.backend_name,
            "namespace": self.namespace,
            **stats,
            "size_mb": round(size / (1024 * 1024), 6),
        }
        if self._router is not None:
            result["replication"] = self._router.stats()
        return result

    async def cleanup_expired(self) -> int:
        """Delete expired entries in batches of ``cleanup_batch_size``; return how many."""
        self._check_open()
        key_range = self._namespace_range
        total = 0
        while True:
            async with self._repository(write=True) as repo:
                removed = await repo.cleanup_batch(
                    key_range.lower, key_range.upper, self._cleanup_batch_size
                )
            total += removed
            if removed < self._cleanup_batch_size:
                return total

    async def close(self) -> None:
        """Close; an engine this memory created from a URL is disposed."""
        if self._closed:
            return
        self._closed = True
        for coalescer in (self._reads, self._writes):
            if coalescer is not None:
                await coalescer.drain()
        if self._direct is not None:
            await self._direct.release()
        router, self._owned_router = self._owned_router, None
        if router is not None:
            await router.close()
        engine, self._owned_engine = self._owned_engine, None
        if engine is not None:
            await engine.dispose()


def _entry_fields(row: EntryRow) -> dict[str, Any]:
    """A stored row as the public entry's fields (value and metadata decoded)."""
    return {
        "key": row.key,
        "value": codec.decode(row.value_json),
        "partition": row.partition,
        "version": row.version,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "expires_at": row.expires_at,
        "metadata": codec.decode(row.metadata_json),
    }
