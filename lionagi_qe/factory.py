"""``open_memory``: one call from URLs (or Settings) to a ready backend."""

from __future__ import annotations

from collections.abc import Sequence

from lionagi_qe.backends.protocol import MemoryBackend
from lionagi_qe.backends.redis import RedisMemory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.cache import CachedMemory
from lionagi_qe.config import Settings
from lionagi_qe.errors import InvalidArgumentError

__all__ = ["open_memory"]


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def open_memory(
    database_url: str | None = None,
    redis_url: str | None = None,
    *,
    settings: Settings | None = None,
    replicas: Sequence[str] | None = None,
) -> MemoryBackend:
    """Build the backend the URLs ask for; with none, the one ``Settings`` describes.

    - a PostgreSQL or SQLite URL → :class:`PostgresMemory`;
    - a ``redis://`` URL alone → ``RedisMemory``;
    - a database URL plus ``redis_url`` → ``CachedMemory`` (Redis in front of the database).

    Explicit arguments win over ``Settings``: ``open_memory(db_url)`` builds exactly that
    backend even when ``AQE_REDIS_URL`` is set. Nothing connects here: the backend connects on
    first use, once.

    ``replicas`` (PostgreSQL streaming replicas of the database) default to
    ``Settings.database_replicas`` only when the database URL is the one ``Settings`` names:
    replicas of one database must never serve reads of another.
    """
    config = settings or Settings()
    if database_url is None and redis_url is None:
        database_url, redis_url = config.database_url, config.redis_url
    if replicas is None and database_url == config.database_url:
        replicas = config.database_replicas
    if database_url is None:
        raise InvalidArgumentError("give a database URL (a Redis URL alone goes first)")
    if _is_redis(database_url):
        if replicas:
            raise InvalidArgumentError("read replicas are for a PostgreSQL database URL")
        if redis_url is not None:
            raise InvalidArgumentError("two Redis URLs: put the database URL first")
        # The cache's 0.25 s socket timeout is not used here: as a store, Redis may run a
        # large store_many for longer than that.
        return RedisMemory(
            url=database_url,
            namespace=config.namespace,
            max_value_bytes=config.max_value_bytes,
            max_connections=config.pool_size,
            pool_timeout=config.pool_timeout,
            socket_connect_timeout=config.redis_socket_connect_timeout,
            cluster=config.redis_cluster,
        )
    sql = PostgresMemory(
        database_url,
        replicas=list(replicas) if replicas else None,
        replica_max_lag=config.replica_max_lag,
        replica_wait=config.replica_wait,
        replica_retry_after=config.replica_retry_after,
        replica_connect_timeout=config.replica_connect_timeout,
        namespace=config.namespace,
        max_value_bytes=config.max_value_bytes,
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
        pool_timeout=config.pool_timeout,
        pool_recycle=config.pool_recycle,
        statement_timeout=config.statement_timeout,
        lock_timeout=config.lock_timeout,
    )
    if redis_url is not None:
        return CachedMemory(
            sql,
            redis_url=redis_url,
            cache_ttl=config.cache_ttl,
            socket_timeout=config.redis_socket_timeout,
            socket_connect_timeout=config.redis_socket_connect_timeout,
            cluster=config.redis_cluster,
        )
    return sql
