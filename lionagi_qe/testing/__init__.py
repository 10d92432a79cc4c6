"""The lionagi_qe testing kit: a pytest plugin, factories and helpers for projects using us."""

from lionagi_qe.testing.factories import (
    AgentStateFactory,
    LearningSessionFactory,
    MemoryEntryFactory,
    PatternFactory,
    QValueFactory,
    RewardFactory,
    TrajectoryFactory,
    persist,
)
from lionagi_qe.testing.helpers import (
    ConcurrencyReport,
    PerformanceTracker,
    ServerHealth,
    health_check,
    run_concurrently,
    run_sync,
)

__all__ = [
    "AgentStateFactory",
    "ConcurrencyReport",
    "LearningSessionFactory",
    "MemoryEntryFactory",
    "PatternFactory",
    "PerformanceTracker",
    "QValueFactory",
    "RewardFactory",
    "ServerHealth",
    "TrajectoryFactory",
    "health_check",
    "persist",
    "run_concurrently",
    "run_sync",
]
