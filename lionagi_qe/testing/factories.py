"""factory-boy factories for memory entries, Q-values and trajectories.

Factories only *build* model instances; :func:`persist` adds them to a session and flushes, so a
test decides when (and in which transaction) rows reach the database.
"""

from __future__ import annotations

from typing import Any

import factory
from sqlalchemy.ext.asyncio import AsyncSession

from lionagi_qe.models import MemoryEntry, QValue, Trajectory
from lionagi_qe.models.learning import QE_AGENT_TYPES

__all__ = ["MemoryEntryFactory", "QValueFactory", "TrajectoryFactory", "persist"]

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
