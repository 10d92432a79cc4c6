"""DatabaseManager: URL handling, pool bounds, lifecycle, units of work (SPEC §5, §11, §12)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pg_activity import app_args, app_name, backends, settled_backends
from sqlalchemy import make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from lionagi_qe import DatabaseManager
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidArgumentError,
    PersistenceError,
)
from lionagi_qe.models import Partition

pytestmark = [pytest.mark.integration]
postgres = pytest.mark.postgres


def _plain(url: str) -> str:
    """The URL as the original API took it: ``postgresql://`` with no driver."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _partition_exists(engine: AsyncEngine, name: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.scalar(select(Partition.name).where(Partition.name == name))
    return found is not None


async def _drop_partition(engine: AsyncEngine, name: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM partitions WHERE name = :name"), {"name": name})


# --- URLs and repr ----------------------------------------------------------------------------


@postgres
async def test_plain_postgresql_url_implies_asyncpg(aqe_database_url: str) -> None:
    plain = _plain(aqe_database_url)
    assert plain.startswith("postgresql://")

    manager = DatabaseManager(plain)
    try:
        assert manager.engine.dialect.name == "postgresql"
        assert manager.engine.dialect.driver == "asyncpg"
        assert manager.dialect == "postgresql"
        await manager.connect()
        async with manager.connection() as conn:
            database = await conn.scalar(text("SELECT current_database()"))
        assert database == make_url(aqe_database_url).database
    finally:
        await manager.close()


def test_repr_and_str_hide_the_password() -> None:
    manager = DatabaseManager("postgresql://user:secret@host/db")
    for rendered in (repr(manager), str(manager), repr(manager.database_url)):
        assert "secret" not in rendered
        assert "user" in rendered and "host" in rendered
    assert "secret" not in repr(manager.engine.url)


@pytest.mark.parametrize(
    ("min_connections", "max_connections"),
    [(-1, 10), (0, 0), (5, 2), (3, -1)],
    ids=["negative-min", "zero-max", "min-above-max", "negative-max"],
)
def test_bad_pool_bounds_are_refused(min_connections: int, max_connections: int) -> None:
    with pytest.raises(InvalidArgumentError):
        DatabaseManager("postgresql://user@host/db", min_connections, max_connections)


# --- pool -------------------------------------------------------------------------------------


@postgres
async def test_connect_opens_min_connections_ahead_of_use(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    app = app_name()
    manager = DatabaseManager(
        _plain(aqe_database_url), min_connections=3, max_connections=5, **app_args(app)
    )
    try:
        assert manager.engine.pool.checkedin() == 0
        assert await backends(aqe_engine, app) == 0

        await manager.connect()

        assert manager.engine.pool.checkedin() >= 3
        assert manager.engine.pool.checkedout() == 0
        assert await backends(aqe_engine, app) >= 3
    finally:
        await manager.close()


@postgres
async def test_max_connections_bounds_the_pool(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    app = app_name()
    manager = DatabaseManager(
        aqe_database_url, min_connections=1, max_connections=4, **app_args(app)
    )
    peak = 0
    in_flight = 0
    peak_in_flight = 0

    async def sleeper() -> None:
        nonlocal in_flight, peak_in_flight
        async with manager.connection() as conn:
            in_flight += 1
            peak_in_flight = max(peak_in_flight, in_flight)
            try:
                await conn.execute(text("SELECT pg_sleep(0.05)"))
            finally:
                in_flight -= 1

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, await backends(aqe_engine, app))
            await asyncio.sleep(0.005)

    try:
        await manager.connect()
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(sleeper() for _ in range(30)))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        assert peak <= 4, f"{peak} server connections for max_connections=4"
        assert peak_in_flight == 4, "the pool should be used up to its bound"
        assert manager.engine.pool.checkedout() == 0
    finally:
        await manager.close()


# --- lifecycle --------------------------------------------------------------------------------


@postgres
@pytest.mark.parametrize("closer", ["disconnect", "close"])
async def test_after_disconnect_the_manager_is_closed(
    closer: str, aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    app = app_name()
    manager = DatabaseManager(aqe_database_url, min_connections=2, **app_args(app))
    await manager.connect()
    assert await backends(aqe_engine, app) >= 2

    await getattr(manager, closer)()

    assert await settled_backends(aqe_engine, app, 0) == 0, "pooled connections stay open"
    with pytest.raises(ClosedError):
        _ = manager.engine
    with pytest.raises(ClosedError):
        _ = manager.session_factory
    with pytest.raises(ClosedError):
        async with manager.session():
            pass
    with pytest.raises(ClosedError):
        async with manager.connection():
            pass
    with pytest.raises(ClosedError):
        await manager.connect()
    await manager.close()  # closing twice is harmless


@postgres
async def test_async_with_connects_and_disconnects(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    app = app_name()
    async with DatabaseManager(
        aqe_database_url, min_connections=2, max_connections=3, **app_args(app)
    ) as manager:
        assert manager.engine.pool.checkedin() >= 2
        async with manager.connection() as conn:
            assert await conn.scalar(text("SELECT 41 + 1")) == 42

    with pytest.raises(ClosedError):
        _ = manager.engine
    assert await settled_backends(aqe_engine, app, 0) == 0


async def test_connect_to_an_unreachable_server_is_translated() -> None:
    manager = DatabaseManager("postgresql://postgres:pw-not-shown@127.0.0.1:1/x")
    try:
        with pytest.raises(BackendUnavailableError) as excinfo:
            await asyncio.wait_for(manager.connect(), timeout=30)  # a hang guard only
        assert "pw-not-shown" not in str(excinfo.value)
        assert "pw-not-shown" not in repr(excinfo.value)
    finally:
        await manager.close()


# --- units of work ----------------------------------------------------------------------------


@postgres
async def test_session_commits_on_success(aqe_database_url: str, aqe_engine: AsyncEngine) -> None:
    name = f"dbm-{uuid.uuid4().hex[:12]}"
    manager = DatabaseManager(aqe_database_url, min_connections=1, max_connections=2)
    try:
        async with manager.session() as session:
            session.add(Partition(name=name, description="committed"))
            await session.flush()
            assert not await _partition_exists(aqe_engine, name), "visible before the commit"

        assert await _partition_exists(aqe_engine, name)
    finally:
        await manager.close()
        await _drop_partition(aqe_engine, name)


class _Boom(Exception):
    pass


@postgres
async def test_session_rolls_back_on_exception(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    name = f"dbm-{uuid.uuid4().hex[:12]}"
    manager = DatabaseManager(aqe_database_url, min_connections=1, max_connections=2)
    try:
        with pytest.raises(_Boom):
            async with manager.session() as session:
                session.add(Partition(name=name, description="rolled back"))
                await session.flush()
                raise _Boom

        assert not await _partition_exists(aqe_engine, name)
        # The manager is still usable after a failed unit of work.
        async with manager.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await manager.close()
        await _drop_partition(aqe_engine, name)


@postgres
async def test_connection_commits_on_success_and_rolls_back_on_exception(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    kept, dropped = f"dbm-{uuid.uuid4().hex[:12]}", f"dbm-{uuid.uuid4().hex[:12]}"
    insert = text("INSERT INTO partitions (name) VALUES (:name)")
    manager = DatabaseManager(aqe_database_url, min_connections=1, max_connections=2)
    try:
        async with manager.connection() as conn:
            await conn.execute(insert, {"name": kept})
        with pytest.raises(_Boom):
            async with manager.connection() as conn:
                await conn.execute(insert, {"name": dropped})
                raise _Boom

        assert await _partition_exists(aqe_engine, kept)
        assert not await _partition_exists(aqe_engine, dropped)
    finally:
        await manager.close()
        await _drop_partition(aqe_engine, kept)


@postgres
async def test_pool_exhaustion_in_a_unit_of_work_is_translated(aqe_database_url: str) -> None:
    manager = DatabaseManager(
        aqe_database_url, min_connections=0, max_connections=1, pool_timeout=0.1
    )
    try:
        async with manager.connection():
            with pytest.raises(PersistenceError) as excinfo:
                async with manager.connection():
                    pass
        assert isinstance(excinfo.value, BackendUnavailableError)
    finally:
        await manager.close()
