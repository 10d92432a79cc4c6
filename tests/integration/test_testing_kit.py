"""The testing kit tested: rollback session, factories, memories, helpers, discovery (SPEC §8)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from lionagi_qe.backends.sql import PostgresMemory
from lionagi_qe.db import migrate
from lionagi_qe.models import MemoryEntry, Partition, QValue, Trajectory
from lionagi_qe.testing import (
    MemoryEntryFactory,
    PerformanceTracker,
    QValueFactory,
    TrajectoryFactory,
    health_check,
    persist,
    run_concurrently,
)
from lionagi_qe.testing.servers import FoundServer, ServerUnavailableError, find_postgres

pytestmark = [pytest.mark.integration]
postgres = pytest.mark.postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:1/postgres"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


async def _committed_keys(engine: AsyncEngine, keys: list[str]) -> list[str]:
    """Which of ``keys`` a separate connection sees."""
    async with engine.connect() as conn:
        found = await conn.scalars(select(MemoryEntry.key).where(MemoryEntry.key.in_(keys)))
        return list(found)


@pytest.fixture
async def rolled_back_keys(aqe_engine: AsyncEngine) -> AsyncIterator[list[str]]:
    """Keys that must be gone once ``aqe_session`` has been torn down.

    Request it *before* ``aqe_session``: fixtures are torn down in reverse order, so this check
    runs after the session's outer transaction was rolled back (and is immune to pytest-xdist
    sending the next test to another worker).
    """
    keys: list[str] = []
    yield keys
    leftovers = await _committed_keys(aqe_engine, keys)
    assert leftovers == [], f"rows outlived the rolled-back session: {leftovers}"


# --- aqe_session ------------------------------------------------------------------------------


@postgres
async def test_aqe_session_rolls_back_even_what_the_code_commits(
    rolled_back_keys: list[str], aqe_session: AsyncSession, aqe_engine: AsyncEngine
) -> None:
    entry = MemoryEntryFactory(partition="kit-rollback")
    rolled_back_keys.append(entry.key)
    await persist(aqe_session, Partition(name="kit-rollback"))
    await persist(aqe_session, entry)
    await aqe_session.commit()  # code under test commits; the kit must still roll it back

    found = await aqe_session.scalar(select(MemoryEntry.key).where(MemoryEntry.key == entry.key))
    assert found == entry.key
    assert await _committed_keys(aqe_engine, [entry.key]) == []

    # A second unit of work in the same test, committed too, still stays private.
    second = MemoryEntryFactory()
    rolled_back_keys.append(second.key)
    aqe_session.add(second)
    await aqe_session.commit()
    assert await _committed_keys(aqe_engine, [entry.key, second.key]) == []


@postgres
async def test_aqe_session_survives_a_failed_statement(
    rolled_back_keys: list[str], aqe_session: AsyncSession
) -> None:
    """Rolling back the code's own transaction returns to the savepoint, not to nothing."""
    kept = MemoryEntryFactory()
    key = kept.key  # the rollback below expires the instance
    rolled_back_keys.append(key)
    await persist(aqe_session, kept)
    await aqe_session.commit()

    with pytest.raises(Exception, match="division by zero"):
        await aqe_session.execute(text("SELECT 1 / 0"))
    await aqe_session.rollback()

    count = select(func.count()).select_from(MemoryEntry).where(MemoryEntry.key == key)
    assert await aqe_session.scalar(count) == 1


# --- factories --------------------------------------------------------------------------------


@postgres
async def test_factories_build_without_touching_the_database(aqe_engine: AsyncEngine) -> None:
    entries = MemoryEntryFactory.build_batch(3)
    q_value = QValueFactory()
    trajectory = TrajectoryFactory()

    for instance in (*entries, q_value, trajectory):
        assert inspect(instance).transient, f"{instance!r} was attached to a session"
    assert len({entry.key for entry in entries}) == 3
    assert all(entry.key.startswith("aqe/") for entry in entries)
    assert q_value.id is None and trajectory.id is None
    assert await _committed_keys(aqe_engine, [entry.key for entry in entries]) == []
    async with aqe_engine.connect() as conn:
        stored = await conn.scalar(
            select(func.count()).select_from(QValue).where(QValue.state_hash == q_value.state_hash)
        )
    assert stored == 0


@postgres
async def test_persist_flushes_into_the_callers_session(
    rolled_back_keys: list[str], aqe_session: AsyncSession, aqe_engine: AsyncEngine
) -> None:
    entry = MemoryEntryFactory(key="aqe/kit/persisted", value={"score": 0.9})
    q_value = QValueFactory(agent_type="test-generator")
    trajectory = TrajectoryFactory(agent_type="fleet-commander")
    rolled_back_keys.append(entry.key)

    await persist(aqe_session, entry, q_value, trajectory)

    for instance in (entry, q_value, trajectory):
        assert inspect(instance).persistent
    assert q_value.id is not None and trajectory.id is not None, "flush assigns identities"
    assert aqe_session.in_transaction()

    # Visible inside the session, through plain SQL (not just the identity map) ...
    value = await aqe_session.scalar(
        text("SELECT value::text FROM qe_memory WHERE key = :key"), {"key": entry.key}
    )
    assert value == '{"score": 0.9}'
    assert await aqe_session.scalar(
        select(QValue.q_value).where(QValue.id == q_value.id)
    ) == pytest.approx(q_value.q_value)
    assert (
        await aqe_session.scalar(
            select(Trajectory.agent_type).where(Trajectory.id == trajectory.id)
        )
        == "fleet-commander"
    )
    # ... and nowhere else: persist flushes, it does not commit.
    assert await _committed_keys(aqe_engine, [entry.key]) == []


# --- memory fixtures --------------------------------------------------------------------------


@pytest.fixture
async def emptied_afterwards(aqe_engine: AsyncEngine) -> AsyncIterator[None]:
    """Checks, after ``postgres_memory`` is torn down, that it left the tables empty.

    Request it *before* ``postgres_memory``.
    """
    yield
    async with aqe_engine.connect() as conn:
        entries = await conn.scalar(select(func.count()).select_from(MemoryEntry))
        partitions = list(await conn.scalars(select(Partition.name)))
    assert entries == 0
    assert partitions == ["default"]


@postgres
async def test_postgres_memory_starts_empty_and_is_emptied_afterwards(
    emptied_afterwards: None, postgres_memory: PostgresMemory
) -> None:
    assert await postgres_memory.list_keys() == []
    assert (await postgres_memory.get_stats())["total_keys"] == 0

    await postgres_memory.store("aqe/kit/a", 1, partition="kit-part")
    await postgres_memory.store_many({"aqe/kit/b": 2, "aqe/kit/c": 3}, ttl=60)
    assert await postgres_memory.list_keys("aqe/kit/") == ["aqe/kit/a", "aqe/kit/b", "aqe/kit/c"]


async def test_sqlite_memory_is_a_migrated_file_of_its_own(
    sqlite_memory: PostgresMemory, aqe_sqlite_url: str, tmp_path: Path
) -> None:
    database = make_url(aqe_sqlite_url).database
    assert database is not None
    assert Path(database).parent == tmp_path, "every test gets its own file"
    assert sqlite_memory.engine is not None
    assert sqlite_memory.engine.dialect.name == "sqlite"
    assert await migrate.current(sqlite_memory.engine) == migrate.head()
    assert await sqlite_memory.list_keys() == []

    assert await sqlite_memory.store("aqe/kit/sqlite", {"ok": True}) == 1
    assert await sqlite_memory.retrieve("aqe/kit/sqlite") == {"ok": True}


@postgres
async def test_worker_database_is_migrated_and_named_for_the_worker(
    aqe_database_url: str, aqe_engine: AsyncEngine
) -> None:
    database = make_url(aqe_database_url).database
    assert database is not None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert database.startswith(f"aqe_test_{worker}_"), database
    assert await migrate.current(aqe_engine) == migrate.head()


# --- run_concurrently -------------------------------------------------------------------------


async def test_run_concurrently_collects_every_exception_and_never_cancels_siblings(
    concurrency: object,
) -> None:
    assert concurrency is run_concurrently
    finished: list[int] = []

    def operation(index: int) -> object:
        async def run() -> int:
            if index % 5 == 0:
                raise ValueError(f"operation {index} failed")
            await asyncio.sleep(0.01)  # still running when the failures happen
            finished.append(index)
            return index * 10

        return run

    report = await run_concurrently([operation(i) for i in range(20)], limit=20)

    assert not report.ok
    assert [index for index, _ in report.errors] == [0, 5, 10, 15]
    assert all(isinstance(exc, ValueError) for _, exc in report.errors)
    assert [str(exc) for _, exc in report.errors] == [
        f"operation {i} failed" for i in (0, 5, 10, 15)
    ]
    survivors = [i for i in range(20) if i % 5]
    assert sorted(finished) == survivors, "a failure cancelled its siblings"
    assert report.results == [None if i % 5 == 0 else i * 10 for i in range(20)]

    with pytest.raises(AssertionError, match="4 operations failed") as raised:
        report.raise_first()
    assert isinstance(raised.value.__cause__, ValueError)
    assert "#15" in str(raised.value)


async def test_run_concurrently_respects_its_limit() -> None:
    in_flight = 0
    observed_peak = 0

    async def operation() -> None:
        nonlocal in_flight, observed_peak
        in_flight += 1
        observed_peak = max(observed_peak, in_flight)
        try:
            await asyncio.sleep(0.005)
        finally:
            in_flight -= 1

    report = await run_concurrently([operation] * 30, limit=4)

    assert report.ok
    assert observed_peak == 4, "never more than the limit, and the limit is actually used"
    assert report.max_in_flight == observed_peak
    assert report.results == [None] * 30

    serial = await run_concurrently([operation] * 5, limit=1)
    assert serial.max_in_flight == 1
    with pytest.raises(ValueError):
        await run_concurrently([operation], limit=0)


# --- PerformanceTracker -----------------------------------------------------------------------


async def test_performance_tracker_figures_are_readable_mid_test(
    performance_tracker: PerformanceTracker,
) -> None:
    assert performance_tracker.stats("store")["count"] == 0

    for millis in range(1, 101):
        performance_tracker.record("store", millis / 1000)
        # Readable at any time, not only at the end.
        assert performance_tracker.stats("store")["count"] == millis

    stats = performance_tracker.stats("store")
    assert stats["p50"] == pytest.approx(0.050)
    assert stats["p99"] == pytest.approx(0.099)
    assert stats["max"] == pytest.approx(0.100)
    assert stats["mean"] == pytest.approx(0.0505)

    with performance_tracker.track("retrieve"):
        await asyncio.sleep(0)
        assert performance_tracker.stats("retrieve")["count"] == 0  # not finished yet
    assert performance_tracker.stats("retrieve")["count"] == 1
    with pytest.raises(RuntimeError), performance_tracker.track("retrieve"):
        raise RuntimeError("a failing operation is still timed")
    assert performance_tracker.stats("retrieve")["count"] == 2

    assert performance_tracker.names() == ["retrieve", "store"]
    report = performance_tracker.report()
    assert "store" in report and "retrieve" in report
    assert PerformanceTracker().names() == [], "each tracker starts fresh"


# --- health_check and discovery ---------------------------------------------------------------


def test_health_check_names_unreachable_servers_and_how_to_start_them() -> None:
    postgres_health, redis_health = health_check(UNREACHABLE_POSTGRES, UNREACHABLE_REDIS)

    assert postgres_health.name == "PostgreSQL"
    assert not postgres_health.ok
    assert "127.0.0.1:1" in (postgres_health.problem or "")
    assert "docker compose" in postgres_health.how_to_start
    assert "pg_ctl" in postgres_health.how_to_start

    assert redis_health.name == "Redis"
    assert not redis_health.ok
    assert "127.0.0.1:1" in (redis_health.problem or "")
    assert "redis-server" in redis_health.how_to_start

    assert health_check(None, None) == []


@postgres
@pytest.mark.redis
def test_health_check_reports_the_real_servers_ok(
    aqe_postgres_server: FoundServer, aqe_redis_server: FoundServer
) -> None:
    report = health_check(aqe_postgres_server.url, aqe_redis_server.url)

    assert [(health.name, health.ok, health.problem) for health in report] == [
        ("PostgreSQL", True, None),
        ("Redis", True, None),
    ]


def _compose_services() -> set[str]:
    compose = (REPO_ROOT / "docker-compose-test.yml").read_text()
    services = compose.split("\nservices:\n", 1)[1]
    return set(re.findall(r"^  ([A-Za-z0-9_.-]+):\s*$", services, flags=re.MULTILINE))


def test_health_check_docker_hints_name_real_compose_services() -> None:
    services = _compose_services()
    assert {"postgres", "redis"} <= services
    for health in health_check(UNREACHABLE_POSTGRES, UNREACHABLE_REDIS):
        named = re.findall(r"up -d ([A-Za-z0-9_.-]+)", health.how_to_start)
        assert set(named) <= services, f"{health.name}: {named} not in {services}"


def test_health_report_never_shows_a_password() -> None:
    report = health_check(
        "postgresql+asyncpg://postgres:pg-pass-42@127.0.0.1:1/postgres",
        "redis://:redis-pass-42@127.0.0.1:1/0",
    )
    for health in report:
        for rendered in (repr(health), str(health), health.problem or ""):
            assert "pg-pass-42" not in rendered
            assert "redis-pass-42" not in rendered


@postgres
def test_find_postgres_honours_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, aqe_database_url: str
) -> None:
    plain = make_url(aqe_database_url).set(drivername="postgresql")
    monkeypatch.setenv("AQE_TEST_DATABASE_URL", plain.render_as_string(hide_password=False))

    found = find_postgres(start_throwaway=False)

    assert found.source == "env"
    assert make_url(found.url).drivername == "postgresql+asyncpg"
    assert make_url(found.url).database == make_url(aqe_database_url).database


def test_find_postgres_stops_when_the_environment_points_nowhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "AQE_TEST_DATABASE_URL", "postgresql://postgres:env-pass-7@127.0.0.1:1/postgres"
    )

    with pytest.raises(ServerUnavailableError) as excinfo:
        find_postgres(start_throwaway=False)

    message = str(excinfo.value)
    assert "AQE_TEST_DATABASE_URL" in message
    assert "127.0.0.1:1" in message
    assert "env-pass-7" not in message
    assert "Start" in message, "the message says how to start a server"
