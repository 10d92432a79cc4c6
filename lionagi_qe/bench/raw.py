"""The raw-driver twins of the memory operations: what a hand-written client would do.

Each twin does the same work the library must do (JSON encode/decode, entry sizes) with the
same statements, so a ratio measures the cost of the library, not of JSON:

- :class:`RawPostgres`: asyncpg running the repository's own statements, compiled by
  SQLAlchemy's asyncpg dialect (the same SQL text the library sends).
- :class:`RawSqlite`: one aiosqlite connection (the same pragmas as the library's engine)
  running the same statements compiled for SQLite.
- :class:`RawRedis`: redis.asyncio ``SET``/``GET``/``MSET``/``MGET``/``INCRBY`` of the same JSON,
  with a sorted set of its own for ordered ranges (``ZRANGEBYLEX`` + ``MGET``).
- :class:`RawCached`: hand-written cache-aside: ``GET``, on a miss the raw PostgreSQL read and a
  ``SET``; writes go to PostgreSQL, then ``DEL`` the cached copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aiosqlite
import redis.asyncio as aredis
from sqlalchemy.dialects import postgresql, sqlite

from lionagi_qe.bench.harness import CompiledStatement, dumps, prefix_upper
from lionagi_qe.repositories import memory as memory_sql

__all__ = ["RawCached", "RawMemory", "RawPostgres", "RawRedis", "RawSqlite"]

PARTITION = "default"
ASYNCPG_DIALECT = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
SQLITE_DIALECT = sqlite.aiosqlite.dialect()


def entry_size(key: str, value_json: str) -> int:
    """Bytes of key plus JSON, as the library records them."""
    return len(key.encode()) + len(value_json.encode())


class RawMemory:
    """The operations a twin implements (keys are the library's keys)."""

    #: What the twin does, for the report.
    twin = "raw"

    async def store(self, key: str, value: Any) -> None:
        """Upsert one entry."""
        raise NotImplementedError

    async def retrieve(self, key: str) -> Any:
        """The decoded value, or None."""
        raise NotImplementedError

    async def store_many(self, items: Mapping[str, Any]) -> int:
        """Upsert a batch in one round trip."""
        raise NotImplementedError

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The decoded values of the keys present."""
        raise NotImplementedError

    async def search(self, prefix: str) -> dict[str, Any]:
        """Entries under ``prefix`` in key order (the twin of ``search(prefix + "*")``)."""
        raise NotImplementedError

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` in key order."""
        raise NotImplementedError

    async def increment(self, key: str, delta: int) -> int:
        """Add ``delta`` to a counter atomically; the new value."""
        raise NotImplementedError

    async def seed(self, items: Mapping[str, Any]) -> None:
        """Make ``items`` readable by this twin (no-op where it reads the library's rows)."""


class RawPostgres(RawMemory):
    """asyncpg (a connection, or a pool for concurrent sections) running the same SQL."""

    twin = "asyncpg, same SQL"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        sql = memory_sql.statements("postgresql")
        self.upsert = CompiledStatement.of(sql.upsert[False, False], ASYNCPG_DIALECT)
        self.upsert_many = CompiledStatement.of(memory_sql._PG_STORE_MANY, ASYNCPG_DIALECT)
        self.get_value = CompiledStatement.of(sql.get_value, ASYNCPG_DIALECT)
        self.get_many = CompiledStatement.of(sql.retrieve_many, ASYNCPG_DIALECT)
        self.range_regex = CompiledStatement.of(sql.search[True, "regex", False], ASYNCPG_DIALECT)
        self.range_keys = CompiledStatement.of(sql.list_keys[True], ASYNCPG_DIALECT)
        self.counter = CompiledStatement.of(sql.increment[True], ASYNCPG_DIALECT)

    async def store(self, key: str, value: Any) -> None:
        value_json = dumps(value)
        args = self.upsert.args(
            b_key=key,
            b_value=value_json,
            b_partition=PARTITION,
            b_metadata="{}",
            b_size_bytes=entry_size(key, value_json),
        )
        await self.conn.fetchval(self.upsert.sql, *args)

    async def retrieve(self, key: str) -> Any:
        text = await self.conn.fetchval(self.get_value.sql, *self.get_value.args(b_key=key))
        return None if text is None else json.loads(text)

    async def store_many(self, items: Mapping[str, Any]) -> int:
        keys = list(items)
        values = [dumps(v) for v in items.values()]
        sizes = [entry_size(k, v) for k, v in zip(keys, values, strict=True)]
        args = self.upsert_many.args(
            keys=keys, values=values, sizes=sizes, partition=PARTITION, ttl=None
        )
        await self.conn.execute(self.upsert_many.sql, *args)
        return len(keys)

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, Any]:
        rows = await self.conn.fetch(self.get_many.sql, *self.get_many.args(keys=list(keys)))
        return {row[0]: json.loads(row[1]) for row in rows}

    async def search(self, prefix: str) -> dict[str, Any]:
        regex = "^" + re.escape(prefix) + ".*$"
        args = self.range_regex.args(lower=prefix, upper=prefix_upper(prefix), match=regex)
        rows = await self.conn.fetch(self.range_regex.sql, *args)
        return {row[0]: json.loads(row[1]) for row in rows}

    async def list_keys(self, prefix: str) -> list[str]:
        args = self.range_keys.args(lower=prefix, upper=prefix_upper(prefix))
        return [row[0] for row in await self.conn.fetch(self.range_keys.sql, *args)]

    async def increment(self, key: str, delta: int) -> int:
        initial = dumps(delta)
        args = self.counter.args(
            key=key, initial=initial, size_bytes=entry_size(key, initial), delta=delta
        )
        row = await self.conn.fetchrow(self.counter.sql, *args)
        return int(json.loads(row[0]))


class RawSqlite(RawMemory):
    """One aiosqlite connection in autocommit, the library's pragmas and statements."""

    twin = "aiosqlite, same SQL"

    PRAGMAS = (
        "PRAGMA journal_mode=WAL",
        "PRAGMA busy_timeout=5000",
        "PRAGMA foreign_keys=ON",
        "PRAGMA synchronous=NORMAL",
        "PRAGMA case_sensitive_like=ON",
    )

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        sql = memory_sql.statements("sqlite")
        self.upsert = CompiledStatement.of(sql.upsert[False, False], SQLITE_DIALECT)
        self.upsert_many = CompiledStatement.of(sql.upsert_many[False], SQLITE_DIALECT)
        self.get_value = CompiledStatement.of(sql.get_value, SQLITE_DIALECT)
        self.range_glob = CompiledStatement.of(sql.search[True, "glob", False], SQLITE_DIALECT)
        self.range_keys = CompiledStatement.of(sql.list_keys[True], SQLITE_DIALECT)
        self.counter = CompiledStatement.of(sql.increment[True], SQLITE_DIALECT)
        live = self.get_value.sql.split(" AND ", 1)[1]  # the expiry test of every read
        self.get_many_sql = "SELECT key, CAST(value AS TEXT) FROM qe_memory WHERE key IN ({}) AND "
        self.get_many_sql += live

    @classmethod
    async def connect(cls, path: str) -> RawSqlite:
        """Open ``path`` as the library's engine would."""
        conn = await aiosqlite.connect(path, isolation_level=None)
        for pragma in cls.PRAGMAS:
            await conn.execute(pragma)
        return cls(conn)

    def _upsert_args(self, statement: CompiledStatement, key: str, value: Any) -> list[Any]:
        value_json = dumps(value)
        return statement.args(
            b_key=key,
            b_value=value_json,
            b_partition=PARTITION,
            b_metadata="{}",
            b_size_bytes=entry_size(key, value_json),
        )

    async def store(self, key: str, value: Any) -> None:
        async with self.conn.execute(self.upsert.sql, self._upsert_args(self.upsert, key, value)):
            pass

    async def retrieve(self, key: str) -> Any:
        async with self.conn.execute(self.get_value.sql, self.get_value.args(b_key=key)) as cur:
            row = await cur.fetchone()
        return None if row is None else json.loads(row[0])

    async def store_many(self, items: Mapping[str, Any]) -> int:
        rows = [self._upsert_args(self.upsert_many, k, v) for k, v in items.items()]
        await self.conn.execute("BEGIN")
        try:
            await self.conn.executemany(self.upsert_many.sql, rows)
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")
        return len(rows)

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, Any]:
        sql = self.get_many_sql.format(",".join("?" * len(keys)))
        async with self.conn.execute(sql, list(keys)) as cur:
            rows = await cur.fetchall()
        return {row[0]: json.loads(row[1]) for row in rows}

    async def search(self, prefix: str) -> dict[str, Any]:
        args = self.range_glob.args(lower=prefix, upper=prefix_upper(prefix), match=prefix + "*")
        async with self.conn.execute(self.range_glob.sql, args) as cur:
            rows = await cur.fetchall()
        return {row[0]: json.loads(row[1]) for row in rows}

    async def list_keys(self, prefix: str) -> list[str]:
        args = self.range_keys.args(lower=prefix, upper=prefix_upper(prefix))
        async with self.conn.execute(self.range_keys.sql, args) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def increment(self, key: str, delta: int) -> int:
        initial = dumps(delta)
        args = self.counter.args(
            key=key, initial=initial, size_bytes=entry_size(key, initial), delta=delta
        )
        async with self.conn.execute(self.counter.sql, args) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(json.loads(row[0]))

    async def close(self) -> None:
        """Close the connection."""
        await self.conn.close()


class RawRedis(RawMemory):
    """redis.asyncio under a prefix of its own; a sorted set indexes keys for ranges."""

    twin = "redis.asyncio SET/GET/MSET/MGET/INCRBY"

    def __init__(self, client: aredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.index = prefix + "idx"

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def store(self, key: str, value: Any) -> None:
        await self.client.set(self._key(key), dumps(value))

    async def retrieve(self, key: str) -> Any:
        text = await self.client.get(self._key(key))
        return None if text is None else json.loads(text)

    async def store_many(self, items: Mapping[str, Any]) -> int:
        await self.client.mset({self._key(k): dumps(v) for k, v in items.items()})
        return len(items)

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, Any]:
        texts = await self.client.mget([self._key(k) for k in keys])
        return {k: json.loads(t) for k, t in zip(keys, texts, strict=True) if t is not None}

    async def list_keys(self, prefix: str) -> list[str]:
        members = cast(
            "list[bytes]",
            await self.client.zrangebylex(self.index, "[" + prefix, "(" + prefix_upper(prefix)),
        )
        return [member.decode() for member in members]

    async def search(self, prefix: str) -> dict[str, Any]:
        keys = await self.list_keys(prefix)
        return await self.retrieve_many(keys) if keys else {}

    async def increment(self, key: str, delta: int) -> int:
        return int(await self.client.incrby(self._key(key), delta))

    async def seed(self, items: Mapping[str, Any]) -> None:
        await self.store_many(items)
        await self.client.zadd(self.index, dict.fromkeys(items, 0))


class RawCached(RawMemory):
    """Hand-written cache-aside over :class:`RawPostgres` and a Redis client."""

    twin = "GET, else asyncpg + SET; writes: asyncpg + DEL"

    def __init__(self, database: RawPostgres, client: aredis.Redis, prefix: str) -> None:
        self.database = database
        self.client = client
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def store(self, key: str, value: Any) -> None:
        await self.database.store(key, value)
        await self.client.delete(self._key(key))

    async def retrieve(self, key: str) -> Any:
        text = await self.client.get(self._key(key))
        if text is not None:
            return json.loads(text)
        value = await self.database.retrieve(key)
        if value is not None:
            await self.client.set(self._key(key), dumps(value), ex=300)
        return value

    async def store_many(self, items: Mapping[str, Any]) -> int:
        count = await self.database.store_many(items)
        await self.client.unlink(*(self._key(k) for k in items))
        return count

    async def retrieve_many(self, keys: Sequence[str]) -> dict[str, Any]:
        texts = await self.client.mget([self._key(k) for k in keys])
        found = {k: json.loads(t) for k, t in zip(keys, texts, strict=True) if t is not None}
        missing = [k for k in keys if k not in found]
        if missing:
            filled = await self.database.retrieve_many(missing)
            if filled:
                async with self.client.pipeline(transaction=False) as pipe:
                    for k, v in filled.items():
                        pipe.set(self._key(k), dumps(v), ex=300)
                    await pipe.execute()
            found.update(filled)
        return found

    async def search(self, prefix: str) -> dict[str, Any]:
        return await self.database.search(prefix)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self.database.list_keys(prefix)

    async def increment(self, key: str, delta: int) -> int:
        value = await self.database.increment(key, delta)
        await self.client.delete(self._key(key))
        return value
