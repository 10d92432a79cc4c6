"""The lionagi_qe pytest plugin: real servers, a migrated database, rollback sessions, memories.

Enable it in a project's ``conftest.py`` with ``pytest_plugins = ["lionagi_qe.testing.plugin"]``
(or ``-p lionagi_qe.testing.plugin``); it needs the ``test`` extra. Fixtures:

- ``aqe_postgres_server`` / ``aqe_redis_server`` (session): found or started servers
  (see :mod:`lionagi_qe.testing.servers`); if none can be had the run stops with one message.
- ``aqe_database_url`` (session): a PostgreSQL database of this worker's own, migrated to head,
  dropped at the end. Under pytest-xdist every worker gets its own.
- ``aqe_engine`` (session): an :class:`AsyncEngine` on it.
- ``aqe_session``: an :class:`AsyncSession` inside an outer transaction that is rolled back after
  the test; ``join_transaction_mode="create_savepoint"`` keeps code that commits inside it.
- ``postgres_memory`` / ``sqlite_memory``: memories that start empty and are emptied afterwards.
- ``aqe_redis_url`` (session), ``redis_memory`` and ``cached_memory``: Redis-backed memories under
  a key prefix of the test's own, deleted afterwards.
- ``aqe_sqlite_url``: a migrated SQLite file of the test's own.
- ``concurrency``: :func:`~lionagi_qe.testing.helpers.run_concurrently`;
  ``performance_tracker``: a fresh :class:`~lionagi_qe.testing.helpers.PerformanceTracker`.

Session-scoped async fixtures run on the session event loop; set
``asyncio_default_fixture_loop_scope = "session"`` (pytest-asyncio) in projects using them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.testing.helpers import PerformanceTracker, run_concurrently, run_sync
from lionagi_qe.testing.servers import (
    FoundServer,
    ServerUnavailableError,
    create_database,
    drop_database,
    find_postgres,
    find_redis,
)

MARKERS = {
    "integration": "touches a real PostgreSQL, SQLite file or Redis server",
    "postgres": "needs PostgreSQL",
    "redis": "needs Redis",
    "slow": "takes more than a few seconds",
    "e2e": "agent scenarios and the command line, end to end",
}

#: Tables a memory fixture empties after each test (partitions keep their seeded default).
_MEMORY_CLEANUP = (
    "DELETE FROM qe_memory",
    "DELETE FROM partitions WHERE name <> 'default'",
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers, so ``--strict-markers`` accepts them in any project."""
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def _worker_id(config: pytest.Config) -> str:
    worker = getattr(config, "workerinput", {}).get("workerid")
    return str(worker) if worker else "main"


def _found(find: Any) -> FoundServer:
    try:
        server: FoundServer = find()
    except ServerUnavailableError as exc:
        pytest.exit(str(exc), returncode=3)
    return server


@pytest.fixture(scope="session")
def aqe_postgres_server() -> FoundServer:
    """A reachable PostgreSQL server (admin URL)."""
    return _found(find_postgres)


@pytest.fixture(scope="session")
def aqe_redis_server() -> FoundServer:
    """A reachable Redis server."""
    return _found(find_redis)


@pytest.fixture(scope="session")
def aqe_database_url(
    aqe_postgres_server: FoundServer, pytestconfig: pytest.Config
) -> Iterator[str]:
    """URL of a migrated PostgreSQL database that belongs to this test worker."""
    name = f"aqe_test_{_worker_id(pytestconfig)}_{uuid.uuid4().hex[:8]}"
    url = create_database(aqe_postgres_server.url, name)

    async def upgrade() -> None:
        engine = create_engine(url, poolclass=NullPool)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    try:
        run_sync(upgrade)
        yield url
    finally:
        drop_database(aqe_postgres_server.url, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def aqe_engine(aqe_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the worker's migrated database."""
    engine = create_engine(aqe_database_url, pool_size=5, max_overflow=5)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def aqe_session(aqe_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose every change (commits included) is rolled back after the test."""
    async with aqe_engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield session
        finally:
            await session.close()
            if outer.is_active:
                await outer.rollback()


async def _empty_memory_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        for statement in _MEMORY_CLEANUP:
            await connection.execute(text(statement))


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_memory(aqe_engine: AsyncEngine) -> AsyncIterator[PostgresMemory]:
    """A PostgresMemory on the worker's database, empty before and after the test."""
    await _empty_memory_tables(aqe_engine)
    memory = PostgresMemory(aqe_engine)
    try:
        yield memory
    finally:
        await memory.close()
        await _empty_memory_tables(aqe_engine)


@pytest.fixture(scope="session")
def _aqe_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per worker; tests get copies (migrating each time is slow)."""
    path = tmp_path_factory.mktemp("aqe-sqlite") / "template.db"

    async def upgrade() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)
        try:
            await migrate.upgrade(engine)
            async with engine.connect() as connection:
                # Fold the WAL into the main file so a plain copy carries everything.
                await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await engine.dispose()

    run_sync(upgrade)
    return path


@pytest.fixture
def aqe_sqlite_url(_aqe_sqlite_template: Path, tmp_path: Path) -> str:
    """URL of a migrated SQLite file of this test's own."""
    path = tmp_path / "aqe-memory.db"
    shutil.copyfile(_aqe_sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest_asyncio.fixture(loop_scope="session")
async def sqlite_memory(aqe_sqlite_url: str) -> AsyncIterator[PostgresMemory]:
    """A PostgresMemory on a fresh, migrated SQLite file (the embedded default's engine)."""
    memory = PostgresMemory(aqe_sqlite_url)
    try:
        yield memory
    finally:
        await memory.close()


@pytest.fixture(scope="session")
def aqe_redis_url(aqe_redis_server: FoundServer) -> str:
    """URL of the test Redis server."""
    return aqe_redis_server.url


def _redis_prefix() -> str:
    # Every key a Redis-backed memory writes starts with its prefix: one per test isolates tests
    # (and xdist workers) sharing one server, and lets the fixture delete exactly its own keys.
    return f"aqe-test:{uuid.uuid4().hex[:12]}:"


async def _delete_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def redis_memory(aqe_redis_url: str) -> AsyncIterator[Any]:
    """A RedisMemory under a key prefix of this test's own; its keys are deleted afterwards."""
    from lionagi_qe.backends.redis import RedisMemory

    prefix = _redis_prefix()
    memory = RedisMemory(url=aqe_redis_url, prefix=prefix)
    try:
        yield memory
    finally:
        await memory.close()
        await _delete_redis_prefix(aqe_redis_url, prefix)


@pytest_asyncio.fixture(loop_scope="session")
async def cached_memory(aqe_engine: AsyncEngine, aqe_redis_url: str) -> AsyncIterator[Any]:
    """A CachedMemory: the worker's PostgreSQL database behind a Redis cache of its own prefix."""
    from lionagi_qe.cache import CachedMemory

    await _empty_memory_tables(aqe_engine)
    prefix = _redis_prefix()
    memory = CachedMemory(PostgresMemory(aqe_engine), redis_url=aqe_redis_url, prefix=prefix)
    try:
        yield memory
    finally:
        await memory.close()
        await _delete_redis_prefix(aqe_redis_url, prefix)
        await _empty_memory_tables(aqe_engine)


@pytest.fixture
def concurrency() -> Any:
    """The bounded-concurrency runner (``await concurrency(ops, limit=10)``)."""
    return run_concurrently


@pytest.fixture
def performance_tracker() -> PerformanceTracker:
    """A fresh performance tracker whose figures can be read during the test."""
    return PerformanceTracker()


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where test servers come from."""
    explicit = [
        name for name in ("AQE_TEST_DATABASE_URL", "AQE_TEST_REDIS_URL") if os.environ.get(name)
    ]
    if explicit:
        return "lionagi_qe: servers from " + ", ".join(explicit)
    return "lionagi_qe: servers from compose ports, local defaults, or throwaway binaries"
