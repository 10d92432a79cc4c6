"""Trajectories, rewards, sessions, patterns, agent state and agent types (SPEC §5).

Tables are shared within a worker: every test uses hashes, instance ids and pattern names of its
own, and never assumes a table is empty.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from lionagi_qe import DatabaseManager
from lionagi_qe.errors import (
    InvalidArgumentError,
    KeyNotFoundError,
    SerializationError,
    VersionConflictError,
)
from lionagi_qe.learning.td import td_update
from lionagi_qe.models import QValue
from lionagi_qe.repositories.learning import (
    AgentStateRepository,
    PatternRepository,
    QValueRepository,
    SessionRepository,
    TDUpdate,
)
from lionagi_qe.testing import run_concurrently
from lionagi_qe.testing.factories import (
    AgentStateFactory,
    LearningSessionFactory,
    PatternFactory,
    persist,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

AGENT = "coverage-analyzer"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --- trajectories -----------------------------------------------------------------------------


async def test_a_trajectory_step_round_trips_every_field(manager: DatabaseManager) -> None:
    session_id = await manager.start_session(AGENT, "round-trip")
    instance = unique("instance")
    fields = {
        "session_id": session_id,
        "agent_instance_id": instance,
        "step_number": 7,
        "state_data": {"module": "auth", "coverage": 0.65, "files": ["a.py", "b.py"]},
        "action_data": {"strategy": "boundary", "weights": [0.1, 0.25], "note": "é ✓ 𝄞"},
        "next_state_data": {"module": "auth", "coverage": 0.8, "nested": {"ok": True}},
        "metadata": {"run": 3, "tags": ["nightly"], "none": None},
    }
    before = datetime.now(UTC) - timedelta(seconds=5)
    trajectory_id = await manager.store_trajectory(
        AGENT, "s0", "a1", -0.30000000000000004, "s1", True, **fields
    )
    assert isinstance(trajectory_id, int)

    [step] = await manager.get_recent_trajectories(AGENT, 1, agent_instance_id=instance)
    created_at, expires_at = step.pop("created_at"), step.pop("expires_at")
    assert step == {
        "trajectory_id": trajectory_id,
        "agent_type": AGENT,
        "state_hash": "s0",
        "action_hash": "a1",
        "reward": -0.30000000000000004,
        "next_state_hash": "s1",
        "done": True,
        **fields,
    }
    assert type(step["reward"]) is float
    assert created_at.tzinfo is not None and created_at >= before
    assert expires_at - created_at == pytest.approx(timedelta(days=30), abs=timedelta(seconds=5))


async def test_a_minimal_step_has_defaults(manager: DatabaseManager) -> None:
    instance = unique("instance")
    await manager.store_trajectory(AGENT, "s", "a", 1, agent_instance_id=instance)
    [step] = await manager.get_recent_trajectories(AGENT, agent_instance_id=instance)
    assert step["next_state_hash"] is None and step["done"] is False
    assert step["session_id"] is None and step["step_number"] is None
    assert step["state_data"] is None and step["metadata"] == {}
    assert step["reward"] == 1.0 and type(step["reward"]) is float


async def test_recent_trajectories_newest_first_with_limit_and_filters(
    manager: DatabaseManager,
) -> None:
    instance, other = unique("instance"), unique("instance")
    session_id = await manager.start_session(AGENT)
    ids = [
        await manager.store_trajectory(
            AGENT, f"s{i}", "a", float(i), agent_instance_id=instance, step_number=i
        )
        for i in range(5)
    ]
    in_session = await manager.store_trajectory(
        AGENT, "x", "a", 9.0, agent_instance_id=other, session_id=session_id
    )

    mine = await manager.get_recent_trajectories(AGENT, 3, agent_instance_id=instance)
    assert [s["trajectory_id"] for s in mine] == ids[::-1][:3]
    by_session = await manager.get_recent_trajectories(AGENT, session_id=uuid.UUID(session_id))
    assert [s["trajectory_id"] for s in by_session] == [in_session]
    both = await manager.get_recent_trajectories(
        AGENT, agent_instance_id=instance, session_id=session_id
    )
    assert both == []
    assert await manager.get_recent_trajectories("quality-gate", agent_instance_id=instance) == []


async def test_expired_steps_are_not_returned(learning_url: str) -> None:
    db = DatabaseManager(learning_url, min_connections=1, trajectory_retention=0.001)
    try:
        instance = unique("instance")
        await db.store_trajectory(AGENT, "s", "a", 1.0, agent_instance_id=instance)
        assert await db.get_recent_trajectories(AGENT, agent_instance_id=instance) == []
    finally:
        await db.close()


async def test_a_step_of_an_unknown_session_is_refused(manager: DatabaseManager) -> None:
    instance = unique("instance")
    with pytest.raises(InvalidArgumentError, match="session"):
        await manager.store_trajectory(
            AGENT, "s", "a", 1.0, agent_instance_id=instance, session_id=str(uuid.uuid4())
        )
    with pytest.raises(InvalidArgumentError, match="session_id must be a UUID"):
        await manager.store_trajectory(AGENT, "s", "a", 1.0, session_id="not-a-uuid")
    with pytest.raises(SerializationError):
        await manager.store_trajectory(AGENT, "s", "a", 1.0, state_data={"x": float("nan")})
    assert await manager.get_recent_trajectories(AGENT, agent_instance_id=instance) == []


# --- rewards ----------------------------------------------------------------------------------


async def test_rewards_are_recorded_and_queried(manager: DatabaseManager) -> None:
    state, other = unique("s"), unique("s")
    session_id = await manager.start_session(AGENT)
    trajectory_id = await manager.store_trajectory(AGENT, state, "a", 1.0, session_id=session_id)
    first = await manager.record_reward(
        AGENT, state, "a", 1.25, "delayed", session_id, trajectory_id, "coverage-delta"
    )
    second = await manager.record_reward(AGENT, state, "b", -2)
    await manager.record_reward(AGENT, other, "a", 3.0)

    rewards = await manager.get_rewards(AGENT, state)
    assert [r["reward_id"] for r in rewards] == [second, first]
    assert rewards[1] | {"created_at": None} == {
        "reward_id": first,
        "agent_type": AGENT,
        "session_id": session_id,
        "trajectory_id": trajectory_id,
        "state_hash": state,
        "action_hash": "a",
        "reward_value": 1.25,
        "reward_type": "delayed",
        "reward_source": "coverage-delta",
        "created_at": None,
    }
    assert type(rewards[0]["reward_value"]) is float and rewards[0]["reward_value"] == -2.0
    assert [r["reward_id"] for r in await manager.get_rewards(AGENT, state, "a")] == [first]
    by_action = await manager.get_rewards(AGENT, action_hash="a", limit=2)
    assert len(by_action) == 2 and by_action[0]["state_hash"] == other
    assert await manager.get_rewards("quality-gate", state) == []


async def test_a_reward_naming_a_missing_trajectory_is_refused(manager: DatabaseManager) -> None:
    state = unique("s")
    with pytest.raises(InvalidArgumentError, match="trajectory"):
        await manager.record_reward(AGENT, state, "a", 1.0, trajectory_id=2**62)
    with pytest.raises(InvalidArgumentError, match="64-bit"):
        await manager.record_reward(AGENT, state, "a", 1.0, trajectory_id=2**64)
    assert await manager.get_rewards(AGENT, state) == []


# --- sessions ---------------------------------------------------------------------------------


async def test_session_lifecycle(manager: DatabaseManager) -> None:
    session_id = await manager.start_session(
        AGENT, "nightly", environment="ci", metadata={"build": 42}
    )
    assert uuid.UUID(session_id)
    started = await manager.get_session(session_id)
    assert started is not None
    assert started["status"] == "active" and started["ended_at"] is None
    assert started["environment"] == "ci" and started["metadata"] == {"build": 42}
    assert started["total_reward"] is None
    active = await manager.list_sessions(AGENT, "active", limit=1000)
    assert session_id in [s["session_id"] for s in active]

    for reward in (1.5, 2.25, -0.5):
        await manager.store_trajectory(AGENT, "s", "a", reward, session_id=session_id)
    ended = await manager.end_session(session_id)
    assert ended["status"] == "completed"
    assert ended["total_reward"] == 3.25 and type(ended["total_reward"]) is float
    assert ended["ended_at"] >= ended["started_at"]
    assert await manager.get_session(session_id) == ended
    completed = await manager.list_sessions(AGENT, "completed", limit=1000)
    assert session_id in [s["session_id"] for s in completed]
    active = await manager.list_sessions(AGENT, "active", limit=1000)
    assert session_id not in [s["session_id"] for s in active]

    with pytest.raises(VersionConflictError, match="already ended"):
        await manager.end_session(session_id, "failed")
    assert (await manager.get_session(session_id) or {})["status"] == "completed"


async def test_end_session_with_a_given_reward_and_status(manager: DatabaseManager) -> None:
    session_id = await manager.start_session(AGENT)
    await manager.store_trajectory(AGENT, "s", "a", 100.0, session_id=session_id)
    ended = await manager.end_session(uuid.UUID(session_id), "aborted", total_reward=-1)
    assert ended["status"] == "aborted" and ended["total_reward"] == -1.0
    empty = await manager.start_session(AGENT)
    assert (await manager.end_session(empty, "failed"))["total_reward"] == 0.0


async def test_session_errors(manager: DatabaseManager) -> None:
    with pytest.raises(KeyNotFoundError):
        await manager.end_session(str(uuid.uuid4()))
    with pytest.raises(InvalidArgumentError):
        await manager.end_session("nope")
    session_id = await manager.start_session(AGENT)
    with pytest.raises(InvalidArgumentError, match="status"):
        await manager.end_session(session_id, "active")
    with pytest.raises(InvalidArgumentError, match="status"):
        await manager.list_sessions(status="done")
    with pytest.raises(InvalidArgumentError, match="limit"):
        await manager.list_sessions(limit=0)
    assert await manager.get_session(str(uuid.uuid4())) is None
    with pytest.raises(InvalidArgumentError, match="agent type"):
        await manager.start_session(unique("ghost-agent"))


async def test_list_sessions_newest_first(manager: DatabaseManager) -> None:
    ids = [await manager.start_session(AGENT, f"s{i}") for i in range(3)]
    listed = [s["session_id"] for s in await manager.list_sessions(AGENT, limit=100_000)]
    assert [i for i in listed if i in ids] == ids[::-1]
    assert len(await manager.list_sessions(limit=2)) == 2


async def test_sessions_started_in_one_clock_step_list_newest_first(
    manager: DatabaseManager,
) -> None:
    if manager.dialect != "sqlite":
        pytest.skip("only SQLite's clock has millisecond steps")
    ids = [await manager.start_session(AGENT, f"tie{i}") for i in range(5)]
    async with manager.engine.begin() as conn:  # all five in one clock step
        await conn.execute(
            text(
                "UPDATE sessions SET started_at = '2026-01-01 00:00:00.000' "
                "WHERE session_name LIKE 'tie%'"
            )
        )
    listed = [s["session_id"] for s in await manager.list_sessions(AGENT, limit=100_000)]
    assert [i for i in listed if i in ids] == ids[::-1]


# --- patterns ---------------------------------------------------------------------------------


async def test_pattern_counts_and_running_average(manager: DatabaseManager) -> None:
    name = unique("pattern")
    assert await manager.get_pattern(AGENT, name) is None
    first = await manager.record_pattern_use(
        AGENT, name, success=True, reward=4.0, pattern_type="test-template", pattern_data={"v": 1}
    )
    assert first["usage_count"] == 1 and first["success_count"] == 1
    assert first["average_reward"] == 4.0 and first["pattern_type"] == "test-template"

    await manager.record_pattern_use(AGENT, name, success=False)  # no reward: average stays
    after = await manager.record_pattern_use(AGENT, name, success=True, reward=1.0)
    assert (after["usage_count"], after["success_count"], after["failure_count"]) == (3, 2, 1)
    assert after["reward_count"] == 2 and after["average_reward"] == 2.5
    assert type(after["average_reward"]) is float
    assert after["success_rate"] == pytest.approx(2 / 3)
    assert after["pattern_type"] == "test-template", "the type is kept from the first use"
    assert after["pattern_data"] == {"v": 1}, "data is kept unless new data is given"

    replaced = await manager.record_pattern_use(AGENT, name, success=True, pattern_data={"v": 2})
    assert replaced["pattern_data"] == {"v": 2}
    assert await manager.get_pattern(AGENT, name) == replaced


async def test_concurrent_pattern_uses_are_counted_exactly(manager: DatabaseManager) -> None:
    name = unique("pattern")
    rng = random.Random(3)
    plan = [(rng.random() < 0.7, rng.choice([None, 1.0, 2.0, 6.0])) for _ in range(120)]
    report = await run_concurrently(
        [
            lambda s=success, r=reward: manager.record_pattern_use(AGENT, name, success=s, reward=r)
            for success, reward in plan
        ],
        limit=40,
    )
    report.raise_first()

    pattern = await manager.get_pattern(AGENT, name)
    assert pattern is not None
    rewards = [r for _, r in plan if r is not None]
    assert pattern["usage_count"] == len(plan)
    assert pattern["success_count"] == sum(s for s, _ in plan)
    assert pattern["failure_count"] == sum(not s for s, _ in plan)
    assert pattern["reward_count"] == len(rewards)
    assert pattern["average_reward"] == pytest.approx(sum(rewards) / len(rewards), rel=1e-12)
    assert sorted(r["usage_count"] for r in report.results if r) == list(range(1, 121))


# --- agent state ------------------------------------------------------------------------------


async def test_agent_state_with_the_original_arguments(manager: DatabaseManager) -> None:
    instance = unique("instance")
    assert await manager.get_agent_state(AGENT, instance) is None
    # The original positional call: total, successful, failed tasks, total and average
    # reward, exploration and learning rate.
    state = await manager.update_agent_state(AGENT, instance, 10, 7, 3, 12.5, 1.25, 0.2, 0.1)
    assert state["total_actions"] == 10 and state["successful_actions"] == 7
    assert state["success_rate"] == pytest.approx(0.7) and type(state["success_rate"]) is float
    assert state["total_reward"] == 12.5 and state["epsilon"] == 0.2
    assert state["learning_rate"] == 0.1 and state["discount_factor"] is None
    assert await manager.get_agent_state(AGENT, instance) == state


async def test_agent_state_partial_updates_keep_the_rest(manager: DatabaseManager) -> None:
    instance = unique("instance")
    await manager.update_agent_state(
        AGENT,
        instance,
        total_episodes=3,
        total_actions=4,
        successful_actions=1,
        total_reward=2.0,
        epsilon=0.3,
        discount_factor=0.95,
        state_data={"phase": "warm-up"},
    )
    state = await manager.update_agent_state(AGENT, instance, epsilon=0.25, total_episodes=4)
    assert state["total_episodes"] == 4 and state["epsilon"] == 0.25
    assert state["total_actions"] == 4 and state["successful_actions"] == 1
    assert state["success_rate"] == 0.25 and state["discount_factor"] == 0.95
    assert state["state_data"] == {"phase": "warm-up"}
    assert state["last_active_at"] >= state["created_at"]


async def test_agent_state_rejects_inconsistent_values(manager: DatabaseManager) -> None:
    instance = unique("instance")
    bad_calls = [
        {"total_tasks": 3, "successful_tasks": 4},
        {"total_tasks": 10, "successful_tasks": 7, "failed_tasks": 2},
        {"failed_tasks": 2},
        {"total_tasks": 5, "total_actions": 6},
        {"current_exploration_rate": 1.5},
        {"total_episodes": -1},
        {"total_reward": float("inf")},
    ]
    for kwargs in bad_calls:
        with pytest.raises(InvalidArgumentError):
            await manager.update_agent_state(AGENT, instance, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="agent type"):
        await manager.update_agent_state(unique("ghost"), instance, 1, 1)
    assert await manager.get_agent_state(AGENT, instance) is None

    derived = await manager.update_agent_state(AGENT, instance, successful_tasks=6, failed_tasks=2)
    assert derived["total_actions"] == 8


# --- agent types ------------------------------------------------------------------------------


async def test_register_agent_type_then_learn_with_it(manager: DatabaseManager) -> None:
    name = unique("custom-agent")
    with pytest.raises(InvalidArgumentError, match="register_agent_type"):
        await manager.update_q_value(name, "s", "a", 1.0, 0.0, 0.5, 0.9)
    assert await manager.register_agent_type(name, "A custom agent") is True
    assert await manager.register_agent_type(name, "ignored") is False
    listed = {t["agent_type"]: t["description"] for t in await manager.list_agent_types()}
    assert listed[name] == "A custom agent" and len(listed) >= 19
    assert await manager.update_q_value(name, "s", "a", 1.0, 0.0, 0.5, 0.9) == 0.5


# --- the repositories over a caller's session: they flush, never commit -----------------------


async def test_repositories_join_the_callers_unit_of_work(
    aqe_session: AsyncSession, aqe_engine: AsyncEngine
) -> None:
    state = unique("s")
    repo = QValueRepository(aqe_session, "postgresql")
    update = TDUpdate(AGENT, state, "a", reward=1.0, next_max_q=0.0, alpha=0.5, gamma=0.9)
    assert await repo.td_update(update, retention=60) == 0.5
    assert await repo.td_update(update, retention=60) == td_update(0.5, 1.0, 0.0, 0.5, 0.9)
    assert await repo.get(AGENT, state, "a", retention=60) == 0.75
    await repo.td_update_many([], retention=None)  # nothing to send: no statement at all

    async with aqe_engine.connect() as other:  # another connection sees nothing: no commit
        seen = await other.scalar(select(QValue.q_value).where(QValue.state_hash == state))
    assert seen is None


async def test_repositories_read_what_factories_persisted(aqe_session: AsyncSession) -> None:
    agent = AgentStateFactory(agent_type=AGENT)
    pattern = PatternFactory(agent_type=AGENT)
    session = LearningSessionFactory(agent_type=AGENT)
    await persist(aqe_session, agent, pattern, session)

    state = await AgentStateRepository(aqe_session, "postgresql").get(
        AGENT, agent.agent_instance_id
    )
    assert state is not None and state["success_rate"] == 0.75
    used = await PatternRepository(aqe_session, "postgresql").record_use(
        AGENT, pattern.pattern_name, success=True, reward=1.0, pattern_type="x", pattern_data=None
    )
    assert used["usage_count"] == 5 and used["average_reward"] == pytest.approx(0.6)
    ended = await SessionRepository(aqe_session, "postgresql").end(session.session_id, "failed", 2)
    assert ended is not None and ended["status"] == "failed" and ended["total_reward"] == 2.0
    count = await aqe_session.scalar(text("SELECT count(*) FROM sessions WHERE status = 'active'"))
    assert isinstance(count, int)
