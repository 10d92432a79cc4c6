"""The Q-learning repositories: SQL over an ``AsyncSession`` or ``AsyncConnection``.

Each repository builds its Core statements once per dialect (PostgreSQL, SQLite), runs them on
the bind it was given and never commits: over a session it joins the caller's unit of work.
Arguments arrive validated and documents arrive as JSON text;
:class:`lionagi_qe.DatabaseManager` does validation and error translation.

- :class:`QValueRepository` (``learning_q``): the TD update in one statement, upserts, reads
  that refresh expiry, read-only peeks (for stale-ok reads on replicas), cleanup.
- :class:`SessionRepository`, :class:`TrajectoryRepository`, :class:`RewardRepository`
  (``learning_sessions``).
- :class:`AgentTypeRepository`, :class:`AgentStateRepository`, :class:`PatternRepository`
  (``learning_agents``).
- :class:`StatisticsRepository` (``learning_stats``).
"""

from lionagi_qe.repositories.learning_agents import (
    AGENT_STATE_FIELDS,
    AgentStateRepository,
    AgentTypeRepository,
    PatternRepository,
)
from lionagi_qe.repositories.learning_base import Bind, LearningRepository
from lionagi_qe.repositories.learning_q import QValueRepository, TDUpdate
from lionagi_qe.repositories.learning_sessions import (
    RewardRepository,
    SessionRepository,
    TrajectoryRepository,
    TrajectoryStep,
)
from lionagi_qe.repositories.learning_stats import StatisticsRepository

__all__ = [
    "AGENT_STATE_FIELDS",
    "AgentStateRepository",
    "AgentTypeRepository",
    "Bind",
    "LearningRepository",
    "PatternRepository",
    "QValueRepository",
    "RewardRepository",
    "SessionRepository",
    "StatisticsRepository",
    "TDUpdate",
    "TrajectoryRepository",
    "TrajectoryStep",
]
