"""PostgresMemory beyond the shared contract: construction, schema, pool, plans, errors.

The backend-parametrized contract suite covers the memory API itself; these tests cover what is
particular to the SQL backend: what it can be built from and who owns the engine, the missing
schema, one initialisation under concurrent first calls, index plans, server-side timestamps,
timeouts, cancellation and what error text may contain.
"""

from __future__ import annotations

import asyncio
import random
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pg_activity import app_args, app_name, backends, settled_backends
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from lionagi_qe import DatabaseManager, open_memory
from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.config import Settings
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.db.translate import translate
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    PersistenceError,
    SchemaMissingError,
    VersionConflictError,
)
from lionagi_qe.models import MemoryEntry, Partition
from lionagi_qe.repositories.memory import statements
from lionagi_qe.testing.servers import FoundServer, create_database, drop_database

pytestmark = [pytest.mark.integration]
postgres = pytest.mark.postgres

SCHEMA_HINT = "lionagi-qe db upgrade"
UNREACHABLE_PASSWORD = "hunter2-do-not-print"
UNREACHABLE_URL = f"postgresql+asyncpg://postgres:{UNREACHABLE_PASSWORD}@127.0.0.1:1/x"


# --- helpers ----------------------------------------------------------------------------------


async def _committed_value(engine: AsyncEngine, key: str) -> Any:
    """The stored JSON of ``key`` as a separate connection sees it (None: no row)."""
    async with engine.connect() as conn:
        return await conn.scalar(select(MemoryEntry.value).where(MemoryEntry.key == key))


@contextmanager
def _captured_sql(engine: AsyncEngine) -> Iterator[list[tuple[str, Any, int]]]:
    """Record (statement, parameters, rowcount) of everything ``engine`` executes."""
    seen: list[tuple[str, Any, int]] = []

    def after(_conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters, getattr(cursor, "rowcount", -1)))

    event.listen(engine.sync_engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", after)


@pytest.fixture
def empty_postgres_url(aqe_postgres_server: FoundServer) -> Iterator[str]:
    """A PostgreSQL database with no tables at all."""
    name = f"aqe_empty_{uuid.uuid4().hex[:12]}"
    url = create_database(aqe_postgres_server.url, name)
    try:
        yield url
    finally:
        drop_database(aqe_postgres_server.url, name)


@asynccontextmanager
async def _closing(memory: PostgresMemory) -> AsyncIterator[PostgresMemory]:
    try:
        yield memory
    finally:
        await memory.close()


async def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


# --- what a PostgresMemory is built from ------------------------------------------------------


@postgres
async def test_from_url_owns_its_engine_and_disposes_it_on_close(
    aqe_database_url: str, postgres_memory: PostgresMemory, aqe_engine: AsyncEngine
) -> None:
    app = app_name()
    memory = PostgresMemory(aqe_database_url, **app_args(app))
    assert memory.engine is not None

    assert await memory.store("aqe/own/url", {"from": "url"}) == 1
    assert await postgres_memory.retrieve("aqe/own/url") == {"from": "url"}
    assert await backends(aqe_engine, app) >= 1

    await memory.close()

    assert await settled_backends(aqe_engine, app, 0) == 0, "close() must dispose the pool"
    with pytest.raises(ClosedError):
        await memory.retrieve("aqe/own/url")
    await memory.close()  # closing twice is harmless


@postgres
async def test_from_database_manager_borrows_its_engine(
    aqe_database_url: str, postgres_memory: PostgresMemory
) -> None:
    manager = DatabaseManager(aqe_database_url, min_connections=1, max_connections=3)
    try:
        memory = PostgresMemory(manager)
        assert memory.engine is manager.engine

        assert await memory.store("aqe/own/manager", [1, 2]) == 1
        assert await postgres_memory.retrieve("aqe/own/manager") == [1, 2]
        assert manager.engine.pool.checkedout() == memory.held_connections

        await memory.close()

        # The manager's pool was not disposed: its idle connection is still there.
        assert manager.engine.pool.checkedin() >= 1
        async with manager.connection() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        await manager.close()


@postgres
async def test_from_async_engine_borrows_it(
    aqe_engine: AsyncEngine, postgres_memory: PostgresMemory
) -> None:
    memory = PostgresMemory(aqe_engine)
    assert memory.engine is aqe_engine

    await memory.store("aqe/own/engine", "value")
    assert await postgres_memory.retrieve("aqe/own/engine") == "value"
    idle = aqe_engine.pool.checkedin() + memory.held_connections
    assert idle >= 1

    await memory.close()

    assert memory.held_connections == 0
    assert aqe_engine.pool.checkedin() == idle, "a borrowed engine must not be disposed"
    assert await postgres_memory.retrieve("aqe/own/engine") == "value"


@postgres
async def test_from_sessionmaker_commits_every_call(
    aqe_engine: AsyncEngine, postgres_memory: PostgresMemory
) -> None:
    memory = PostgresMemory(async_sessionmaker(aqe_engine, expire_on_commit=False))

    assert await memory.store("aqe/own/factory", {"n": 1}, partition="factory-part") == 1
    # Another memory on the engine (its own connection) sees the committed value at once.
    assert await postgres_memory.retrieve("aqe/own/factory") == {"n": 1}
    assert await _committed_value(aqe_engine, "aqe/own/factory") == {"n": 1}

    assert await memory.store_many({"aqe/own/f1": 1, "aqe/own/f2": 2}) == 2
    assert await postgres_memory.retrieve_many(["aqe/own/f1", "aqe/own/f2"]) == {
        "aqe/own/f1": 1,
        "aqe/own/f2": 2,
    }
    with pytest.raises(VersionConflictError):
        await memory.store("aqe/own/factory", {"n": 2}, expected_version=7)
    assert await postgres_memory.retrieve("aqe/own/factory") == {"n": 1}

    assert await memory.delete("aqe/own/factory")
    assert await postgres_memory.retrieve("aqe/own/factory") is None
    await memory.close()


@pytest.fixture
async def rolled_back_keys(aqe_engine: AsyncEngine) -> AsyncIterator[list[str]]:
    """Keys that must not exist once the test's ``aqe_session`` has been rolled back.

    Request it *before* ``aqe_session``: fixtures are torn down in reverse order, so this check
    runs after the session's outer transaction was rolled back.
    """
    keys: list[str] = []
    yield keys
    async with aqe_engine.connect() as conn:
        found = await conn.scalars(select(MemoryEntry.key).where(MemoryEntry.key.in_(keys)))
        leftovers = list(found)
    assert leftovers == [], f"rows outlived the rolled-back session: {leftovers}"


@postgres
async def test_from_session_joins_the_callers_transaction(
    rolled_back_keys: list[str], aqe_session: AsyncSession, aqe_engine: AsyncEngine
) -> None:
    memory = PostgresMemory(aqe_session)
    assert memory.engine is None
    key = f"aqe/own/session/{uuid.uuid4().hex}"
    rolled_back_keys.append(key)

    assert await memory.store(key, {"in": "session"}, partition="session-part") == 1
    assert await memory.store(key, {"in": "session", "v": 2}, partition="session-part") == 2

    # Visible inside the caller's transaction, through the memory and through the session.
    assert await memory.retrieve(key) == {"in": "session", "v": 2}
    in_session = await aqe_session.scalar(select(MemoryEntry.value).where(MemoryEntry.key == key))
    assert in_session == {"in": "session", "v": 2}

    # Never committed: a separate connection sees neither the entry nor its partition.
    await aqe_session.commit()  # the kit turns this into a savepoint release
    assert await _committed_value(aqe_engine, key) is None
    async with aqe_engine.connect() as conn:
        partition = await conn.scalar(
            select(Partition.name).where(Partition.name == "session-part")
        )
    assert partition is None
    assert await memory.retrieve(key) == {"in": "session", "v": 2}


# --- schema -----------------------------------------------------------------------------------


@postgres
async def test_database_without_schema_raises_schema_missing_and_creates_nothing(
    empty_postgres_url: str,
) -> None:
    async with _closing(PostgresMemory(empty_postgres_url)) as memory:
        with pytest.raises(SchemaMissingError) as stored:
            await memory.store("aqe/x", 1)
        assert SCHEMA_HINT in str(stored.value)
        with pytest.raises(SchemaMissingError) as read:
            await memory.retrieve("aqe/x")
        assert SCHEMA_HINT in str(read.value)

    assert await _tables(empty_postgres_url) == set()


@postgres
async def test_postgres_auto_migrate_true_upgrades_an_empty_database(
    empty_postgres_url: str,
) -> None:
    async with _closing(PostgresMemory(empty_postgres_url, auto_migrate=True)) as memory:
        assert await memory.store("aqe/auto", {"ok": True}) == 1
        assert await memory.retrieve("aqe/auto") == {"ok": True}
        assert memory.engine is not None
        assert await migrate.current(memory.engine) == migrate.head()


async def test_sqlite_empty_file_migrates_itself_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"
    async with _closing(PostgresMemory(url)) as memory:
        assert await memory.store("aqe/embedded", {"ok": True}) == 1
        assert await memory.retrieve("aqe/embedded") == {"ok": True}
        assert memory.engine is not None
        assert await migrate.current(memory.engine) == migrate.head()

    # A second memory on the same file finds the schema and the value.
    async with _closing(PostgresMemory(url)) as again:
        assert await again.retrieve("aqe/embedded") == {"ok": True}


async def test_sqlite_auto_migrate_false_raises_schema_missing(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}"
    async with _closing(PostgresMemory(url, auto_migrate=False)) as memory:
        with pytest.raises(SchemaMissingError) as excinfo:
            await memory.store("aqe/x", 1)
        assert SCHEMA_HINT in str(excinfo.value)

    assert await _tables(url) == set()


# --- one pool, one initialisation -------------------------------------------------------------


def _schema_probes(seen: list[tuple[str, Any, int]]) -> int:
    # The schema check is the inspector's has_table, which reads pg_catalog.pg_class.
    return sum("pg_class" in statement for statement, _, _ in seen)


@postgres
async def test_concurrent_first_calls_initialise_once_on_one_pool(
    aqe_database_url: str, aqe_engine: AsyncEngine, postgres_memory: PostgresMemory
) -> None:
    # Baseline: how many schema-probe statements one first call costs.
    async with _closing(PostgresMemory(aqe_database_url, pool_size=5)) as single:
        assert single.engine is not None
        with _captured_sql(single.engine) as seen:
            await single.retrieve("aqe/first/none")
        per_initialisation = _schema_probes(seen)
    assert per_initialisation >= 1

    app = app_name()
    async with _closing(PostgresMemory(aqe_database_url, pool_size=5, **app_args(app))) as memory:
        engine = memory.engine
        assert engine is not None
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await backends(aqe_engine, app))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        try:
            with _captured_sql(engine) as seen:
                versions = await asyncio.gather(
                    *(memory.store(f"aqe/first/{i:02d}", {"i": i}) for i in range(20))
                )
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        assert versions == [1] * 20
        assert _schema_probes(seen) == per_initialisation, "the schema check ran more than once"
        assert memory.engine is engine
        assert engine.pool.size() == 5
        assert engine.pool.checkedout() == memory.held_connections
        assert peak <= 5
        assert await backends(aqe_engine, app) <= 5
        stored = await postgres_memory.retrieve_many([f"aqe/first/{i:02d}" for i in range(20)])
        assert stored == {f"aqe/first/{i:02d}": {"i": i} for i in range(20)}


# --- index plans ------------------------------------------------------------------------------


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    assert isinstance(value, int)
    return str(value)


def _uses_primary_key_index(plan: str) -> bool:
    return (
        "Index Scan using pk_qe_memory" in plan or "Index Only Scan using pk_qe_memory" in plan
    ) and "Seq Scan" not in plan


@postgres
async def test_search_and_list_keys_plans_use_the_key_index(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine
) -> None:
    await postgres_memory.store_many({f"aqe/plan/item-{i:04d}": {"i": i} for i in range(2000)})
    async with aqe_engine.begin() as conn:
        await conn.execute(text("ANALYZE qe_memory"))

    with _captured_sql(aqe_engine) as seen:
        found = await postgres_memory.search("aqe/plan/item-012?")
        limited = await postgres_memory.search("aqe/plan/item-01*", limit=3)
        keys = await postgres_memory.list_keys("aqe/plan/item-012")
    assert list(found) == [f"aqe/plan/item-{i:04d}" for i in range(120, 130)]
    assert list(limited) == ["aqe/plan/item-0100", "aqe/plan/item-0101", "aqe/plan/item-0102"]
    assert keys == list(found)
    assert len(seen) == 3

    # They are the repository's own statements, compiled for asyncpg.
    sql = statements("postgresql")
    expected = [
        sql.search[True, "regex", False],
        sql.search[True, "regex", True],
        sql.list_keys[True],
    ]
    for (statement, _, _), built in zip(seen, expected, strict=True):
        assert statement == str(built.compile(dialect=aqe_engine.dialect))

    async with aqe_engine.connect() as conn:
        # A custom plan, for the actual values.
        for statement, parameters, _ in seen:
            plan = "\n".join(
                (await conn.exec_driver_sql("EXPLAIN " + statement, tuple(parameters))).scalars()
            )
            assert _uses_primary_key_index(plan), plan

        # A generic plan (what a prepared statement settles on after five runs): the explicit
        # range bounds keep it on the index although the values are unknown when planning.
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute("SET plan_cache_mode = force_generic_plan")
        try:
            for number, (statement, parameters, _) in enumerate(seen):
                name = f"aqe_plan_{number}"
                await driver.execute(f"PREPARE {name} AS {statement}")
                try:
                    values = ", ".join(_sql_literal(value) for value in parameters)
                    rows = await driver.fetch(f"EXPLAIN EXECUTE {name}({values})")
                finally:
                    await driver.execute(f"DEALLOCATE {name}")
                plan = "\n".join(row[0] for row in rows)
                assert "$1" in plan, f"not a generic plan:\n{plan}"
                assert _uses_primary_key_index(plan), plan
        finally:
            await driver.execute("RESET plan_cache_mode")


# --- timestamps from the server clock ---------------------------------------------------------


@postgres
async def test_created_at_stays_and_updated_at_advances_by_the_server_clock(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine
) -> None:
    async def server_clock() -> Any:
        async with aqe_engine.connect() as conn:
            return await conn.scalar(text("SELECT statement_timestamp()"))

    before = await server_clock()
    await postgres_memory.store("aqe/clock", 1)
    first = await postgres_memory.get_entry("aqe/clock")
    between = await server_clock()
    await postgres_memory.store("aqe/clock", 2)
    second = await postgres_memory.get_entry("aqe/clock")
    after = await server_clock()

    assert first is not None and second is not None
    assert before <= first.created_at <= between
    assert first.updated_at == first.created_at
    assert second.created_at == first.created_at
    assert between <= second.updated_at <= after
    assert second.updated_at > first.updated_at
    assert (first.version, second.version) == (1, 2)


# --- failures: unreachable, timeouts, cancellation, error text --------------------------------


def _leaks(exc: BaseException, secret: str) -> list[str]:
    """Where ``secret`` shows up: the message, the repr, or the whole chained traceback."""
    places = {
        "str": str(exc),
        "repr": repr(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    return [name for name, rendered in places.items() if secret in rendered]


async def test_unreachable_server_raises_backend_unavailable_without_the_password() -> None:
    async with _closing(PostgresMemory(UNREACHABLE_URL)) as memory:
        assert UNREACHABLE_PASSWORD not in repr(memory.engine.url if memory.engine else "")
        calls = [
            lambda: memory.store("aqe/x", {"v": 1}),
            lambda: memory.retrieve("aqe/x"),
            lambda: memory.list_keys(),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailableError) as excinfo:
                # A guard against hanging, not a timing assertion.
                await asyncio.wait_for(call(), timeout=30)
            assert _leaks(excinfo.value, UNREACHABLE_PASSWORD) == []


@postgres
async def test_statement_timeout_reaches_the_server_and_is_translated(
    aqe_database_url: str, aqe_engine: AsyncEngine, postgres_memory: PostgresMemory
) -> None:
    async with _closing(PostgresMemory(aqe_database_url, statement_timeout=0.05)) as memory:
        engine = memory.engine
        assert engine is not None
        await memory.store("aqe/slow", "before")
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "50ms"

        # Through the memory: a write that waits on a row lock longer than the timeout.
        async with aqe_engine.connect() as holder:
            await holder.execute(text("SELECT 1 FROM qe_memory WHERE key = 'aqe/slow' FOR UPDATE"))
            with pytest.raises(BackendUnavailableError) as excinfo:
                await asyncio.wait_for(memory.store("aqe/slow", "during"), timeout=30)
            assert "57014" in str(excinfo.value)
            await holder.rollback()
        assert await memory.retrieve("aqe/slow") == "before"

        # Through the engine: a slow statement, translated.
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as raw:
                await conn.execute(text("SELECT pg_sleep(1)"))
        assert isinstance(translate(raw.value), BackendUnavailableError)

        assert await memory.store("aqe/slow", "after") == 2
        assert await postgres_memory.retrieve("aqe/slow") == "after"


@postgres
async def test_open_memory_passes_settings_to_the_engine(aqe_database_url: str) -> None:
    settings = Settings(statement_timeout=0.25, pool_size=3, _env_file=None)  # type: ignore[call-arg]
    memory = open_memory(aqe_database_url, settings=settings)
    assert isinstance(memory, PostgresMemory)
    async with _closing(memory):
        assert memory.engine is not None
        assert memory.engine.pool.size() == 3
        async with memory.engine.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "250ms"


@postgres
async def test_cancelled_calls_leak_no_connection(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine
) -> None:
    rng = random.Random(20240611)
    await postgres_memory.store("aqe/cancel/warm", 0)

    async def churn(i: int) -> None:
        for round_ in range(50):
            await postgres_memory.store(f"aqe/cancel/{i:02d}", {"round": round_})
            await postgres_memory.retrieve(f"aqe/cancel/{i:02d}")
            await postgres_memory.store_many({f"aqe/cancel/{i:02d}/a": round_})

    tasks = [asyncio.create_task(churn(i)) for i in range(50)]

    async def cancel_later(task: asyncio.Task[None]) -> None:
        await asyncio.sleep(rng.uniform(0, 0.08))
        task.cancel()

    await asyncio.gather(*(cancel_later(task) for task in tasks))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) or o is None for o in outcomes), outcomes
    assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)

    def leaked() -> int:
        return aqe_engine.pool.checkedout() - postgres_memory.held_connections

    for _ in range(100):  # let cancelled checkouts finish returning to the pool
        if leaked() == 0:
            break
        await asyncio.sleep(0.05)
    assert leaked() == 0

    async with aqe_engine.connect() as conn:
        stuck = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            )
        )
    assert stuck == 0, "a cancelled call left a transaction open on the server"

    # The memory still works and answers correctly.
    for i in range(50):
        assert await postgres_memory.store(f"aqe/cancel/{i:02d}", {"final": i}) >= 1
    results = await asyncio.gather(
        *(postgres_memory.retrieve(f"aqe/cancel/{i:02d}") for i in range(50))
    )
    assert results == [{"final": i} for i in range(50)]
    assert leaked() == 0


SECRET = "s3cr3t-token-0b7e"


@postgres
async def test_failed_write_error_text_has_no_parameters(aqe_session: AsyncSession) -> None:
    """A statement the server refuses: the error names the failure, never the bound values."""
    # DDL is transactional in PostgreSQL: the trigger disappears with the session's rollback.
    await aqe_session.execute(
        text(
            "CREATE FUNCTION aqe_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test trigger'; END $$"
        )
    )
    await aqe_session.execute(
        text(
            "CREATE TRIGGER aqe_test_refuse BEFORE INSERT OR UPDATE ON qe_memory "
            "FOR EACH ROW EXECUTE FUNCTION aqe_test_refuse()"
        )
    )
    memory = PostgresMemory(aqe_session)
    key = f"aqe/leak/{uuid.uuid4().hex}"

    with pytest.raises(PersistenceError) as excinfo:
        await memory.store(key, {"api_key": SECRET}, partition=f"p-{SECRET}")

    assert "refused by the test trigger" in str(excinfo.value)
    assert _leaks(excinfo.value, SECRET) == []


@postgres
async def test_aborted_transaction_error_text_has_no_parameters(aqe_session: AsyncSession) -> None:
    with pytest.raises(DBAPIError):
        await aqe_session.execute(text("SELECT 1 / 0"))
    memory = PostgresMemory(aqe_session)
    key = f"aqe/leak/{uuid.uuid4().hex}"

    with pytest.raises(PersistenceError) as excinfo:
        await memory.store(key, {"password": SECRET}, partition=f"p-{SECRET}")

    assert not isinstance(excinfo.value, DBAPIError)
    assert isinstance(excinfo.value.__cause__, DBAPIError)
    assert _leaks(excinfo.value, SECRET) == []


# --- cleanup in batches -----------------------------------------------------------------------


@postgres
async def test_cleanup_expired_deletes_in_bounded_batches_beside_a_writer(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine
) -> None:
    memory = PostgresMemory(aqe_engine, cleanup_batch_size=100)
    expiring = {f"aqe/sweep/{i:05d}": {"i": i} for i in range(1050)}
    assert await memory.store_many(expiring, ttl=0.05) == 1050
    await memory.store("aqe/sweep-keep/forever", "kept")
    await asyncio.sleep(0.2)
    assert (await memory.get_stats())["total_expired"] >= 1050

    async def writer() -> list[int]:
        versions = []
        for i in range(100):
            versions.append(await memory.store(f"aqe/writer/{i:03d}", i))
            await asyncio.sleep(0)
        return versions

    with _captured_sql(aqe_engine) as seen:
        removed, versions = await asyncio.gather(memory.cleanup_expired(), writer())

    assert removed == 1050
    assert versions == [1] * 100
    batches = [rows for sql, _, rows in seen if sql.lstrip().upper().startswith("DELETE")]
    assert len(batches) >= 11, f"expected batches of at most 100, saw {batches}"
    assert all(rows <= 100 for rows in batches), batches
    assert sum(rows for rows in batches) == 1050

    stats = await memory.get_stats()
    assert stats["total_expired"] == 0
    assert await memory.retrieve("aqe/sweep-keep/forever") == "kept"
    writes = await memory.retrieve_many([f"aqe/writer/{i:03d}" for i in range(100)])
    assert writes == {f"aqe/writer/{i:03d}": i for i in range(100)}
    assert await memory.cleanup_expired() == 0
    await memory.close()


# --- partitions are rows of their own --------------------------------------------------------


@postgres
async def test_partitions_are_rows_in_the_partitions_table(
    rolled_back_keys: list[str], aqe_session: AsyncSession
) -> None:
    memory = PostgresMemory(aqe_session)
    key = f"aqe/label/{uuid.uuid4().hex}"
    rolled_back_keys.append(key)
    await memory.store(key, 1, partition="labelled")

    count = await aqe_session.scalar(
        select(func.count()).select_from(Partition).where(Partition.name == "labelled")
    )
    assert count == 1
    assert await memory.clear_partition("labelled") == 1
    assert await memory.retrieve(key) is None


@pytest.mark.parametrize("batch", [False, True], ids=["store", "store_many"])
async def test_partition_row_deleted_behind_our_back_is_recreated(
    postgres_memory: PostgresMemory, aqe_engine: AsyncEngine, batch: bool
) -> None:
    """The known-partition cache skips a round trip; a vanished label must still work."""
    await postgres_memory.store("aqe/test/label/1", 1, partition="volatile")
    await postgres_memory.clear_partition("volatile")
    async with aqe_engine.begin() as conn:
        await conn.execute(text("DELETE FROM partitions WHERE name = 'volatile'"))
    if batch:
        assert await postgres_memory.store_many({"aqe/test/label/2": 2}, partition="volatile") == 1
    else:
        assert await postgres_memory.store("aqe/test/label/2", 2, partition="volatile") == 1
    assert (await postgres_memory.get_stats())["partitions"] == {"volatile": 1}
