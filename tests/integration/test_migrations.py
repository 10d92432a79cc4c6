"""The Alembic schema on fresh PostgreSQL and SQLite databases (SPEC §5, §7).

Every test gets an empty database of its own: a uniquely named PostgreSQL database (dropped
afterwards) or a new SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Executable, func, insert, inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.models import AgentState, AgentType, Base, Partition
from lionagi_qe.testing.servers import FoundServer, create_database, drop_database

pytestmark = [pytest.mark.integration]

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_TABLES = frozenset(Base.metadata.tables)
DIALECTS = [
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("sqlite", id="sqlite"),
]
POSTGRES_ONLY = [pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


def _new_postgres_database(server: FoundServer) -> tuple[str, str]:
    name = f"aqe_mig_{uuid.uuid4().hex[:12]}"
    return name, create_database(server.url, name)


@pytest.fixture(params=DIALECTS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database (no tables at all): PostgreSQL or an SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    server: FoundServer = request.getfixturevalue("aqe_postgres_server")
    name, url = _new_postgres_database(server)
    try:
        yield url
    finally:
        drop_database(server.url, name)


@pytest.fixture
async def fresh_engine(fresh_url: str) -> AsyncIterator[AsyncEngine]:
    """A NullPool engine on the empty database (no connection outlives a test step)."""
    engine = create_engine(fresh_url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def migrated_engine(fresh_engine: AsyncEngine) -> AsyncEngine:
    """The empty database upgraded to head."""
    await migrate.upgrade(fresh_engine)
    return fresh_engine


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _scalars(engine: AsyncEngine, statement: Executable) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(statement)).scalars())


# --- upgrade, check, seed data ----------------------------------------------------------------


async def test_fresh_database_has_no_revision_and_no_tables(fresh_engine: AsyncEngine) -> None:
    assert await migrate.current(fresh_engine) is None
    assert not await migrate.has_schema(fresh_engine)
    assert await _table_names(fresh_engine) == set()


async def test_upgrade_reaches_head_and_creates_every_model_table(
    fresh_engine: AsyncEngine,
) -> None:
    await migrate.upgrade(fresh_engine)

    assert migrate.head() is not None
    assert await migrate.current(fresh_engine) == migrate.head()
    assert await migrate.has_schema(fresh_engine)
    assert await _table_names(fresh_engine) >= OUR_TABLES
    assert {"qe_memory", "partitions", "agent_types", "q_values", "agent_states"} <= OUR_TABLES


async def test_models_and_migrations_do_not_drift(migrated_engine: AsyncEngine) -> None:
    assert await migrate.check(migrated_engine) == []


async def test_check_reports_drift_when_the_database_differs(migrated_engine: AsyncEngine) -> None:
    """``check`` really compares: a dropped index shows up as drift."""
    async with migrated_engine.begin() as conn:
        await conn.execute(text("DROP INDEX ix_qe_memory_partition"))

    drift = await migrate.check(migrated_engine)

    assert drift, "an index missing from the database must be reported"
    assert "ix_qe_memory_partition" in repr(drift)


async def test_all_eighteen_agent_types_are_seeded(migrated_engine: AsyncEngine) -> None:
    names = set(await _scalars(migrated_engine, select(AgentType.agent_type)))

    assert len(names) == 18
    assert {
        "test-generator",
        "test-executor",
        "coverage-analyzer",
        "fleet-commander",
        "flaky-test-hunter",
        "chaos-engineer",
    } <= names
    descriptions = await _scalars(migrated_engine, select(AgentType.description))
    assert all(descriptions), "every seeded agent type has a description"


async def test_default_partition_exists(migrated_engine: AsyncEngine) -> None:
    assert await _scalars(migrated_engine, select(Partition.name)) == ["default"]


# --- downgrade and upgrade again --------------------------------------------------------------


async def test_downgrade_to_base_removes_every_table_and_upgrade_works_again(
    migrated_engine: AsyncEngine,
) -> None:
    await migrate.downgrade(migrated_engine, "base")

    assert await migrate.current(migrated_engine) is None
    assert not (await _table_names(migrated_engine)) & OUR_TABLES
    if migrated_engine.dialect.name == "postgresql":
        leftovers = await _scalars(
            migrated_engine,
            text(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "AND relname <> 'alembic_version' AND relname NOT LIKE 'alembic_version%'"
            ),
        )
        assert leftovers == [], "indexes, sequences or tables survived the downgrade"

    await migrate.upgrade(migrated_engine)

    assert await migrate.current(migrated_engine) == migrate.head()
    assert await migrate.check(migrated_engine) == []
    count = select(func.count()).select_from(AgentType)
    assert await _scalars(migrated_engine, count) == [18]
    assert await _scalars(migrated_engine, select(Partition.name)) == ["default"]


async def test_downgrade_one_step_then_upgrade(migrated_engine: AsyncEngine) -> None:
    """Revisions are reversible one at a time: trajectories go back to one plain table with
    their rows and ids, the dedupe index goes back to its first form, dropping the queue keeps
    learning and memory, dropping the learning tables keeps memory."""
    postgres = migrated_engine.dialect.name == "postgresql"
    await _store_steps(migrated_engine, 3)
    await migrate.downgrade(migrated_engine, "-1")
    assert await migrate.current(migrated_engine) == "0004"
    if postgres:
        assert not await _is_partitioned(migrated_engine, "trajectories")
    assert await _step_ids(migrated_engine) == [1, 2, 3]
    await _store_steps(migrated_engine, 1)  # the identity goes on where it was
    assert await _step_ids(migrated_engine) == [1, 2, 3, 4]
    await migrate.upgrade(migrated_engine)
    if postgres:
        assert await _is_partitioned(migrated_engine, "trajectories")
    await _store_steps(migrated_engine, 1)
    assert await _step_ids(migrated_engine) == [1, 2, 3, 4, 5]
    assert await migrate.check(migrated_engine) == []

    await migrate.downgrade(migrated_engine, "-2")
    assert await migrate.current(migrated_engine) == "0003"
    assert await _dedupe_predicate(migrated_engine) == "live"
    await migrate.upgrade(migrated_engine)
    assert await _dedupe_predicate(migrated_engine) == "live with a key"
    await migrate.downgrade(migrated_engine, "-3")
    tables = await _table_names(migrated_engine)
    assert {"qe_memory", "partitions", "agent_types"} <= tables
    assert "queue_jobs" not in tables

    await migrate.downgrade(migrated_engine, "-1")
    tables = await _table_names(migrated_engine)
    assert {"qe_memory", "partitions"} <= tables
    assert "agent_types" not in tables
    assert await migrate.current(migrated_engine) not in (None, migrate.head())

    await migrate.upgrade(migrated_engine)
    assert await migrate.current(migrated_engine) == migrate.head()


async def _store_steps(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        for _ in range(n):
            await conn.execute(
                text(
                    "INSERT INTO trajectories (agent_type, state_hash, action_hash, reward) "
                    "VALUES ('chaos-engineer', 's', 'a', 1.0)"
                )
            )


async def _step_ids(engine: AsyncEngine) -> list[int]:
    return [int(i) for i in await _scalars(engine, text("SELECT id FROM trajectories ORDER BY id"))]


async def _is_partitioned(engine: AsyncEngine, table: str) -> bool:
    found = await _scalars(
        engine,
        text(
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"
        ).bindparams(t=table),
    )
    return found == [1]


async def _dedupe_predicate(engine: AsyncEngine) -> str:
    """Which predicate the queue's dedupe index has (0003: live jobs; 0004: live with a key)."""
    if engine.dialect.name == "postgresql":
        sql = "SELECT pg_get_indexdef('ix_queue_jobs_queue_dedupe_key'::regclass)"
    else:
        sql = "SELECT sql FROM sqlite_master WHERE name = 'ix_queue_jobs_queue_dedupe_key'"
    async with engine.connect() as conn:
        definition = str(await conn.scalar(text(sql)))
    return "live with a key" if "dedupe_key IS NOT NULL" in definition else "live"


# --- PostgreSQL specifics: names, collation ---------------------------------------------------


@pytest.mark.parametrize("fresh_url", POSTGRES_ONLY, indirect=True)
async def test_every_constraint_and_index_follows_the_naming_convention(
    migrated_engine: AsyncEngine,
) -> None:
    prefixes = {"p": "pk", "f": "fk", "u": "uq", "c": "ck"}
    async with migrated_engine.connect() as conn:
        constraints = (
            await conn.execute(
                text(
                    "SELECT conname, contype, conrelid::regclass::text FROM pg_constraint "
                    "WHERE connamespace = 'public'::regnamespace AND contype IN ('p','f','u','c') "
                    # Not the per-partition clones PostgreSQL derives (and names) itself, e.g.
                    # of the rewards -> trajectories foreign key once per partition.
                    "AND conparentid = 0"
                )
            )
        ).all()
        indexes = (
            await conn.execute(
                text(
                    "SELECT i.indexname, i.tablename, c.conname IS NOT NULL "
                    "FROM pg_indexes i LEFT JOIN pg_constraint c "
                    "ON c.conname = i.indexname AND c.connamespace = 'public'::regnamespace "
                    "WHERE i.schemaname = 'public'"
                )
            )
        ).all()

    # contype is PostgreSQL's one-byte "char": asyncpg hands it back as bytes.
    ours = [
        (name, kind.decode() if isinstance(kind, bytes) else kind, table)
        for name, kind, table in constraints
        if table in OUR_TABLES
    ]
    assert {table for _, _, table in ours} == OUR_TABLES
    badly_named = [
        (name, kind, table)
        for name, kind, table in ours
        if not name.startswith(f"{prefixes[kind]}_{table}")
    ]
    assert badly_named == []

    our_indexes = [(name, table, backs) for name, table, backs in indexes if table in OUR_TABLES]
    plain = [name for name, table, backs in our_indexes if not backs]
    assert plain, "the schema declares plain indexes"
    assert [n for n, t, b in our_indexes if not b and not n.startswith(f"ix_{t}")] == []
    assert [n for n, t, b in our_indexes if b and not n.startswith(("pk_", "uq_"))] == []

    names = {name for name, _, _ in ours} | {name for name, _, _ in our_indexes}
    assert {
        "pk_qe_memory",
        "pk_partitions",
        "fk_qe_memory_partition_partitions",
        "uq_q_values_agent_type_state_hash_action_hash",
        "ix_qe_memory_expires_at",
        "ix_qe_memory_partition",
        "ck_sessions_status",
    } <= names


@pytest.mark.parametrize("fresh_url", POSTGRES_ONLY, indirect=True)
async def test_memory_key_column_uses_the_c_collation(migrated_engine: AsyncEngine) -> None:
    collation = await _scalars(
        migrated_engine,
        text(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'qe_memory' AND column_name = 'key'"
        ),
    )
    assert collation == ["C"]

    # The collation is what orders keys: code-point order puts 'B' (0x42) before 'a' (0x61).
    async with migrated_engine.begin() as conn:
        for key in ("aqe/a", "aqe/B", "aqe/_", "aqe/~"):
            await conn.execute(
                text("INSERT INTO qe_memory (key, value) VALUES (:key, '1')"), {"key": key}
            )
        ordered = (await conn.execute(text("SELECT key FROM qe_memory ORDER BY key"))).scalars()
        assert list(ordered) == ["aqe/B", "aqe/_", "aqe/a", "aqe/~"]


# --- the generated success_rate column --------------------------------------------------------


async def test_agent_states_success_rate_is_generated(migrated_engine: AsyncEngine) -> None:
    states = AgentState.__table__
    rate = select(states.c.success_rate).where(states.c.agent_instance_id == "instance-1")
    async with migrated_engine.begin() as conn:
        await conn.execute(
            insert(states).values(
                agent_type="test-generator",
                agent_instance_id="instance-1",
                total_actions=4,
                successful_actions=3,
            )
        )
        await conn.execute(
            insert(states).values(agent_type="fleet-commander", agent_instance_id="instance-0")
        )
        assert (await conn.execute(rate)).scalar_one() == 0.75

        await conn.execute(
            update(states)
            .where(states.c.agent_instance_id == "instance-1")
            .values(total_actions=8, successful_actions=2)
        )
        assert (await conn.execute(rate)).scalar_one() == 0.25

        zero = select(states.c.success_rate).where(states.c.agent_instance_id == "instance-0")
        assert (await conn.execute(zero)).scalar_one() == 0.0


# --- the Alembic command line -----------------------------------------------------------------


async def _alembic(database_url: str, *args: str) -> tuple[int, str]:
    """Run ``python -m alembic ARGS`` from the repository root; (exit code, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        *args,
        cwd=REPO_ROOT,
        env={**os.environ, "AQE_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.slow
async def test_alembic_command_line_upgrade_check_downgrade(
    fresh_url: str, fresh_engine: AsyncEngine
) -> None:
    """``alembic upgrade head`` / ``check`` / ``downgrade base`` from the repo root, with the
    URL taken from ``AQE_DATABASE_URL``."""
    assert (REPO_ROOT / "alembic.ini").is_file()

    code, output = await _alembic(fresh_url, "upgrade", "head")
    assert code == 0, output
    assert await migrate.current(fresh_engine) == migrate.head()

    code, output = await _alembic(fresh_url, "check")
    assert code == 0, output
    assert "No new upgrade operations detected" in output

    code, output = await _alembic(fresh_url, "downgrade", "base")
    assert code == 0, output
    assert await migrate.current(fresh_engine) is None
    assert not (await _table_names(fresh_engine)) & OUR_TABLES

    # `check` is a real gate: a database behind head makes it exit non-zero.
    code, output = await _alembic(fresh_url, "check")
    assert code != 0, output

    code, output = await _alembic(fresh_url, "upgrade", "head")
    assert code == 0, output
    assert await migrate.current(fresh_engine) == migrate.head()
    assert await migrate.check(fresh_engine) == []


async def test_embedded_stores_set_up_at_once_each_get_their_schema(tmp_path: Path) -> None:
    # Alembic's running context is module-global: interleaved upgrades on one loop would
    # share it (KeyError 'config' or a half-migrated file) unless they take turns.
    from lionagi_qe.backends.sql import PostgresMemory

    memories = [PostgresMemory(f"sqlite+aiosqlite:///{tmp_path}/store-{i}.db") for i in range(4)]
    try:
        versions = await asyncio.gather(
            *(memory.store(f"aqe/setup/{i}", i) for i, memory in enumerate(memories))
        )
        assert versions == [1, 1, 1, 1]
        for i, memory in enumerate(memories):
            assert await memory.retrieve(f"aqe/setup/{i}") == i
            assert memory.engine is not None
            assert await migrate.current(memory.engine) == migrate.head()
    finally:
        await asyncio.gather(*(memory.close() for memory in memories))
