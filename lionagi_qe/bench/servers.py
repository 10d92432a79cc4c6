"""Throwaway places to benchmark in: a PostgreSQL database, an SQLite file, a Redis key prefix.

Each is created for one run and removed when the run ends, also when it is interrupted
(Ctrl-C cancels the run's task; the ``finally`` blocks here still run). Redis is shared with
other work, so only the run's own prefix is ever deleted (``SCAN`` + ``UNLINK``, never
``FLUSHDB``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aredis
from sqlalchemy import URL

from lionagi_qe.db.engine import normalize_url

__all__ = ["asyncpg_kwargs", "delete_prefix", "postgres_database", "run_id", "sqlite_database"]


def run_id() -> str:
    """A short random id naming the run's database and prefixes."""
    return uuid.uuid4().hex[:8]


def asyncpg_kwargs(url: URL, database: str | None = None) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for ``url`` (another ``database`` if given)."""
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database,
    }


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _admin(url: URL, sql: str) -> None:
    conn = await asyncpg.connect(**asyncpg_kwargs(url, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def postgres_database(server_url: str, run: str) -> AsyncIterator[URL]:
    """A new database ``aqe_bench_<run>`` on the server of ``server_url``; dropped on exit.

    The URL's own database is never touched: it only says which server (and credentials) to
    use, and the ``postgres`` maintenance database creates and drops the run's one.
    """
    base = normalize_url(server_url)
    if base.get_backend_name() != "postgresql":
        raise ValueError("--database-url must be a PostgreSQL URL for the postgres benchmarks")
    name = f"aqe_bench_{run}"
    await _admin(base, f"CREATE DATABASE {_quoted(name)}")
    try:
        yield base.set(database=name)
    finally:
        # Shielded: an interrupted run still drops its database before the loop goes away.
        await asyncio.shield(_admin(base, f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)"))


@contextlib.asynccontextmanager
async def sqlite_database(run: str) -> AsyncIterator[Path]:
    """An SQLite file in a temporary directory of the run's own; the directory goes on exit."""
    directory = Path(tempfile.mkdtemp(prefix=f"aqe-bench-{run}-"))
    try:
        yield directory / "bench.db"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def delete_prefix(client: aredis.Redis, prefix: str, batch_size: int = 1000) -> int:
    """Delete every Redis key under ``prefix`` (SCAN + UNLINK in batches); how many."""
    batch: list[bytes] = []
    deleted = 0
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= batch_size:
            deleted += int(await client.unlink(*batch))
            batch.clear()
    if batch:
        deleted += int(await client.unlink(*batch))
    return deleted
