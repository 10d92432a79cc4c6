"""Cleanup in bounded batches, statistics from real data, typed errors for bad input (§5, §11).

Statistics tests register an agent type of their own, so the figures are exactly theirs even
though the tables are shared within a worker.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from lionagi_qe import DatabaseManager
from lionagi_qe.errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidArgumentError,
    InvalidTTLError,
    PersistenceError,
    SerializationError,
)
from lionagi_qe.models import QValue, Trajectory

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "flaky-test-hunter"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def expire_state(db: DatabaseManager, table: str, state: str) -> None:
    """Make every row of ``state`` in ``table`` one second past its expiry."""
    past = (
        "statement_timestamp() - interval '1 second'"
        if db.dialect == "postgresql"
        else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 seconds')"
    )
    async with db.engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE {table} SET expires_at = {past} WHERE state_hash = :s"), {"s": state}
        )


async def count(db: DatabaseManager, model: Any, state: str) -> int:
    async with db.engine.connect() as conn:
        found = await conn.scalar(
            select(func.count()).select_from(model).where(model.state_hash == state)
        )
    return int(found or 0)


# --- cleanup ----------------------------------------------------------------------------------


async def test_cleanup_removes_only_expired_rows_in_bounded_batches(learning_url: str) -> None:
    db = DatabaseManager(learning_url, min_connections=1, cleanup_batch_size=7)
    deletes: list[tuple[str, int]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append((statement.split()[2], cursor.rowcount))

    event.listen(db.engine.sync_engine, "after_cursor_execute", record)
    try:
        old, live = unique("old"), unique("live")
        await db.batch_update_q_values(
            [
                {
                    "agent_type": AGENT,
                    "state_hash": state,
                    "action_hash": f"a{i}",
                    "reward": 1.0,
                    "next_max_q": 0.0,
                    "alpha": 0.5,
                    "gamma": 0.9,
                }
                for state, n in ((old, 20), (live, 3))
                for i in range(n)
            ]
        )
        for i in range(15):
            await db.store_trajectory(AGENT, old, f"a{i}", 1.0)
        await db.store_trajectory(AGENT, live, "a", 1.0)
        await expire_state(db, "q_values", old)
        await expire_state(db, "trajectories", old)

        deleted = await db.cleanup_expired_data()

        # Other tests of this worker may have left expired rows too: at least ours went.
        assert deleted["q_values"] >= 20 and deleted["trajectories"] >= 15
        assert await count(db, QValue, old) == 0 and await count(db, Trajectory, old) == 0
        assert await count(db, QValue, live) == 3 and await count(db, Trajectory, live) == 1
        assert deletes, "cleanup ran no DELETE"
        assert all(rows <= 7 for _, rows in deletes), deletes
        q_batches = [rows for table, rows in deletes if table == "q_values"]
        assert len(q_batches) >= 3, "20 expired Q-values need at least 3 batches of 7"
        assert await db.cleanup_expired_data() == {"q_values": 0, "trajectories": 0}
    finally:
        event.remove(db.engine.sync_engine, "after_cursor_execute", record)
        await db.close()


async def test_a_q_value_in_use_outlives_its_first_expiry(learning_url: str) -> None:
    """Used before its expiry, a value's expiry moves ahead and cleanup leaves it alone."""
    db = DatabaseManager(learning_url, min_connections=1, q_value_retention=3600)
    try:
        state = unique("used")
        await db.upsert_q_value(AGENT, state, "a", 1.0)
        in_a_second = (
            "statement_timestamp() + interval '1 second'"
            if db.dialect == "postgresql"
            else "strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 seconds')"
        )
        async with db.engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE q_values SET expires_at = {in_a_second} WHERE state_hash = :s"),
                {"s": state},
            )
        assert await db.get_best_action(AGENT, state) is not None  # a use: refreshed
        await let_a_minute_pass(db, state)
        await db.cleanup_expired_data()
        assert await db.get_q_value(AGENT, state, "a") == 1.0
    finally:
        await db.close()


async def let_a_minute_pass(db: DatabaseManager, state: str) -> None:
    """As if a minute passed: rows of ``state`` due to expire within a minute are expired."""
    soon = (
        "statement_timestamp() + interval '1 minute'"
        if db.dialect == "postgresql"
        else "strftime('%Y-%m-%d %H:%M:%f', 'now', '+60 seconds')"
    )
    past = (
        "statement_timestamp() - interval '1 second'"
        if db.dialect == "postgresql"
        else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 seconds')"
    )
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE q_values SET expires_at = {past} "
                f"WHERE state_hash = :s AND expires_at < {soon}"
            ),
            {"s": state},
        )


# --- statistics -------------------------------------------------------------------------------


async def test_learning_statistics_are_computed_from_the_data(manager: DatabaseManager) -> None:
    agent = unique("stats-agent")
    await manager.register_agent_type(agent)
    empty = await manager.get_learning_statistics(agent)
    assert empty["q_values"]["count"] == 0 and empty["q_values"]["avg_q_value"] is None
    assert empty["trajectories"]["avg_reward"] is None and empty["sessions"]["count"] == 0

    for state, action, value in (("s1", "a", 1.0), ("s1", "b", -2.0), ("s2", "a", 4.0)):
        await manager.upsert_q_value(agent, state, action, value)
    await manager.update_q_value(agent, "s2", "a", 1.0, 0.0, 0.5, 0.0)  # 4 -> 2.5, 2 visits
    done_session = await manager.start_session(agent)
    await manager.start_session(agent)
    rewards = [1.0, 2.5, -0.5, 4.0]
    for i, reward in enumerate(rewards):
        await manager.store_trajectory(
            agent,
            f"s{i}",
            "a",
            reward,
            done=i % 2 == 1,
            agent_instance_id=f"inst-{i % 2}",
            session_id=done_session,
        )
    await manager.end_session(done_session)
    await manager.record_reward(agent, "s1", "a", 3.0)
    await manager.record_reward(agent, "s1", "b", 1.0)
    await manager.record_pattern_use(agent, "p1", success=True, reward=2.0)
    await manager.record_pattern_use(agent, "p1", success=False, reward=4.0)
    await manager.record_pattern_use(agent, "p2", success=True)
    await manager.update_agent_state(agent, "inst-0", 10, 6, total_reward=5.0, total_episodes=2)
    await manager.update_agent_state(agent, "inst-1", 5, 4, total_reward=1.0, total_episodes=1)

    stats = await manager.get_learning_statistics(agent)

    assert stats["agent_type"] == agent and stats["window_hours"] is None
    assert stats["q_values"] == {
        "count": 3,
        "states": 2,
        "total_visits": 4,
        "avg_q_value": pytest.approx((1.0 - 2.0 + 2.5) / 3),
        "min_q_value": -2.0,
        "max_q_value": 2.5,
    }
    trajectories = stats["trajectories"]
    assert trajectories["count"] == 4 and trajectories["episodes_completed"] == 2
    assert trajectories["total_reward"] == sum(rewards)
    assert trajectories["avg_reward"] == pytest.approx(statistics.fmean(rewards))
    assert trajectories["std_reward"] == pytest.approx(statistics.stdev(rewards))
    assert trajectories["agent_instances"] == 2 and trajectories["sessions"] == 1
    assert trajectories["last_step_at"].tzinfo is not None
    assert stats["rewards"] == {"count": 2, "total_reward": 4.0, "avg_reward": 2.0}
    assert stats["sessions"] == {
        "count": 2,
        "active": 1,
        "completed": 1,
        "failed": 0,
        "aborted": 0,
        "avg_total_reward": sum(rewards),
    }
    assert stats["patterns"] == {
        "count": 2,
        "usage_count": 3,
        "success_count": 2,
        "failure_count": 1,
        "success_rate": pytest.approx(2 / 3),
        "avg_reward": 3.0,
    }
    assert stats["agents"] == {
        "instances": 2,
        "total_episodes": 3,
        "total_actions": 15,
        "successful_actions": 10,
        "success_rate": pytest.approx(10 / 15),
        "total_reward": 6.0,
    }
    assert_no_decimals(stats)

    everything = await manager.get_learning_statistics()
    assert everything["agent_type"] is None
    assert everything["q_values"]["count"] >= 3 and everything["trajectories"]["count"] >= 4


async def test_the_hours_window_limits_activity(manager: DatabaseManager) -> None:
    agent = unique("window-agent")
    await manager.register_agent_type(agent)
    for reward in (1.0, 2.0, 3.0):
        await manager.store_trajectory(agent, "s", "a", reward)
    old = (
        "statement_timestamp() - interval '3 hours'"
        if manager.dialect == "postgresql"
        else "strftime('%Y-%m-%d %H:%M:%f', 'now', '-3 hours')"
    )
    async with manager.engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE trajectories SET created_at = {old} WHERE agent_type = :a AND reward = 1.0"
            ),
            {"a": agent},
        )

    recent = await manager.get_learning_statistics(agent, hours=1)
    assert recent["window_hours"] == 1.0
    assert recent["trajectories"]["count"] == 2 and recent["trajectories"]["total_reward"] == 5.0
    longer = await manager.get_learning_statistics(agent, hours=4)
    assert longer["trajectories"]["count"] == 3


def assert_no_decimals(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            assert_no_decimals(item)
    else:
        assert type(value).__name__ != "Decimal", value


# --- bad input: typed errors, nothing changed -------------------------------------------------

STATE = "bad-input-state"
BAD_CALLS: list[tuple[str, Callable[[DatabaseManager], Awaitable[Any]], type[Exception], str]] = [
    (
        "alpha>1",
        lambda m: m.update_q_value(AGENT, STATE, "a", 1, 0, 1.01, 0.9),
        InvalidArgumentError,
        "alpha",
    ),
    (
        "alpha<0",
        lambda m: m.update_q_value(AGENT, STATE, "a", 1, 0, -0.1, 0.9),
        InvalidArgumentError,
        "alpha",
    ),
    (
        "gamma>1",
        lambda m: m.update_q_value(AGENT, STATE, "a", 1, 0, 0.1, 2),
        InvalidArgumentError,
        "gamma",
    ),
    (
        "nan reward",
        lambda m: m.update_q_value(AGENT, STATE, "a", math.nan, 0, 0.1, 0.9),
        InvalidArgumentError,
        "finite",
    ),
    (
        "inf next",
        lambda m: m.update_q_value(AGENT, STATE, "a", 1, math.inf, 0.1, 0.9),
        InvalidArgumentError,
        "finite",
    ),
    (
        "overflow",
        lambda m: m.update_q_value(AGENT, STATE, "a", 1e308, 1e308, 0.1, 1),
        InvalidArgumentError,
        "within",
    ),
    (
        "huge q",
        lambda m: m.upsert_q_value(AGENT, STATE, "a", 1.1e100),
        InvalidArgumentError,
        "within",
    ),
    (
        "huge int",
        lambda m: m.record_reward(AGENT, STATE, "a", 10**400),
        InvalidArgumentError,
        "too large",
    ),
    (
        "step not int",
        lambda m: m.store_trajectory(AGENT, STATE, "a", 1.0, step_number="1"),
        InvalidArgumentError,
        "step_number must be an int",
    ),
    (
        "lone surrogate",
        lambda m: m.get_q_value("agent-\ud800", STATE, "a"),
        InvalidArgumentError,
        "Unicode",
    ),
    (
        "bool reward",
        lambda m: m.update_q_value(AGENT, STATE, "a", True, 0, 0.1, 0.9),
        InvalidArgumentError,
        "number",
    ),
    (
        "str reward",
        lambda m: m.update_q_value(AGENT, STATE, "a", "1", 0, 0.1, 0.9),
        InvalidArgumentError,
        "number",
    ),
    (
        "empty state",
        lambda m: m.update_q_value(AGENT, "", "a", 1, 0, 0.1, 0.9),
        InvalidArgumentError,
        "state_hash",
    ),
    (
        "empty action",
        lambda m: m.get_q_value(AGENT, STATE, ""),
        InvalidArgumentError,
        "action_hash",
    ),
    (
        "long hash",
        lambda m: m.upsert_q_value(AGENT, "s" * 129, "a", 1.0),
        InvalidArgumentError,
        "128",
    ),
    (
        "control char",
        lambda m: m.upsert_q_value(AGENT, "s\x00", "a", 1.0),
        InvalidArgumentError,
        "control",
    ),
    ("agent not str", lambda m: m.get_best_action(None, STATE), InvalidArgumentError, "agent_type"),
    (
        "nan q",
        lambda m: m.upsert_q_value(AGENT, STATE, "a", math.nan),
        InvalidArgumentError,
        "finite",
    ),
    (
        "bad state data",
        lambda m: m.upsert_q_value(AGENT, STATE, "a", 1.0, {"x": object()}),
        SerializationError,
        "JSON",
    ),
    (
        "bad session",
        lambda m: m.upsert_q_value(AGENT, STATE, "a", 1.0, session_id="x"),
        InvalidArgumentError,
        "UUID",
    ),
    (
        "unknown agent q",
        lambda m: m.update_q_value("ghost-agent", STATE, "a", 1, 0, 0.1, 0.9),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "unknown agent upsert",
        lambda m: m.upsert_q_value("ghost-agent", STATE, "a", 1.0),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "unknown agent step",
        lambda m: m.store_trajectory("ghost-agent", STATE, "a", 1.0),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "done not bool",
        lambda m: m.store_trajectory(AGENT, STATE, "a", 1.0, done="yes"),
        InvalidArgumentError,
        "done",
    ),
    (
        "negative step",
        lambda m: m.store_trajectory(AGENT, STATE, "a", 1.0, step_number=-1),
        InvalidArgumentError,
        "step_number",
    ),
    (
        "metadata list",
        lambda m: m.store_trajectory(AGENT, STATE, "a", 1.0, metadata=[1]),
        SerializationError,
        "metadata",
    ),
    (
        "unknown agent reward",
        lambda m: m.record_reward("ghost-agent", STATE, "a", 1.0),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "unknown session reward",
        lambda m: m.record_reward(AGENT, STATE, "a", 1.0, session_id=uuid.uuid4()),
        InvalidArgumentError,
        "session",
    ),
    (
        "inf reward value",
        lambda m: m.record_reward(AGENT, STATE, "a", -math.inf),
        InvalidArgumentError,
        "finite",
    ),
    (
        "long reward type",
        lambda m: m.record_reward(AGENT, STATE, "a", 1.0, "t" * 51),
        InvalidArgumentError,
        "reward_type",
    ),
    ("limit 0", lambda m: m.get_rewards(AGENT, limit=0), InvalidArgumentError, "limit"),
    (
        "limit bool",
        lambda m: m.get_recent_trajectories(AGENT, limit=True),
        InvalidArgumentError,
        "limit",
    ),
    (
        "unknown agent session",
        lambda m: m.start_session("ghost-agent"),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "long environment",
        lambda m: m.start_session(AGENT, environment="e" * 51),
        InvalidArgumentError,
        "environment",
    ),
    (
        "nan total",
        lambda m: m.end_session(uuid.uuid4(), total_reward=math.nan),
        InvalidArgumentError,
        "finite",
    ),
    (
        "unknown agent pattern",
        lambda m: m.record_pattern_use("ghost-agent", STATE, success=True),
        InvalidArgumentError,
        "agent type",
    ),
    (
        "success not bool",
        lambda m: m.record_pattern_use(AGENT, STATE, success=1),
        InvalidArgumentError,
        "success",
    ),
    (
        "nan pattern reward",
        lambda m: m.record_pattern_use(AGENT, STATE, success=True, reward=math.nan),
        InvalidArgumentError,
        "finite",
    ),
    (
        "unknown agent state",
        lambda m: m.update_agent_state("ghost-agent", STATE, 1, 1),
        InvalidArgumentError,
        "agent type",
    ),
    ("hours 0", lambda m: m.get_learning_statistics(hours=0), InvalidArgumentError, "hours"),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
async def test_bad_input_gets_a_typed_error_and_changes_nothing(
    manager: DatabaseManager,
    call: Callable[[DatabaseManager], Awaitable[Any]],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match) as excinfo:
        await call(manager)
    assert isinstance(excinfo.value, PersistenceError)
    assert await count(manager, QValue, STATE) == 0
    assert await count(manager, Trajectory, STATE) == 0
    assert await manager.get_rewards(AGENT, STATE) == []
    assert await manager.get_pattern(AGENT, STATE) is None
    assert await manager.get_agent_state("ghost-agent", STATE) is None


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [c[1:] for c in BAD_CALLS if "unknown" not in c[0]],
    ids=[c[0] for c in BAD_CALLS if "unknown" not in c[0]],
)
async def test_bad_arguments_are_refused_before_any_io(
    call: Callable[[DatabaseManager], Awaitable[Any]], error: type[Exception], match: str
) -> None:
    """Against a server that does not exist: the argument error comes first."""
    unreachable = DatabaseManager("postgresql://postgres@127.0.0.1:1/none", min_connections=0)
    try:
        with pytest.raises(error, match=match):
            await call(unreachable)
    finally:
        await unreachable.close()


@pytest.mark.parametrize(
    "options",
    [
        {"q_value_retention": 0},
        {"trajectory_retention": -1},
        {"q_value_retention": math.inf},
        {"cleanup_batch_size": 0},
    ],
)
def test_bad_constructor_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises((InvalidArgumentError, InvalidTTLError)):
        DatabaseManager("postgresql://postgres@127.0.0.1:1/none", **options)


async def test_a_closed_manager_refuses_every_call(learning_url: str) -> None:
    db = DatabaseManager(learning_url, min_connections=1)
    await db.close()
    with pytest.raises(ClosedError):
        await db.get_q_value(AGENT, "s", "a")
    with pytest.raises(ClosedError):
        await db.update_q_value(AGENT, "s", "a", 1.0, 0.0, 0.5, 0.9)
    with pytest.raises(ClosedError):
        await db.get_learning_statistics()


async def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    db = DatabaseManager("postgresql://postgres@127.0.0.1:1/none", min_connections=0)
    try:
        with pytest.raises(BackendUnavailableError):
            await db.update_q_value(AGENT, "s", "a", 1.0, 0.0, 0.5, 0.9)
    finally:
        await db.close()
