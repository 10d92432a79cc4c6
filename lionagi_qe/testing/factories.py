"""factory-boy factories for memory entries, Q-values and trajectories.

Factories only *build* model instances; :func:`persist` adds them to a session and flushes, so a
test decides when (and in which transaction) rows reach the database.
"""

from __future__ import annotations

import uuid
from typing import Any

import factory
from sqlalchemy.ext.asyncio import AsyncSession

from lionagi_qe.models import (
    AgentState,
    LearningSession,
    MemoryEntry,
    Pattern,
    QValue,
    Reward,
    Trajectory,
)
from lionagi_qe.models.learning import QE_AGENT_TYPES

__all__ = [
    "AgentStateFactory",
    "LearningSessionFactory",
    "MemoryEntryFactory",
    "PatternFactory",
    "QValueFactory",
    "RewardFactory",
    "TrajectoryFactory",
    "persist",
]

_AGENT_TYPES = sorted(QE_AGENT_TYPES)


class MemoryEntryFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """A memory row under ``aqe/test/``; pass ``key=``/``value=`` to choose."""

    class Meta:
        model = MemoryEntry

    key = factory.Sequence(lambda n: f"aqe/test/entry-{n:06d}")
    value = factory.LazyFunction(lambda: {"status": "ok", "score": 0.5})
    partition = "default"
    metadata_ = factory.LazyFunction(dict)
    version = 1
    size_bytes = factory.LazyAttribute(lambda entry: len(entry.key) + 32)
    expires_at = None


class QValueFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """A Q-value of one of the seeded agent types."""

    class Meta:
        model = QValue

    agent_type = factory.Iterator(_AGENT_TYPES)
    state_hash = factory.Sequence(lambda n: f"state-{n:06d}")
    action_hash = factory.Sequence(lambda n: f"action-{n:06d}")
    q_value = factory.Faker("pyfloat", min_value=-1, max_value=1)
    visit_count = 1
    state_data = factory.LazyFunction(lambda: {"coverage": 0.8})
    action_data = factory.LazyFunction(lambda: {"strategy": "boundary"})


class TrajectoryFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """One recorded step of a seeded agent type."""

    class Meta:
        model = Trajectory

    agent_type = factory.Iterator(_AGENT_TYPES)
    agent_instance_id = factory.Sequence(lambda n: f"instance-{n % 4}")
    step_number = factory.Sequence(int)
    state_hash = factory.Sequence(lambda n: f"state-{n:06d}")
    action_hash = factory.Sequence(lambda n: f"action-{n:06d}")
    reward = factory.Faker("pyfloat", min_value=-1, max_value=1)
    next_state_hash = factory.Sequence(lambda n: f"state-{n + 1:06d}")
    done = False
    state_data = factory.LazyFunction(lambda: {"files": 3})
    action_data = factory.LazyFunction(lambda: {"generate": "unit"})
    next_state_data = factory.LazyFunction(lambda: {"files": 4})
    metadata_ = factory.LazyFunction(dict)


async def persist(session: AsyncSession, *instances: Any) -> None:
    """Add ``instances`` to ``session`` and flush (the caller's transaction decides the rest)."""
    session.add_all(instances)
    await session.flush()


# -- the other Q-learning tables (sessions, rewards, patterns, agent states) ------------------


class LearningSessionFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """An active learning session of one of the seeded agent types."""

    class Meta:
        model = LearningSession

    session_id = factory.LazyFunction(uuid.uuid4)
    agent_type = factory.Iterator(_AGENT_TYPES)
    session_name = factory.Sequence(lambda n: f"session-{n:06d}")
    environment = "test"
    status = "active"
    metadata_ = factory.LazyFunction(dict)


class RewardFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """A reward for a state-action pair of one of the seeded agent types."""

    class Meta:
        model = Reward

    agent_type = factory.Iterator(_AGENT_TYPES)
    state_hash = factory.Sequence(lambda n: f"state-{n:06d}")
    action_hash = factory.Sequence(lambda n: f"action-{n:06d}")
    reward_value = factory.Faker("pyfloat", min_value=-1, max_value=1)
    reward_type = "immediate"


class PatternFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """A pattern with consistent counts (usage = successes + failures)."""

    class Meta:
        model = Pattern

    agent_type = factory.Iterator(_AGENT_TYPES)
    pattern_name = factory.Sequence(lambda n: f"pattern-{n:06d}")
    pattern_type = "general"
    pattern_data = factory.LazyFunction(lambda: {"template": "boundary-values"})
    success_count = 3
    failure_count = 1
    usage_count = factory.LazyAttribute(lambda p: p.success_count + p.failure_count)
    reward_count = factory.LazyAttribute(lambda p: p.usage_count)
    average_reward = 0.5


class AgentStateFactory(factory.Factory):  # type: ignore[misc,name-defined]
    """The learning state of one agent instance."""

    class Meta:
        model = AgentState

    agent_type = factory.Iterator(_AGENT_TYPES)
    agent_instance_id = factory.Sequence(lambda n: f"instance-{n:06d}")
    total_episodes = 5
    total_actions = 20
    successful_actions = 15
    total_reward = 12.5
    epsilon = 0.1
    learning_rate = 0.1
    discount_factor = 0.95
    state_data = factory.LazyFunction(dict)
