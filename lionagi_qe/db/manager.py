"""``Database``: one engine, its pool and its session factory, owned in one place.

:class:`lionagi_qe.DatabaseManager` (the Q-learning store) builds on it. With ``replicas``,
reads that accept slightly stale data can go to streaming replicas through :meth:`Database.read`
(see :mod:`lionagi_qe.db.replicas` for the routing rules and the guarantees).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from lionagi_qe.config import mask_url
from lionagi_qe.db.engine import create_engine, normalize_url
from lionagi_qe.db.replicas import ReplicaRouter, check_replica_options
from lionagi_qe.db.translate import translate
from lionagi_qe.errors import ClosedError, InvalidArgumentError, PersistenceError

__all__ = ["Database"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise translate(exc) from exc


class Database:
    """Owns an :class:`AsyncEngine` for PostgreSQL (or SQLite) and hands out sessions.

    Args:
        database_url: ``postgresql://…`` (the asyncpg driver is implied),
            ``postgresql+asyncpg://…`` or ``sqlite+aiosqlite:///file.db``.
        min_connections: connections opened by :meth:`connect` ahead of use.
        max_connections: the pool's size; callers beyond it wait ``pool_timeout`` seconds.
        replicas: URLs of streaming replicas of this database (PostgreSQL only); reads made
            with :meth:`read` ``(stale_ok=True)`` may go there. None or empty: no replicas,
            and nothing replica-related runs.
        replica_max_lag: seconds of staleness beyond which a replica is skipped.
        replica_wait: seconds a stale-ok read after this object's own write may wait for a
            replica to replay it (0: the primary answers at once).
        replica_retry_after: seconds a failed replica is left alone before it is probed again.
        replica_connect_timeout: seconds a connection to a replica may take.
        **engine_options: passed to :func:`lionagi_qe.db.engine.create_engine` (e.g.
            ``statement_timeout``, ``pool_timeout``, ``pool_recycle``, ``echo``); replica
            engines get the same options.

    The engine is created here without I/O, so there is exactly one pool however many tasks
    make their first call at once; :meth:`connect` is optional (it warms and checks the pool).
    """

    def __init__(
        self,
        database_url: str,
        min_connections: int = 2,
        max_connections: int = 10,
        *,
        replicas: Sequence[str] | None = None,
        replica_max_lag: float = 5.0,
        replica_wait: float = 0.0,
        replica_retry_after: float = 5.0,
        replica_connect_timeout: float = 2.0,
        **engine_options: Any,
    ) -> None:
        if min_connections < 0 or max_connections < 1 or min_connections > max_connections:
            raise InvalidArgumentError("need 0 <= min_connections <= max_connections, 1 <= max")
        replica_options = {
            "max_lag": replica_max_lag,
            "wait": replica_wait,
            "retry_after": replica_retry_after,
            "connect_timeout": replica_connect_timeout,
        }
        check_replica_options(**replica_options)
        if isinstance(replicas, str):
            raise InvalidArgumentError("replicas must be a list of URLs, not one string")
        self.database_url = normalize_url(database_url)
        self.min_connections = min_connections
        self.max_connections = max_connections
        engine_options.setdefault("pool_size", max_connections)
        self._engine: AsyncEngine | None = create_engine(self.database_url, **engine_options)
        self._session_factory = async_sessionmaker(self._engine, expire_on_commit=False)
        #: The read router; None when no replicas are configured.
        self.replicas: ReplicaRouter | None = None
        if replicas:
            self.replicas = ReplicaRouter(
                self._engine, list(replicas), **replica_options, **engine_options
            )

    @property
    def engine(self) -> AsyncEngine:
        """The engine; ClosedError after :meth:`close`."""
        if self._engine is None:
            raise ClosedError(f"this {type(self).__name__} is closed")
        return self._engine

    @property
    def dialect(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self.engine.dialect.name

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """Factory of sessions bound to this engine (``expire_on_commit=False``)."""
        self.engine  # noqa: B018 - raises ClosedError once closed
        return self._session_factory

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        Pool, network and driver errors (checkout, commit) come out translated; the caller's own
        exceptions pass through unchanged.
        """
        async with self.session_factory() as session:
            async with _translated():
                await session.begin()
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            async with _translated():
                await session.commit()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection inside one transaction (errors translated as in :meth:`session`)."""
        engine = self.engine
        async with _translated():
            conn = await engine.connect()
        try:
            async with _translated():
                await conn.begin()
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            async with _translated():
                await conn.commit()
        finally:
            await conn.close()

    async def read(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, stale_ok: bool = False
    ) -> T:
        """Run the read ``work(connection)`` on an autocommit connection and return its result.

        ``stale_ok=True`` lets a replica answer (when one is configured, up, no staler than
        ``replica_max_lag`` and past this object's own last write); if the replica fails, the
        read runs again on the primary, so the caller never sees a replica's error. Otherwise
        the primary answers. ``work`` must only read: it may run twice.

        The Q-learning store uses this for reads whose caller accepts staleness (e.g. a
        Q-value read that does not refresh expiries). Build ``work``'s queries with
        ``select()``: on the primary, any other statement (``text()`` included) counts as a
        possible write, which keeps the next stale-ok reads on the primary a little longer.
        Writes made anywhere through :attr:`engine` count for read-your-writes automatically.
        """
        engine = self.engine
        router = self.replicas
        if stale_ok and router is not None:
            replica = await router.choose()
            if replica is not None:
                try:
                    async with (
                        _translated(),
                        replica.engine.execution_options(
                            isolation_level="AUTOCOMMIT"
                        ).connect() as conn,
                    ):
                        result = await work(conn)
                except PersistenceError as exc:
                    router.failed(replica, exc)
                else:
                    router.served(replica)
                    return result
        async with (
            _translated(),
            engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn,
        ):
            return await work(conn)

    async def connect(self) -> None:
        """Open ``min_connections`` connections now and check that the server answers."""
        engine = self.engine
        warm = max(self.min_connections, 1)

        async def touch() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            await asyncio.gather(*(touch() for _ in range(warm)))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise translate(exc) from exc
        logger.debug("connected to %s", mask_url(str(self.database_url)))

    async def disconnect(self) -> None:
        """Close every pooled connection; the manager cannot be used afterwards."""
        engine, self._engine = self._engine, None
        router, self.replicas = self.replicas, None
        if router is not None:
            await router.close()
        if engine is not None:
            await engine.dispose()

    close = disconnect

    async def __aenter__(self) -> Self:
        """Connect on entering ``async with``."""
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect on leaving ``async with``."""
        await self.disconnect()

    def __repr__(self) -> str:
        url = self.database_url.render_as_string(hide_password=True)
        replicas = ""
        if self.replicas is not None:
            labels = ", ".join(replica.label for replica in self.replicas.replicas)
            replicas = f" replicas=[{labels}]"
        return f"<{type(self).__name__} {url}{replicas} max_connections={self.max_connections}>"
