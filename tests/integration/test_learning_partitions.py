"""``trajectories`` partitioned by ranges of ids on PostgreSQL (migration 0005).

Every test gets a database of its own, copied from one migrated at the start of the module.
Partitions of ten ids make a handful of steps span several of them: each test first moves the
id sequence to the top of the partitions the migration created (as if two million steps had
been stored), so the manager's own ten-id partitions are the ones in use.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.pool import NullPool

from lionagi_qe import DatabaseManager
from lionagi_qe.db import migrate
from lionagi_qe.db.engine import create_engine
from lionagi_qe.errors import InvalidArgumentError
from lionagi_qe.testing.servers import FoundServer, create_database, drop_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "chaos-engineer"
WIDTH = 10


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _migrate(url: str, revision: str = "head") -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        await migrate.upgrade(engine, revision)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def migrated_template(aqe_postgres_server: FoundServer) -> Iterator[str]:
    """A database migrated to head, copied by every test (never connected to meanwhile)."""
    name = f"aqe_large_tpl_{uuid.uuid4().hex[:10]}"
    url = create_database(aqe_postgres_server.url, name)
    try:
        _run(_migrate(url))
        yield name
    finally:
        drop_database(aqe_postgres_server.url, name)


@pytest.fixture
def database_url(aqe_postgres_server: FoundServer, migrated_template: str) -> Iterator[str]:
    name = f"aqe_large_{uuid.uuid4().hex[:12]}"
    url = create_database(aqe_postgres_server.url, name, template=migrated_template)
    try:
        yield url
    finally:
        drop_database(aqe_postgres_server.url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[DatabaseManager]:
    """A manager making ten-id partitions, its ids moved past the migration's partitions."""
    manager = DatabaseManager(
        database_url, min_connections=1, trajectory_partition_rows=WIDTH, cleanup_batch_size=4
    )
    try:
        top = max(p["upper"] or 0 for p in await manager.list_trajectory_partitions())
        await sql(manager, f"ALTER TABLE trajectories ALTER COLUMN id RESTART WITH {top}")
        manager.first_id = top  # type: ignore[attr-defined]
        yield manager
    finally:
        await manager.close()


async def sql(db: DatabaseManager, statement: str, **params: Any) -> list[Any]:
    async with db.engine.begin() as conn:
        result = await conn.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []


async def store(db: DatabaseManager, n: int, state: str = "s", **kwargs: Any) -> list[int]:
    return [await db.store_trajectory(AGENT, state, f"a{i}", float(i), **kwargs) for i in range(n)]


async def store_spread(db: DatabaseManager, n: int, **kwargs: Any) -> list[int]:
    """``n`` steps, partitions created ahead before every ``WIDTH`` of them."""
    ids: list[int] = []
    while len(ids) < n:
        await db.maintain_partitions()
        ids += await store(db, min(WIDTH, n - len(ids)), **kwargs)
    return ids


async def expire(db: DatabaseManager, ids: list[int]) -> None:
    await sql(
        db,
        "UPDATE trajectories SET expires_at = statement_timestamp() - interval '1 second'"
        " WHERE id = ANY(:ids)",
        ids=ids,
    )


async def home(db: DatabaseManager, step_id: int) -> str:
    """The partition a step is stored in."""
    rows = await sql(
        db, "SELECT tableoid::regclass::text FROM trajectories WHERE id = :i", i=step_id
    )
    return str(rows[0][0])


def bounded(partitions: list[dict[str, Any]]) -> list[tuple[int | None, int | None]]:
    return [(p["lower"], p["upper"]) for p in partitions if not p["default"]]


# --- created ahead, by the migration and by maintenance ---------------------------------------


async def test_the_migration_creates_partitions_ahead_and_a_default(database_url: str) -> None:
    manager = DatabaseManager(database_url, min_connections=1)
    try:
        layout = await manager.list_trajectory_partitions()
        assert bounded(layout) == [(None, 1), (1, 1_000_001), (1_000_001, 2_000_001)]
        assert [p["name"] for p in layout if p["default"]] == ["trajectories_default"]
        step = await manager.store_trajectory(AGENT, "s", "a", 1.0)
        assert step == 1 and await home(manager, step) == "trajectories_p1"
        # Two partitions' worth of ids stay ready above the next id: one more is due.
        assert await manager.maintain_partitions() == ["trajectories_p2000001"]
        assert await manager.maintain_partitions() == []
    finally:
        await manager.close()


async def test_maintenance_creates_partitions_ahead_and_steps_land_in_theirs(
    db: DatabaseManager,
) -> None:
    first: int = db.first_id  # type: ignore[attr-defined]
    created = await db.maintain_partitions()
    assert created == [f"trajectories_p{first}", f"trajectories_p{first + WIDTH}"]

    ids = await store(db, 15)
    assert ids == list(range(first, first + 15))
    for step in ids:
        lower = first + (step - first) // WIDTH * WIDTH
        assert await home(db, step) == f"trajectories_p{lower}"

    # Five ids left in the newest partition: two more widths get created ahead.
    assert await db.maintain_partitions() == [
        f"trajectories_p{first + 2 * WIDTH}",
        f"trajectories_p{first + 3 * WIDTH}",
    ]
    assert await db.maintain_partitions() == []
    assert bounded(await db.list_trajectory_partitions())[-1] == (
        first + 3 * WIDTH,
        first + 4 * WIDTH,
    )


async def test_steps_beyond_every_partition_land_in_the_default_and_maintenance_skips_them(
    db: DatabaseManager,
) -> None:
    """Maintenance lapsed: steps are not refused; new partitions start above what the default
    partition caught (creating one over those rows would fail)."""
    first: int = db.first_id  # type: ignore[attr-defined]
    caught = await store(db, 3)
    assert {await home(db, step) for step in caught} == {"trajectories_default"}

    created = await db.maintain_partitions()

    assert created[0] == f"trajectories_p{first + 3}"
    later = await store(db, 2)
    assert {await home(db, step) for step in later} == {f"trajectories_p{first + 3}"}
    steps = await db.get_recent_trajectories(AGENT, 10)
    assert [s["trajectory_id"] for s in steps] == (caught + later)[::-1]


# --- queries over several partitions ----------------------------------------------------------


async def test_queries_see_every_partition(db: DatabaseManager) -> None:
    session = await db.start_session(AGENT)
    ids = await store_spread(db, 25, session_id=session, agent_instance_id="inst-1")
    assert len({await home(db, step) for step in ids}) == 3

    newest = await db.get_recent_trajectories(AGENT, 12)
    assert [s["trajectory_id"] for s in newest] == ids[::-1][:12]
    by_session = await db.get_recent_trajectories(AGENT, 100, session_id=session)
    assert [s["trajectory_id"] for s in by_session] == ids[::-1]
    by_instance = await db.get_recent_trajectories(AGENT, 100, agent_instance_id="inst-1")
    assert len(by_instance) == 25

    reward_id = await db.record_reward(AGENT, "s", "a0", 2.0, trajectory_id=ids[0])
    assert (await db.get_rewards(AGENT))[0]["reward_id"] == reward_id
    with pytest.raises(InvalidArgumentError, match="trajectory"):
        await db.record_reward(AGENT, "s", "a0", 2.0, trajectory_id=ids[-1] + 1000)

    total = float(sum(i % WIDTH for i in range(25)))  # store_spread's rewards
    ended = await db.end_session(session)
    assert ended["total_reward"] == total
    stats = await db.get_learning_statistics(AGENT)
    assert stats["trajectories"]["count"] == 25
    assert stats["trajectories"]["total_reward"] == total


# --- retention: drop whole partitions, delete rows in the others ------------------------------


class Statements:
    """DELETE row counts and DDL run through the manager's engine."""

    def __init__(self, db: DatabaseManager) -> None:
        self.deleted: list[int] = []
        self.dropped: list[str] = []
        self._engine = db.engine.sync_engine
        event.listen(self._engine, "after_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        if words[0].upper() == "DELETE" and words[2] == "trajectories":
            self.deleted.append(cursor.rowcount)
        if words[:2] == ["DROP", "TABLE"]:
            self.dropped.append(words[2].strip('"'))

    def close(self) -> None:
        event.remove(self._engine, "after_cursor_execute", self._record)


async def test_cleanup_drops_wholly_expired_partitions_and_deletes_rows_in_the_rest(
    db: DatabaseManager,
) -> None:
    first: int = db.first_id  # type: ignore[attr-defined]
    ids = await store_spread(db, 25)  # partitions A (10 steps), B (10), C (5)
    a, b, c = ids[:10], ids[10:20], ids[20:]
    await expire(db, a + b + c[:3])
    old_reward = await db.record_reward(AGENT, "s", "a", 1.0, trajectory_id=a[4])
    gone_reward = await db.record_reward(AGENT, "s", "a", 1.0, trajectory_id=c[0])
    live_reward = await db.record_reward(AGENT, "s", "a", 1.0, trajectory_id=c[4])
    statements = Statements(db)
    try:
        deleted = await db.cleanup_expired_data()
    finally:
        statements.close()

    assert deleted == {"q_values": 0, "trajectories": 23}
    partitions = [p["name"] for p in await db.list_trajectory_partitions()]
    assert f"trajectories_p{first}" not in partitions
    assert f"trajectories_p{first + WIDTH}" not in partitions
    assert f"trajectories_p{first + 2 * WIDTH}" in partitions
    # A and B went whole (so did the migration's empty partitions below them); only C's
    # three expired steps were deleted as rows.
    assert {f"trajectories_p{first}", f"trajectories_p{first + WIDTH}"} <= set(statements.dropped)
    assert sum(statements.deleted) == 3
    remaining = await sql(db, "SELECT id FROM trajectories ORDER BY id")
    assert [row[0] for row in remaining] == c[3:]
    # As ON DELETE SET NULL would have done, for dropped and deleted steps alike.
    rewards = {row[0]: row[1] for row in await sql(db, "SELECT id, trajectory_id FROM rewards")}
    assert rewards == {old_reward: None, gone_reward: None, live_reward: c[4]}
    assert await db.cleanup_expired_data() == {"q_values": 0, "trajectories": 0}


async def test_a_partition_keeps_while_one_step_lives_or_ids_still_arrive(
    db: DatabaseManager,
) -> None:
    first: int = db.first_id  # type: ignore[attr-defined]
    await db.maintain_partitions()
    ids = await store(db, 15)  # A full, B (the newest ids) half full
    await expire(db, ids[:9] + ids[10:])  # A keeps one live step; B is all expired
    statements = Statements(db)
    try:
        deleted = await db.cleanup_expired_data()
    finally:
        statements.close()

    assert deleted["trajectories"] == 14
    assert f"trajectories_p{first}" not in statements.dropped
    assert f"trajectories_p{first + WIDTH}" not in statements.dropped
    partitions = [p["name"] for p in await db.list_trajectory_partitions()]
    assert f"trajectories_p{first}" in partitions  # one live step
    assert f"trajectories_p{first + WIDTH}" in partitions  # the next ids go here
    assert [row[0] for row in await sql(db, "SELECT id FROM trajectories")] == [ids[9]]
    assert await home(db, (await store(db, 1))[0]) == f"trajectories_p{first + WIDTH}"


async def test_steps_that_never_expire_keep_their_partition(database_url: str) -> None:
    manager = DatabaseManager(
        database_url, min_connections=1, trajectory_retention=None, trajectory_partition_rows=WIDTH
    )
    try:
        top = max(p["upper"] or 0 for p in await manager.list_trajectory_partitions())
        await sql(manager, f"ALTER TABLE trajectories ALTER COLUMN id RESTART WITH {top}")
        await manager.maintain_partitions()
        await store(manager, 12)
        assert await manager.cleanup_expired_data() == {"q_values": 0, "trajectories": 0}
        assert len(await manager.get_recent_trajectories(AGENT, 100)) == 12
    finally:
        await manager.close()


async def test_a_busy_partition_is_left_for_later_and_its_rows_deleted(
    db: DatabaseManager, database_url: str
) -> None:
    """A reader holding the partition: the drop gives up after the lock timeout instead of
    queueing every other reader behind it; the expired steps are deleted as rows."""
    first: int = db.first_id  # type: ignore[attr-defined]
    await db.maintain_partitions()
    ids = await store(db, 12)
    await expire(db, ids[:10])
    reader = create_engine(database_url, poolclass=NullPool)
    try:
        async with reader.connect() as conn:
            await conn.execute(text(f"SELECT count(*) FROM trajectories_p{first}"))  # holds it

            deleted = await db.cleanup_expired_data()

            await conn.rollback()
    finally:
        await reader.dispose()
    assert deleted["trajectories"] == 10
    assert f"trajectories_p{first}" in [p["name"] for p in await db.list_trajectory_partitions()]
    assert await db.cleanup_expired_data() == {"q_values": 0, "trajectories": 0}
    # Empty now: the next cleanup that can have the lock drops it.
    assert f"trajectories_p{first}" not in [
        p["name"] for p in await db.list_trajectory_partitions()
    ]


async def test_concurrent_cleanups_count_each_step_once(
    db: DatabaseManager, database_url: str
) -> None:
    ids = await store_spread(db, 30)
    await expire(db, ids[:25])
    other = DatabaseManager(database_url, min_connections=1, cleanup_batch_size=4)
    try:
        results = await asyncio.gather(db.cleanup_expired_data(), other.cleanup_expired_data())
    finally:
        await other.close()
    assert sum(r["trajectories"] for r in results) == 25
    assert sorted(row[0] for row in await sql(db, "SELECT id FROM trajectories")) == ids[25:]


async def test_storing_during_cleanup_never_fails(db: DatabaseManager) -> None:
    await db.maintain_partitions()
    ids = await store(db, 20)
    await expire(db, ids)
    await db.maintain_partitions()

    async def writer(n: int) -> list[int]:
        return await store(db, 5, state=f"w{n}")

    cleanup = asyncio.create_task(db.cleanup_expired_data())
    batches = await asyncio.gather(*(writer(n) for n in range(8)))

    assert (await cleanup)["trajectories"] == 20
    written = [step for batch in batches for step in batch]
    assert len(written) == 40
    assert sorted(row[0] for row in await sql(db, "SELECT id FROM trajectories")) == sorted(written)


# --- the migration on a table that already has steps ------------------------------------------


async def test_upgrading_a_filled_table_attaches_it_as_the_first_partition(
    aqe_postgres_server: FoundServer,
) -> None:
    name = f"aqe_large_{uuid.uuid4().hex[:12]}"
    url = create_database(aqe_postgres_server.url, name)
    manager = DatabaseManager(url, min_connections=1)
    try:
        await _migrate(url, "0004")
        old = await store(manager, 5)
        reward = await manager.record_reward(AGENT, "s", "a", 1.0, trajectory_id=old[2])

        await _migrate(url)

        layout = await manager.list_trajectory_partitions()
        assert bounded(layout)[0] == (None, 6)
        assert {await home(manager, step) for step in old} == {"trajectories_p0"}
        new = await manager.store_trajectory(AGENT, "s", "a", 1.0)
        assert new == 6 and await home(manager, new) == "trajectories_p6"
        rows = await sql(manager, "SELECT trajectory_id FROM rewards WHERE id = :r", r=reward)
        assert rows == [(old[2],)]
        with pytest.raises(InvalidArgumentError, match="trajectory"):
            await manager.record_reward(AGENT, "s", "a", 1.0, trajectory_id=999)
    finally:
        await manager.close()
        drop_database(aqe_postgres_server.url, name)


# --- arguments and other dialects -------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"trajectory_partition_rows": 0},
        {"trajectory_partition_rows": True},
        {"trajectory_partitions_ahead": 0},
        {"trajectory_partitions_ahead": 1.5},
    ],
)
def test_bad_partition_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        DatabaseManager("postgresql://postgres@127.0.0.1:1/none", **options)


@pytest.mark.parametrize("fixture", ["aqe_sqlite_url"])
async def test_sqlite_keeps_a_plain_table(fixture: str, request: pytest.FixtureRequest) -> None:
    manager = DatabaseManager(request.getfixturevalue(fixture), trajectory_partition_rows=WIDTH)
    try:
        assert await manager.list_trajectory_partitions() == []
        assert await manager.maintain_partitions() == []
        await store(manager, 3)
        assert await manager.cleanup_expired_data() == {"q_values": 0, "trajectories": 0}
        assert len(await manager.get_recent_trajectories(AGENT, 10)) == 3
    finally:
        await manager.close()
