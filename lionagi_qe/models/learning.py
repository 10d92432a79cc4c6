"""Q-learning tables: agent types, sessions, Q-values, trajectories, rewards, patterns, states.

Numbers that learning arithmetic touches are double precision, so reads are ``float``, never
``Decimal``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from lionagi_qe.models.base import Base, JSONDocument

__all__ = [
    "QE_AGENT_TYPES",
    "TRAJECTORY_PARTITIONING",
    "AgentState",
    "AgentType",
    "LearningSession",
    "Pattern",
    "QValue",
    "Reward",
    "Trajectory",
]

#: The 18 QE agent types seeded by the initial learning migration.
QE_AGENT_TYPES: dict[str, str] = {
    "test-generator": "Generates test cases from code and requirements",
    "test-executor": "Runs test suites and collects results",
    "coverage-analyzer": "Finds coverage gaps and prioritises them",
    "quality-gate": "Decides whether a change may ship",
    "quality-analyzer": "Aggregates quality metrics and trends",
    "performance-tester": "Runs load and performance tests",
    "security-scanner": "Scans code and dependencies for vulnerabilities",
    "requirements-validator": "Checks requirements for testability",
    "production-intelligence": "Turns production incidents into tests",
    "fleet-commander": "Plans and coordinates the agent fleet",
    "deployment-readiness": "Assesses release risk before deployment",
    "regression-risk-analyzer": "Selects tests by the risk a change carries",
    "test-data-architect": "Generates and manages test data",
    "api-contract-validator": "Checks API changes against their contracts",
    "flaky-test-hunter": "Detects and quarantines flaky tests",
    "visual-tester": "Compares screenshots for visual regressions",
    "chaos-engineer": "Injects faults to test resilience",
    "code-complexity": "Measures complexity and suggests refactorings",
}


#: Surrogate keys: 64-bit on PostgreSQL; on SQLite only a column declared exactly ``INTEGER``
#: becomes the auto-numbered rowid (``BIGINT`` would need every insert to supply an id).
_ID = BigInteger().with_variant(Integer(), "sqlite")


def _agent_type_fk() -> ForeignKey:
    return ForeignKey("agent_types.agent_type", onupdate="CASCADE")


class AgentType(Base):
    """A kind of agent; Q-values and trajectories are shared per agent type."""

    __tablename__ = "agent_types"

    agent_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class LearningSession(Base):
    """A learning session (an episode run) of one agent type."""

    __tablename__ = "sessions"

    session_id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=uuid.uuid4)
    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk())
    session_name: Mapped[str | None] = mapped_column(String(255))
    environment: Mapped[str] = mapped_column(String(50), server_default=text("'development'"))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))
    total_reward: Mapped[float | None] = mapped_column()
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDocument(), server_default=text("'{}'")
    )
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        CheckConstraint("status IN ('active', 'completed', 'failed', 'aborted')", name="status"),
        Index("ix_sessions_agent_type_started_at", "agent_type", "started_at"),
    )


class QValue(Base):
    """The learned value of taking an action in a state, per agent type."""

    __tablename__ = "q_values"

    id: Mapped[int] = mapped_column(_ID, Identity(), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk())
    state_hash: Mapped[str] = mapped_column(String(128))
    action_hash: Mapped[str] = mapped_column(String(128))
    q_value: Mapped[float] = mapped_column(server_default=text("0"))
    visit_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    state_data: Mapped[dict[str, Any] | None] = mapped_column()
    action_data: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_used_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("agent_type", "state_hash", "action_hash"),
        Index("ix_q_values_expires_at", "expires_at"),
    )


#: How ``trajectories`` is partitioned on PostgreSQL (migration 0005): by ranges of ``id``, which
#: is its whole primary key, so the key and ``rewards.trajectory_id``'s foreign key stay valid.
#: SQLite ignores it (a plain table).
TRAJECTORY_PARTITIONING = "RANGE (id)"


class Trajectory(Base):
    """One recorded step: state, action, reward, next state.

    On PostgreSQL the table is partitioned by ranges of ids (:data:`TRAJECTORY_PARTITIONING`):
    ids grow with time, so each partition holds one span of history, and retention drops a
    partition whose steps have all expired instead of deleting its rows one by one.
    """

    __tablename__ = "trajectories"

    id: Mapped[int] = mapped_column(_ID, Identity(), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk())
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(), ForeignKey("sessions.session_id", ondelete="SET NULL")
    )
    agent_instance_id: Mapped[str | None] = mapped_column(String(100))
    step_number: Mapped[int | None] = mapped_column(Integer)
    state_hash: Mapped[str] = mapped_column(String(128))
    action_hash: Mapped[str] = mapped_column(String(128))
    reward: Mapped[float] = mapped_column()
    next_state_hash: Mapped[str | None] = mapped_column(String(128))
    done: Mapped[bool] = mapped_column(server_default=text("false"))
    state_data: Mapped[dict[str, Any] | None] = mapped_column()
    action_data: Mapped[dict[str, Any] | None] = mapped_column()
    next_state_data: Mapped[dict[str, Any] | None] = mapped_column()
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONDocument(), server_default=text("'{}'")
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_trajectories_agent_type_created_at", "agent_type", "created_at"),
        Index("ix_trajectories_session_id", "session_id"),
        Index("ix_trajectories_expires_at", "expires_at"),
        # The newest steps of one agent instance (revision 0005): without it, an instance with
        # few steps meant walking its agent type's whole history.
        Index(
            "ix_trajectories_agent_type_agent_instance_id_created_at",
            "agent_type",
            "agent_instance_id",
            "created_at",
        ),
        {"postgresql_partition_by": TRAJECTORY_PARTITIONING},
    )


class Reward(Base):
    """A reward observed for a state-action pair."""

    __tablename__ = "rewards"

    id: Mapped[int] = mapped_column(_ID, Identity(), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk())
    session_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(), ForeignKey("sessions.session_id", ondelete="SET NULL")
    )
    trajectory_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("trajectories.id", ondelete="SET NULL")
    )
    state_hash: Mapped[str] = mapped_column(String(128))
    action_hash: Mapped[str] = mapped_column(String(128))
    reward_value: Mapped[float] = mapped_column()
    reward_type: Mapped[str] = mapped_column(String(50), server_default=text("'immediate'"))
    reward_source: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index(
            "ix_rewards_agent_type_state_hash_action_hash",
            "agent_type",
            "state_hash",
            "action_hash",
        ),
        # Deleting a trajectory or session sets these to NULL: without an index each deleted
        # row would cost a scan of the whole rewards table.
        Index("ix_rewards_trajectory_id", "trajectory_id"),
        Index("ix_rewards_session_id", "session_id"),
        # get_rewards(agent_type) is newest first: without it, every reward of the agent type
        # was sorted (revision 0005).
        Index("ix_rewards_agent_type_created_at", "agent_type", "created_at"),
    )


class Pattern(Base):
    """A named pattern an agent type uses, with running success statistics."""

    __tablename__ = "patterns"

    id: Mapped[int] = mapped_column(_ID, Identity(), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk())
    pattern_name: Mapped[str] = mapped_column(String(255))
    pattern_type: Mapped[str] = mapped_column(String(50), server_default=text("'general'"))
    pattern_data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'"))
    usage_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    success_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failure_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    average_reward: Mapped[float] = mapped_column(server_default=text("0"))
    #: Uses that carried a reward: the weight of ``average_reward`` (a use without one leaves
    #: the average alone).
    reward_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (UniqueConstraint("agent_type", "pattern_name"),)


class AgentState(Base):
    """Per-instance learning state of an agent; ``success_rate`` is computed by the database."""

    __tablename__ = "agent_states"

    agent_type: Mapped[str] = mapped_column(String(100), _agent_type_fk(), primary_key=True)
    agent_instance_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    total_episodes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    total_actions: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    successful_actions: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    total_reward: Mapped[float] = mapped_column(server_default=text("0"))
    success_rate: Mapped[float] = mapped_column(
        Computed(
            "CASE WHEN total_actions > 0 "
            "THEN CAST(successful_actions AS DOUBLE PRECISION) / total_actions ELSE 0 END",
            persisted=True,
        )
    )
    epsilon: Mapped[float | None] = mapped_column()
    learning_rate: Mapped[float | None] = mapped_column()
    discount_factor: Mapped[float | None] = mapped_column()
    state_data: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_active_at: Mapped[datetime] = mapped_column(server_default=func.now())
