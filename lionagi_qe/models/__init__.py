"""Declarative ORM models; ``Base.metadata`` is what Alembic compares against."""

from lionagi_qe.models.base import Base
from lionagi_qe.models.learning import (
    QE_AGENT_TYPES,
    AgentState,
    AgentType,
    LearningSession,
    Pattern,
    QValue,
    Reward,
    Trajectory,
)
from lionagi_qe.models.memory import MemoryEntry, Partition
from lionagi_qe.models.queue import QueueJob

__all__ = [
    "QE_AGENT_TYPES",
    "AgentState",
    "AgentType",
    "Base",
    "LearningSession",
    "MemoryEntry",
    "Partition",
    "Pattern",
    "QValue",
    "QueueJob",
    "Reward",
    "Trajectory",
]
