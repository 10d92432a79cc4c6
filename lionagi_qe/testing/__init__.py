"""The lionagi_qe testing kit: a pytest plugin, factories and helpers for projects using us."""

from lionagi_qe.testing.factories import (
    MemoryEntryFactory,
    QValueFactory,
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
    "ConcurrencyReport",
    "MemoryEntryFactory",
    "PerformanceTracker",
    "QValueFactory",
    "ServerHealth",
    "TrajectoryFactory",
    "health_check",
    "persist",
    "run_concurrently",
    "run_sync",
]
